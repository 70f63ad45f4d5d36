/**
 * One request's trip through the router, as text: sends the GenerateRequest, and turns each
 * worker message (token ids of one engine step) into the text a client may see now, applying
 * incremental detokenization and stop strings, and counting tokens for usage. A stop string
 * cancels the request on the worker; so does the client going away (the caller's signal).
 */
import { create } from "@bufbuild/protobuf";
import { FinishReason, GenerateRequestSchema, SamplingParamsSchema, type GenerateRequest, type GenerateResponse, type TokenLogprobs } from "../../gen/switchyard/worker/v1/worker_pb.ts";
import type { Router } from "../router/router.ts";
import { createDetokenizer, type Detokenizer } from "./detokenizer.ts";
import { ApiError } from "./errors.ts";
import { StopStringMatcher } from "./stop_strings.ts";
import type { ModelTokenizer } from "./tokenizer.ts";

export type OpenAIFinishReason = "stop" | "length";

export interface GenerationStep {
  /** Text that may be shown now; "" when everything new is held back. */
  text: string;
  /** Logprobs of the tokens this step consumed, when they were asked for. */
  logprobs: TokenLogprobs[] | undefined;
  finishReason: OpenAIFinishReason | null;
}

export interface GenerationUsage {
  promptTokens: number;
  completionTokens: number;
  cachedTokens: number;
}

export interface GenerationSpec {
  tokenizer: ModelTokenizer;
  request: GenerateRequest;
  stop: readonly string[];
  skipSpecialTokens: boolean;
  /** Which of the request's `n` choices this run is (0 when n is 1). */
  choiceIndex?: number;
}

/** Timing hooks, so the caller owns metrics; called at most once per worker message. */
export interface GenerationObserver {
  onTokens(count: number, nowMs: number, choiceIndex: number): void;
}

/**
 * The worker request of one choice of a request that has several (`n` > 1, or a batch of
 * prompts): a request id of its own and, for a seeded request, the seed plus the choice's index
 * among its prompt's n, so that a prompt's choices differ from each other while each stays
 * reproducible (choice 0 is what the same prompt with n = 1 gives).
 */
export function choiceRequest(request: GenerateRequest, requestId: string, seedOffset: number): GenerateRequest {
  const sampling = request.sampling;
  return create(GenerateRequestSchema, {
    ...request,
    requestId,
    sampling: sampling && create(SamplingParamsSchema, { ...sampling, seed: sampling.seed === undefined ? undefined : sampling.seed + BigInt(seedOffset) }),
  });
}

export class GenerationRun {
  private readonly upstream = new AbortController();
  private readonly detokenizer: Detokenizer;
  private readonly stopStrings: StopStringMatcher;
  /** Ids whose appearance as the last token of a "stop" finish is not shown (eos, stop_token_ids). */
  private readonly stopTokenIds: Set<number>;
  private iterator: AsyncIterator<GenerateResponse> | undefined;
  private first: IteratorResult<GenerateResponse> | undefined;
  private completionTokens = 0;
  private lastUsage: GenerateResponse["usage"];
  private finished = false;

  constructor(
    private readonly router: Router,
    private readonly spec: GenerationSpec,
    clientSignal: AbortSignal,
    private readonly observer?: GenerationObserver,
  ) {
    this.detokenizer = createDetokenizer(spec.tokenizer, spec.request.tokenIds, spec.skipSpecialTokens);
    this.stopStrings = new StopStringMatcher(spec.stop);
    this.stopTokenIds = new Set(spec.request.sampling?.stopTokenIds ?? []);
    if (clientSignal.aborted) this.upstream.abort(clientSignal.reason);
    else clientSignal.addEventListener("abort", () => this.cancel(), { once: true });
  }

  get requestId(): string {
    return this.spec.request.requestId;
  }

  get done(): boolean {
    return this.finished;
  }

  /**
   * Sends the request and waits for the worker's first message, so that a refusal (no worker,
   * bad request) surfaces before the caller has committed to a status code.
   */
  async start(): Promise<void> {
    this.iterator = this.router.generate(this.spec.request, this.upstream.signal)[Symbol.asyncIterator]();
    this.first = await this.iterator.next();
  }

  /** The next step; null once the request has finished. Throws ApiError for a failed request. */
  async next(): Promise<GenerationStep | null> {
    if (this.finished) return null;
    let result = this.first;
    this.first = undefined;
    if (result === undefined) result = await this.iterator!.next();
    if (result.done) {
      this.finished = true;
      if (this.upstream.signal.aborted) return null;
      throw new ApiError(502, "the worker's stream ended without a finish reason", "server_error", "incomplete_stream");
    }
    return this.consume(result.value);
  }

  usage(): GenerationUsage {
    return {
      promptTokens: this.lastUsage?.promptTokens || this.spec.request.tokenIds.length,
      completionTokens: this.completionTokens,
      cachedTokens: this.lastUsage?.cachedTokens ?? 0,
    };
  }

  /** Stops the request on the worker (stop string matched, client gone, or caller failing). */
  cancel(): void {
    this.finished = true;
    if (this.upstream.signal.aborted) return;
    this.upstream.abort();
    this.iterator?.return?.().catch(() => {});
  }

  private consume(response: GenerateResponse): GenerationStep {
    if (response.finishReason === FinishReason.ERROR) {
      this.finished = true;
      throw new ApiError(500, `the worker failed: ${response.errorMessage || "unknown error"}`, "server_error", "worker_error");
    }
    if (response.finishReason === FinishReason.CANCELLED) {
      this.finished = true;
      throw new ApiError(503, "the worker cancelled the request", "service_unavailable_error", "cancelled");
    }
    if (response.usage) this.lastUsage = response.usage;
    const ids = response.tokenIds;
    const workerFinish = response.finishReason === FinishReason.STOP ? "stop" : response.finishReason === FinishReason.LENGTH ? "length" : null;
    // A finishing stop token (eos, stop_token_ids) counts as generated but is not text.
    let shown = ids.length;
    if (workerFinish === "stop" && shown > 0 && this.stopTokenIds.has(ids[shown - 1])) shown--;

    let text = "";
    let consumed = ids.length;
    let stopped = false;
    const checkStops = this.stopStrings.active;
    if (!checkStops) {
      text = this.detokenizer.pushMany(ids, shown);
    } else {
      // Token by token: a stop string ends the text, and the count of consumed tokens, where it matched.
      for (let i = 0; i < shown; i++) {
        const check = this.stopStrings.push(this.detokenizer.push(ids[i]));
        text += check.text;
        if (check.stopped) {
          stopped = true;
          consumed = i + 1;
          break;
        }
      }
    }
    if (!stopped && workerFinish !== null) {
      const tail = this.detokenizer.flush();
      if (checkStops) {
        const check = this.stopStrings.push(tail);
        text += check.text;
        stopped = check.stopped;
        if (!stopped) text += this.stopStrings.flush();
      } else {
        text += tail;
      }
    }
    this.completionTokens += consumed;
    if (consumed > 0) this.observer?.onTokens(consumed, performance.now(), this.spec.choiceIndex ?? 0);

    let finishReason: OpenAIFinishReason | null = workerFinish;
    if (stopped) {
      finishReason = "stop";
      this.cancel();
    }
    if (finishReason !== null && !this.finished) {
      this.finished = true;
      // Close the router's stream now rather than leave it suspended at its last message.
      this.iterator?.return?.().catch(() => {});
    }
    let logprobs: TokenLogprobs[] | undefined;
    if (response.logprobs.length > 0) logprobs = consumed < response.logprobs.length ? response.logprobs.slice(0, consumed) : response.logprobs;
    return { text, logprobs, finishReason };
  }
}
