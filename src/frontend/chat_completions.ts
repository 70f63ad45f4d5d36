/**
 * `POST /v1/chat/completions`: messages rendered with the model's chat template, then
 * generated like a completion; the reply is the assistant message, streamed as deltas.
 */
import { create } from "@bufbuild/protobuf";
import { GenerateRequestSchema } from "../../gen/switchyard/worker/v1/worker_pb.ts";
import { renderChatPrompt } from "./chat_template.ts";
import { GenerationRun, type GenerationStep, type GenerationUsage, type OpenAIFinishReason } from "./generation.ts";
import { ChunkFrame, openAIUsage, sendGeneration, type Outcome, type ResponseFormat } from "./generation_response.ts";
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
  const run = new GenerationRun(
    ctx.router,
    { tokenizer, request, stop: stopStringList(body.stop), skipSpecialTokens: body.skip_special_tokens ?? true },
    ctx.clientSignal,
    ctx.observe(card.name),
  );
  const renderer = topLogprobs === undefined ? undefined : new TokenRenderer(tokenizer, body.return_tokens_as_token_ids ?? false);
  const stream = body.stream ?? false;
  const includeUsage = stream && (body.stream_options?.include_usage ?? false);
  const format = new ChatFormat(`chatcmpl-${ctx.requestId}`, body.model, includeUsage, renderer, topLogprobs ?? 0);
  return sendGeneration(ctx.res, run, format, stream, includeUsage);
}

/** Chat chunks and bodies. */
class ChatFormat implements ResponseFormat {
  private readonly frame: ChunkFrame;
  private readonly texts: string[] = [];
  private readonly collected: ChatTokenLogprob[] = [];

  constructor(
    id: string,
    model: string,
    includeUsage: boolean,
    private readonly renderer: TokenRenderer | undefined,
    private readonly topLogprobs: number,
  ) {
    this.frame = new ChunkFrame(id, "chat.completion.chunk", model, includeUsage);
  }

  openingChunks(): string[] {
    return [this.frame.choice(`"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null`)];
  }

  chunk(step: GenerationStep): string | null {
    if (step.text === "" && step.finishReason === null && step.logprobs === undefined) return null;
    const delta = step.text === "" ? "{}" : `{"content":${JSON.stringify(step.text)}}`;
    let logprobs = "null";
    if (this.renderer) logprobs = JSON.stringify({ content: chatLogprobs(this.renderer, step.logprobs ?? [], this.topLogprobs) });
    const finish = step.finishReason === null ? "null" : `"${step.finishReason}"`;
    return this.frame.choice(`"delta":${delta},"logprobs":${logprobs},"finish_reason":${finish}`);
  }

  usageChunk(usage: GenerationUsage): string {
    return this.frame.usage(usage);
  }

  collect(step: GenerationStep): void {
    if (step.text !== "") this.texts.push(step.text);
    if (this.renderer && step.logprobs) this.collected.push(...chatLogprobs(this.renderer, step.logprobs, this.topLogprobs));
  }

  body(finishReason: OpenAIFinishReason, usage: GenerationUsage): string {
    const { id, created, model } = this.frame;
    return JSON.stringify({
      id,
      object: "chat.completion",
      created,
      model,
      choices: [
        {
          index: 0,
          message: { role: "assistant", content: this.texts.join(""), refusal: null },
          logprobs: this.renderer ? { content: this.collected } : null,
          finish_reason: finishReason,
        },
      ],
      usage: openAIUsage(usage),
    });
  }
}
