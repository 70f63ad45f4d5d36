/**
 * `POST /v1/completions`: a prompt (text or token ids), or a batch of them, in; text out,
 * streamed or whole, `n` choices a prompt.
 */
import { create } from "@bufbuild/protobuf";
import { GenerateRequestSchema } from "../../gen/switchyard/worker/v1/worker_pb.ts";
import { ApiError } from "./errors.ts";
import { choiceRequest, GenerationRun, type GenerationStep, type OpenAIFinishReason } from "./generation.ts";
import { ChunkFrame, sendGeneration, type Choice, type ChoiceFormat, type Outcome } from "./generation_response.ts";
import { CompletionLogprobsBuilder, emptyCompletionLogprobs, TokenRenderer, type CompletionLogprobs } from "./logprobs.ts";
import { findModel } from "./models.ts";
import { CompletionRequestSchema, parseBody } from "./openai_schemas.ts";
import type { RequestContext } from "./request_context.ts";
import { buildSamplingParams } from "./sampling_params.ts";
import { stopStringList } from "./stop_strings.ts";
import { tokenizerFor } from "./tokenizer.ts";

export async function handleCompletions(ctx: RequestContext, raw: unknown): Promise<Outcome> {
  const body = parseBody(CompletionRequestSchema, raw);
  ctx.model = body.model;
  const card = findModel(ctx.router, body.model);
  const tokenizer = tokenizerFor(card.path);
  const skipSpecialTokens = body.skip_special_tokens ?? true;
  const batched = body.prompt.length > 1;
  // Every prompt is checked before any is sent.
  const prompts = body.prompt.map((prompt, p) => {
    const ids = typeof prompt === "string" ? tokenizer.encode(prompt, true) : prompt;
    if (ids.length === 0) throw ApiError.badRequest(`${batched ? `prompt[${p}]` : "prompt"}: the prompt is empty`, "prompt");
    const sampling = buildSamplingParams(body, {
      promptTokens: ids.length,
      maxModelLen: card.maxModelLen,
      eosTokenIds: tokenizer.eosTokenIds,
      maxTokens: body.max_tokens ?? undefined,
      logprobs: body.logprobs ?? undefined,
    });
    const request = create(GenerateRequestSchema, { requestId: ctx.requestId, tokenIds: ids, sampling, model: card.name });
    const echo = body.echo ? { text: typeof prompt === "string" ? prompt : tokenizer.decode(ids, skipSpecialTokens), ids } : undefined;
    return { request, echo };
  });
  const stream = body.stream ?? false;
  const includeUsage = stream && (body.stream_options?.include_usage ?? false);
  const frame = new ChunkFrame(`cmpl-${ctx.requestId}`, "text_completion", body.model, includeUsage);
  const renderer = body.logprobs == null ? undefined : new TokenRenderer(tokenizer, body.return_tokens_as_token_ids ?? false);
  const observer = ctx.observe(card.name);
  const stop = stopStringList(body.stop);
  const n = body.n ?? 1;
  // Choices as OpenAI numbers them: prompt p's j-th choice is p * n + j.
  const choices: Choice[] = prompts.flatMap(({ request, echo }, p) =>
    Array.from({ length: n }, (_, j) => {
      const index = p * n + j;
      const choice = prompts.length * n === 1 ? request : choiceRequest(request, `${ctx.requestId}-${index}`, j);
      return {
        run: new GenerationRun(ctx.router, { tokenizer, request: choice, stop, skipSpecialTokens, choiceIndex: index }, ctx.clientSignal, observer),
        format: new CompletionChoiceFormat(frame, index, echo, renderer && new CompletionLogprobsBuilder(renderer, body.logprobs!)),
        countsPrompt: j === 0,
      };
    }),
  );
  return sendGeneration(ctx.res, choices, { requestId: ctx.requestId, frame, bodyObject: "text_completion", includeUsage }, stream);
}

/** One completion choice's chunks and body entry. */
class CompletionChoiceFormat implements ChoiceFormat {
  private readonly texts: string[] = [];
  private readonly collected: CompletionLogprobs | undefined;

  constructor(
    private readonly frame: ChunkFrame,
    private readonly index: number,
    private readonly echo: { text: string; ids: number[] } | undefined,
    private readonly logprobs: CompletionLogprobsBuilder | undefined,
  ) {
    if (logprobs) this.collected = emptyCompletionLogprobs();
    if (echo) {
      this.texts.push(echo.text);
      if (logprobs) logprobs.addPrompt(this.collected!, echo.ids);
    }
  }

  openingChunks(): string[] {
    if (!this.echo) return [];
    const logprobs = this.collected ? JSON.stringify(this.collected) : "null";
    return [this.frame.choice(this.index, `"text":${JSON.stringify(this.echo.text)},"logprobs":${logprobs},"finish_reason":null`)];
  }

  chunk(step: GenerationStep): string | null {
    if (step.text === "" && step.finishReason === null && step.logprobs === undefined) return null;
    let logprobs = "null";
    if (this.logprobs) {
      const part = emptyCompletionLogprobs();
      if (step.logprobs) this.logprobs.add(part, step.logprobs);
      logprobs = JSON.stringify(part);
    }
    const finish = step.finishReason === null ? "null" : `"${step.finishReason}"`;
    return this.frame.choice(this.index, `"text":${JSON.stringify(step.text)},"logprobs":${logprobs},"finish_reason":${finish}`);
  }

  collect(step: GenerationStep): void {
    if (step.text !== "") this.texts.push(step.text);
    if (this.logprobs && step.logprobs) this.logprobs.add(this.collected!, step.logprobs);
  }

  choice(finishReason: OpenAIFinishReason): Record<string, unknown> {
    return { index: this.index, text: this.texts.join(""), logprobs: this.collected ?? null, finish_reason: finishReason };
  }
}
