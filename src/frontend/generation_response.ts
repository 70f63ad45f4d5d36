/**
 * Delivers a GenerationRun to the client, streamed as SSE or as one JSON body, in the shape an
 * endpoint's ResponseFormat gives it. Errors before the first token become an HTTP error
 * (thrown to the caller); after the stream opened they become an SSE error event. The run is
 * always either finished or cancelled when this returns.
 */
import type { ServerResponse } from "node:http";
import { toApiError } from "./errors.ts";
import type { GenerationRun, GenerationStep, GenerationUsage, OpenAIFinishReason } from "./generation.ts";
import { SseWriter } from "./sse.ts";

/** How one endpoint shapes its chunks and bodies. Chunk methods return JSON text. */
export interface ResponseFormat {
  /** Chunks sent as soon as the stream opens (chat: the assistant role; completions: echo). */
  openingChunks(): string[];
  /** The chunk for a step, or null when it carries nothing worth sending. */
  chunk(step: GenerationStep): string | null;
  usageChunk(usage: GenerationUsage): string;
  /** Non-streamed: takes a step's text and logprobs into the whole response. */
  collect(step: GenerationStep): void;
  body(finishReason: OpenAIFinishReason, usage: GenerationUsage): string;
}

/** What happened, for metrics: the status the request ended with (499: the client left). */
export interface Outcome {
  status: number;
  usage: GenerationUsage;
}

export const CLIENT_CLOSED_STATUS = 499;

export async function sendGeneration(res: ServerResponse, run: GenerationRun, format: ResponseFormat, stream: boolean, includeUsage: boolean): Promise<Outcome> {
  try {
    await run.start();
    return stream ? await streamSteps(res, run, format, includeUsage) : await collectSteps(res, run, format);
  } finally {
    if (!run.done) run.cancel();
  }
}

async function streamSteps(res: ServerResponse, run: GenerationRun, format: ResponseFormat, includeUsage: boolean): Promise<Outcome> {
  const sse = new SseWriter(res);
  sse.open(run.requestId);
  let ready = true;
  for (const chunk of format.openingChunks()) ready = sse.send(chunk);
  try {
    for (;;) {
      if (!ready) await sse.drained();
      if (!sse.writable) return { status: CLIENT_CLOSED_STATUS, usage: run.usage() };
      const step = await run.next();
      if (step === null) break;
      const chunk = format.chunk(step);
      if (chunk !== null) ready = sse.send(chunk);
    }
  } catch (err) {
    if (!sse.writable) return { status: CLIENT_CLOSED_STATUS, usage: run.usage() };
    const apiError = toApiError(err);
    sse.fail(apiError);
    return { status: apiError.status, usage: run.usage() };
  }
  if (!sse.writable) return { status: CLIENT_CLOSED_STATUS, usage: run.usage() };
  const usage = run.usage();
  if (includeUsage) sse.send(format.usageChunk(usage));
  sse.done();
  return { status: 200, usage };
}

async function collectSteps(res: ServerResponse, run: GenerationRun, format: ResponseFormat): Promise<Outcome> {
  let finishReason: OpenAIFinishReason = "length";
  for (let step = await run.next(); step !== null; step = await run.next()) {
    format.collect(step);
    if (step.finishReason !== null) finishReason = step.finishReason;
  }
  const usage = run.usage();
  if (res.destroyed) return { status: CLIENT_CLOSED_STATUS, usage };
  const body = format.body(finishReason, usage);
  res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body), "x-request-id": run.requestId });
  res.end(body);
  return { status: 200, usage };
}

/**
 * The fixed parts of one response's stream chunks, built once so that a chunk costs a few
 * string concatenations and one JSON.stringify of its text.
 */
export class ChunkFrame {
  readonly created = Math.floor(Date.now() / 1000);
  private readonly head: string;
  private readonly tail: string;

  constructor(
    readonly id: string,
    private readonly object: string,
    readonly model: string,
    includeUsage: boolean,
  ) {
    this.head = `{"id":"${id}","object":"${object}","created":${this.created},"model":${JSON.stringify(model)},"choices":[{"index":0,`;
    // With include_usage, OpenAI puts "usage": null on every chunk before the last.
    this.tail = includeUsage ? `}],"usage":null}` : "}]}";
  }

  /** A chunk whose one choice has these members (JSON text without the braces). */
  choice(members: string): string {
    return this.head + members + this.tail;
  }

  /** The last chunk of a stream with include_usage: no choices, the usage. */
  usage(usage: GenerationUsage): string {
    return JSON.stringify({ id: this.id, object: this.object, created: this.created, model: this.model, choices: [], usage: openAIUsage(usage) });
  }
}

/** `usage` as OpenAI writes it. */
export function openAIUsage(usage: GenerationUsage): Record<string, unknown> {
  return {
    prompt_tokens: usage.promptTokens,
    completion_tokens: usage.completionTokens,
    total_tokens: usage.promptTokens + usage.completionTokens,
    prompt_tokens_details: { cached_tokens: usage.cachedTokens },
  };
}
