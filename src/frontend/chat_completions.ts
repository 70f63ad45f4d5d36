/**
 * `POST /v1/chat/completions`: messages rendered with the model's chat template, then
 * generated like a completion; the reply is the assistant message, streamed as deltas.
 */
import { create } from "@bufbuild/protobuf";
import { GenerateRequestSchema } from "../../gen/switchyard/worker/v1/worker_pb.ts";
import { encodeChatPrompt } from "./chat_template.ts";
import { ApiError } from "./errors.ts";
import { choiceRequest, GenerationRun, type GenerationStep, type OpenAIFinishReason } from "./generation.ts";
import { ChunkFrame, sendGeneration, type ChoiceFormat, type Outcome } from "./generation_response.ts";
import { chatLogprobs, TokenRenderer, type ChatTokenLogprob } from "./logprobs.ts";
import { findModel } from "./models.ts";
import { ChatCompletionRequestSchema, parseBody, type ChatCompletionRequest } from "./openai_schemas.ts";
import type { RequestContext } from "./request_context.ts";
import { buildSamplingParams } from "./sampling_params.ts";
import { stopStringList } from "./stop_strings.ts";
import { tokenizerFor } from "./tokenizer.ts";
import { ReasoningSplitter, splitReasoning } from "./reasoning.ts";
import { HermesToolCallParser, parseHermesToolCalls, type ToolCall } from "./tool_calls.ts";

export async function handleChatCompletions(ctx: RequestContext, raw: unknown): Promise<Outcome> {
  const body = parseBody(ChatCompletionRequestSchema, raw);
  ctx.model = body.model;
  const card = findModel(ctx.router, body.model);
  const tokenizer = tokenizerFor(card.path);
  const tools = body.tools ?? [];
  const parseToolCalls = toolCallsWanted(body.tool_choice, tools.length, ctx);
  const promptIds = encodeChatPrompt(tokenizer, card.name, body.messages, body.chat_template_kwargs ?? {}, tools);
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
  const stop = stopStringList(body.stop);
  const skipSpecialTokens = body.skip_special_tokens ?? true;
  const choices = Array.from({ length: n }, (_, index) => ({
    run: new GenerationRun(
      ctx.router,
      { tokenizer, request: n === 1 ? request : choiceRequest(request, `${ctx.requestId}-${index}`, index), stop, skipSpecialTokens, choiceIndex: index },
      ctx.clientSignal,
      observer,
    ),
    format: new ChatChoiceFormat(frame, index, renderer, topLogprobs ?? 0, parseToolCalls ? { parallel: body.parallel_tool_calls ?? true } : undefined, ctx.reasoningParser !== undefined),
  }));
  return sendGeneration(ctx.res, choices, { requestId: ctx.requestId, frame, bodyObject: "chat.completion", includeUsage }, stream);
}

/**
 * Whether this request's output is read for tool calls: tool_choice "auto" (the default when
 * tools are given) with a parser configured. What cannot be honoured is refused, not ignored.
 */
function toolCallsWanted(toolChoice: ChatCompletionRequest["tool_choice"], toolCount: number, ctx: RequestContext): boolean {
  const choice = toolChoice ?? (toolCount > 0 ? "auto" : "none");
  if (choice === "none") return false;
  if (toolCount === 0) throw ApiError.badRequest("tool_choice: a tool_choice other than 'none' needs tools", "tool_choice");
  if (choice !== "auto") {
    throw ApiError.badRequest(
      "tool_choice: only 'auto' and 'none' are supported; forcing a call ('required' or a named function) needs guided decoding, which Switchyard does not do yet",
      "tool_choice",
    );
  }
  if (!ctx.toolCallParser) {
    throw ApiError.badRequest(
      "tool_choice: 'auto' needs the server started with --tool-call-parser (hermes, for Qwen and Hermes models); or send tool_choice 'none'",
      "tool_choice",
    );
  }
  return true;
}

/** One chat choice's chunks and body entry. */
class ChatChoiceFormat implements ChoiceFormat {
  private readonly texts: string[] = [];
  private readonly collected: ChatTokenLogprob[] = [];

  /** Streamed: reads tool calls out of the text as it comes. */
  private readonly toolParser: HermesToolCallParser | undefined;
  /** Streamed: splits the reasoning off the answer as it comes. */
  private readonly reasoning: ReasoningSplitter | undefined;

  constructor(
    private readonly frame: ChunkFrame,
    private readonly index: number,
    private readonly renderer: TokenRenderer | undefined,
    private readonly topLogprobs: number,
    private readonly tools: { parallel: boolean } | undefined,
    private readonly splitsReasoning: boolean,
  ) {
    if (tools) this.toolParser = new HermesToolCallParser();
    if (splitsReasoning) this.reasoning = new ReasoningSplitter();
  }

  openingChunks(): string[] {
    return [this.frame.choice(this.index, `"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null`)];
  }

  chunk(step: GenerationStep): string | null {
    if (this.toolParser || this.reasoning) return this.parsedChunk(step);
    if (step.text === "" && step.finishReason === null && step.logprobs === undefined) return null;
    const delta = step.text === "" ? "{}" : `{"content":${JSON.stringify(step.text)}}`;
    return this.frame.choice(this.index, `"delta":${delta},"logprobs":${this.logprobsJson(step)},"finish_reason":${finishJson(step.finishReason)}`);
  }

  /** A chunk of a request whose output is split: reasoning, content, and finished tool calls. */
  private parsedChunk(step: GenerationStep): string | null {
    const finished = step.finishReason !== null;
    let reasoning = "";
    let content = step.text;
    if (this.reasoning) {
      const split = this.reasoning.push(content);
      if (finished) {
        const rest = this.reasoning.flush();
        split.reasoning += rest.reasoning;
        split.content += rest.content;
      }
      reasoning = split.reasoning;
      content = split.content;
    }
    let calls: ToolCall[] = [];
    if (this.toolParser) {
      const parsed = this.toolParser.push(content);
      if (finished) parsed.content += this.toolParser.flush().content;
      content = parsed.content;
      calls = this.kept(parsed.calls);
    }
    const finishReason = finished && (this.toolParser?.calls.length ?? 0) > 0 ? "tool_calls" : step.finishReason;
    if (reasoning === "" && content === "" && calls.length === 0 && finishReason === null && step.logprobs === undefined) return null;
    const delta: Record<string, unknown> = {};
    if (reasoning !== "") delta.reasoning_content = reasoning;
    if (content !== "") delta.content = content;
    if (calls.length > 0) {
      delta.tool_calls = calls.map((c) => ({ index: c.index, id: c.id, type: "function", function: { name: c.name, arguments: c.arguments } }));
    }
    return this.frame.choice(this.index, `"delta":${JSON.stringify(delta)},"logprobs":${this.logprobsJson(step)},"finish_reason":${finishJson(finishReason)}`);
  }

  private logprobsJson(step: GenerationStep): string {
    return this.renderer ? JSON.stringify({ content: chatLogprobs(this.renderer, step.logprobs ?? [], this.topLogprobs) }) : "null";
  }

  collect(step: GenerationStep): void {
    if (step.text !== "") this.texts.push(step.text);
    if (this.renderer && step.logprobs) this.collected.push(...chatLogprobs(this.renderer, step.logprobs, this.topLogprobs));
  }

  choice(finishReason: OpenAIFinishReason): Record<string, unknown> {
    let text = this.texts.join("");
    const logprobs = this.renderer ? { content: this.collected } : null;
    const message: Record<string, unknown> = { role: "assistant", content: text, refusal: null };
    let finish: string = finishReason;
    if (this.splitsReasoning) {
      const split = splitReasoning(text);
      text = split.content;
      message.content = text;
      if (split.reasoning !== null) message.reasoning_content = split.reasoning;
    }
    if (this.tools) {
      const { content, calls } = parseHermesToolCalls(text);
      const kept = this.kept(calls);
      if (kept.length > 0) {
        message.content = content;
        message.tool_calls = kept.map((c) => ({ id: c.id, type: "function", function: { name: c.name, arguments: c.arguments } }));
        finish = "tool_calls";
      }
    }
    return { index: this.index, message, logprobs, finish_reason: finish };
  }

  /** With parallel_tool_calls false, the first call alone (the model cannot be held to one). */
  private kept(calls: readonly ToolCall[]): ToolCall[] {
    return this.tools?.parallel === false ? calls.filter((c) => c.index === 0) : [...calls];
  }
}

function finishJson(reason: string | null): string {
  return reason === null ? "null" : `"${reason}"`;
}
