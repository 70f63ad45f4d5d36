/**
 * `POST /v1/chat/completions`: messages rendered with the model's chat template, then
 * generated like a completion; the reply is the assistant message, streamed as deltas.
 */
import { create } from "@bufbuild/protobuf";
import { GenerateRequestSchema } from "../../gen/switchyard/worker/v1/worker_pb.ts";
import { renderChatPrompt } from "./chat_template.ts";
import { choiceRequest, GenerationRun, type GenerationStep, type OpenAIFinishReason } from "./generation.ts";
import { ChunkFrame, sendGeneration, type ChoiceFormat, type Outcome } from "./generation_response.ts";
import { chatLogprobs, TokenRenderer, type ChatTokenLogprob } from "./logprobs.ts";
import { findModel } from "./models.ts";
import { ChatCompletionRequestSchema, parseBody } from "./openai_schemas.ts";
import type { RequestContext } from "./request_context.ts";
import { buildSamplingParams } from "./sampling_params.ts";
import { stopStringList } from "./stop_strings.ts";
import { tokenizerFor } from "./tokenizer.ts";

export async function handleChatCompletions(ctx: RequestContext, raw: unknown): Promise<Outcome> {
  const body = parseBody(ChatCompletionRequestSchema, raw);
  ctx.model = body.model;
  const card = findModel(ctx.router, body.model);
  const tokenizer = tokenizerFor(card.path);
  const prompt = renderChatPrompt(tokenizer, card.name, body.messages, body.chat_template_kwargs ?? {});
  // The template already wrote the special tokens the model expects.
  const promptIds = tokenizer.encode(prompt, false);
  const topLogprobs = body.logprobs ? (body.top_logprobs ?? 0) : undefined;
  const sampling = buildSamplingParams(body, {
    promptTokens: promptIds.length,
    maxModelLen: card.maxModelLen,
    eosTokenIds: tokenizer.eosTokenIds,
    maxTokens: body.max_completion_tokens ?? body.max_tokens ?? undefined,
    logprobs: topLogprobs,
  });
  const request = create(GenerateRequestSchema, { requestId: ctx.requestId, tokenIds: promptIds, sampling, model: card.name });
  const renderer = topLogprobs === undefined ? undefined : new TokenRenderer(tokenizer, body.return_tokens_as_token_ids ?? false);
  const stream = body.stream ?? false;
  const includeUsage = stream && (body.stream_options?.include_usage ?? false);
  const frame = new ChunkFrame(`chatcmpl-${ctx.requestId}`, "chat.completion.chunk", body.model, includeUsage);
  const observer = ctx.observe(card.name);
  const n = body.n ?? 1;
  const choices = Array.from({ length: n }, (_, index) => ({
    run: new GenerationRun(
      ctx.router,
      { tokenizer, request: n === 1 ? request : choiceRequest(request, `${ctx.requestId}-${index}`, index), stop: stopStringList(body.stop), skipSpecialTokens: body.skip_special_tokens ?? true, choiceIndex: index },
      ctx.clientSignal,
      observer,
    ),
    format: new ChatChoiceFormat(frame, index, renderer, topLogprobs ?? 0),
  }));
  return sendGeneration(ctx.res, choices, { requestId: ctx.requestId, frame, bodyObject: "chat.completion", includeUsage }, stream);
}

/** One chat choice's chunks and body entry. */
class ChatChoiceFormat implements ChoiceFormat {
  private readonly texts: string[] = [];
  private readonly collected: ChatTokenLogprob[] = [];

  constructor(
    private readonly frame: ChunkFrame,
    private readonly index: number,
    private readonly renderer: TokenRenderer | undefined,
    private readonly topLogprobs: number,
  ) {}

  openingChunks(): string[] {
    return [this.frame.choice(this.index, `"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null`)];
  }

  chunk(step: GenerationStep): string | null {
    if (step.text === "" && step.finishReason === null && step.logprobs === undefined) return null;
    const delta = step.text === "" ? "{}" : `{"content":${JSON.stringify(step.text)}}`;
    let logprobs = "null";
    if (this.renderer) logprobs = JSON.stringify({ content: chatLogprobs(this.renderer, step.logprobs ?? [], this.topLogprobs) });
    const finish = step.finishReason === null ? "null" : `"${step.finishReason}"`;
    return this.frame.choice(this.index, `"delta":${delta},"logprobs":${logprobs},"finish_reason":${finish}`);
  }

  collect(step: GenerationStep): void {
    if (step.text !== "") this.texts.push(step.text);
    if (this.renderer && step.logprobs) this.collected.push(...chatLogprobs(this.renderer, step.logprobs, this.topLogprobs));
  }

  choice(finishReason: OpenAIFinishReason): Record<string, unknown> {
    return {
      index: this.index,
      message: { role: "assistant", content: this.texts.join(""), refusal: null },
      logprobs: this.renderer ? { content: this.collected } : null,
      finish_reason: finishReason,
    };
  }
}
