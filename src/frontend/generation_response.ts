/**
 * Delivers a request's choices (one GenerationRun each; n of them for `n` > 1) to the client,
 * streamed as SSE or as one JSON body, in the shape an endpoint's ChoiceFormat gives each
 * choice. Errors before the first token become an HTTP error (thrown to the caller); after the
 * stream opened they become an SSE error event, and end every choice, as a failed request does
 * in vLLM. Every run is either finished or cancelled when this returns.
 */
import type { ServerResponse } from "node:http";
import { toApiError } from "./errors.ts";
import type { GenerationRun, GenerationStep, GenerationUsage, OpenAIFinishReason } from "./generation.ts";
import { SseWriter } from "./sse.ts";

/** How one endpoint shapes one choice's chunks and body entry. Chunk methods return JSON text. */
export interface ChoiceFormat {
  /** Chunks sent as soon as the stream opens (chat: the assistant role; completions: echo). */
  openingChunks(): string[];
  /** The chunk for a step, or null when it carries nothing worth sending. */
  chunk(step: GenerationStep): string | null;
  /** Non-streamed: takes a step's text and logprobs into the whole choice. */
  collect(step: GenerationStep): void;
  /** Non-streamed: the choice as the body's `choices` lists it. */
  choice(finishReason: OpenAIFinishReason): Record<string, unknown>;
}

export interface Choice {
  run: GenerationRun;
  format: ChoiceFormat;
  /** The first choice of its prompt, whose prompt counts in usage (default: choice 0 alone). */
  countsPrompt?: boolean;
}

/** The response as a whole: its id, its frame, and the `object` a non-streamed body is. */
export interface ResponseEnvelope {
  requestId: string;
  frame: ChunkFrame;
  bodyObject: string;
  includeUsage: boolean;
}

/** What happened, for metrics: the status the request ended with (499: the client left). */
export interface Outcome {
  status: number;
  usage: GenerationUsage;
}

export const CLIENT_CLOSED_STATUS = 499;

export async function sendGeneration(res: ServerResponse, choices: Choice[], envelope: ResponseEnvelope, stream: boolean): Promise<Outcome> {
  try {
    await Promise.all(choices.map((c) => c.run.start()));
    return stream ? await streamSteps(res, choices, envelope) : await collectSteps(res, choices, envelope);
  } finally {
    for (const { run } of choices) if (!run.done) run.cancel();
  }
}

/** Each prompt counts once, with its first choice's cache hits; every choice's tokens count. */
function totalUsage(choices: Choice[]): GenerationUsage {
  if (choices.length === 1) return choices[0].run.usage();
  const total: GenerationUsage = { promptTokens: 0, completionTokens: 0, cachedTokens: 0 };
  choices.forEach((choice, i) => {
    const usage = choice.run.usage();
    total.completionTokens += usage.completionTokens;
    if (choice.countsPrompt ?? i === 0) {
      total.promptTokens += usage.promptTokens;
      total.cachedTokens += usage.cachedTokens;
    }
  });
  return total;
}

type Pulled = { index: number; step: GenerationStep | null } | { index: number; error: unknown };

/**
 * The next step of whichever choice has one first. A single choice is awaited directly (no race,
 * no allocation per token beyond its own).
 */
class StepMerger {
  private readonly pending = new Map<number, Promise<Pulled>>();

  constructor(private readonly choices: Choice[]) {
    if (choices.length > 1) choices.forEach((_, i) => this.pull(i));
  }

  /** The next step with its choice's index; null once every choice has finished. */
  async next(): Promise<{ index: number; step: GenerationStep } | null> {
    if (this.choices.length === 1) {
      const step = await this.choices[0].run.next();
      return step === null ? null : { index: 0, step };
    }
    while (this.pending.size > 0) {
      const pulled = await Promise.race(this.pending.values());
      this.pending.delete(pulled.index);
      if ("error" in pulled) throw pulled.error;
      if (pulled.step === null) continue;
      this.pull(pulled.index);
      return { index: pulled.index, step: pulled.step };
    }
    return null;
  }

  private pull(index: number): void {
    // Settles, never rejects: a choice failing while another is awaited is not an unhandled rejection.
    const pulled = this.choices[index].run.next().then(
      (step): Pulled => ({ index, step }),
      (error: unknown): Pulled => ({ index, error }),
    );
    this.pending.set(index, pulled);
  }
}

async function streamSteps(res: ServerResponse, choices: Choice[], envelope: ResponseEnvelope): Promise<Outcome> {
  const sse = new SseWriter(res);
  sse.open(envelope.requestId);
  let ready = true;
  for (const { format } of choices) for (const chunk of format.openingChunks()) ready = sse.send(chunk);
  const merger = new StepMerger(choices);
  try {
    for (;;) {
      if (!ready) await sse.drained();
      if (!sse.writable) return { status: CLIENT_CLOSED_STATUS, usage: totalUsage(choices) };
      const next = await merger.next();
      if (next === null) break;
      const chunk = choices[next.index].format.chunk(next.step);
      if (chunk !== null) ready = sse.send(chunk);
    }
  } catch (err) {
    if (!sse.writable) return { status: CLIENT_CLOSED_STATUS, usage: totalUsage(choices) };
    const apiError = toApiError(err);
    sse.fail(apiError);
    return { status: apiError.status, usage: totalUsage(choices) };
  }
  if (!sse.writable) return { status: CLIENT_CLOSED_STATUS, usage: totalUsage(choices) };
  const usage = totalUsage(choices);
  if (envelope.includeUsage) sse.send(envelope.frame.usage(usage));
  sse.done();
  return { status: 200, usage };
}

async function collectSteps(res: ServerResponse, choices: Choice[], envelope: ResponseEnvelope): Promise<Outcome> {
  const finishReasons = await Promise.all(
    choices.map(async ({ run, format }) => {
      let finishReason: OpenAIFinishReason = "length";
      for (let step = await run.next(); step !== null; step = await run.next()) {
        format.collect(step);
        if (step.finishReason !== null) finishReason = step.finishReason;
      }
      return finishReason;
    }),
  );
  const usage = totalUsage(choices);
  if (res.destroyed) return { status: CLIENT_CLOSED_STATUS, usage };
  const { id, created, model } = envelope.frame;
  const body = JSON.stringify({
    id,
    object: envelope.bodyObject,
    created,
    model,
    choices: choices.map(({ format }, i) => format.choice(finishReasons[i])),
    usage: openAIUsage(usage),
  });
  res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body), "x-request-id": envelope.requestId });
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
    this.head = `{"id":"${id}","object":"${object}","created":${this.created},"model":${JSON.stringify(model)},"choices":[{"index":`;
    // With include_usage, OpenAI puts "usage": null on every chunk before the last.
    this.tail = includeUsage ? `}],"usage":null}` : "}]}";
  }

  /** A chunk whose one choice, number `index`, has these members (JSON text without the braces). */
  choice(index: number, members: string): string {
    return this.head + index + "," + members + this.tail;
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
