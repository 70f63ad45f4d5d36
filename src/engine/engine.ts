/**
 * The engine interface: what a worker needs from whatever runs the model. The mocker (a
 * TypeScript simulation) and the native engine (C++/CUDA addon) both implement it; the worker
 * service only translates between this and the wire contract.
 */

/** Sampling parameters with vLLM's defaults already applied (see `resolveSampling`). */
export interface SamplingParams {
  temperature: number;
  topP: number;
  /** 0 or -1 disables top-k. */
  topK: number;
  minP: number;
  seed?: bigint;
  maxTokens: number;
  minTokens: number;
  stopTokenIds: number[];
  ignoreEos: boolean;
  presencePenalty: number;
  frequencyPenalty: number;
  repetitionPenalty: number;
  /** Number of top alternatives per token; undefined means no logprobs at all. */
  logprobs?: number;
}

export interface EngineRequest {
  requestId: string;
  promptTokenIds: number[];
  sampling: SamplingParams;
}

export interface TopLogprob {
  tokenId: number;
  logprob: number;
}

export interface TokenLogprob extends TopLogprob {
  top: TopLogprob[];
}

export type FinishReason = "stop" | "length" | "cancelled" | "error";

export interface Usage {
  promptTokens: number;
  completionTokens: number;
  /** Prompt tokens whose KV came from the prefix cache. */
  cachedTokens: number;
}

/** What one engine step produced for one request. */
export interface EngineOutput {
  tokenIds: number[];
  logprobs?: TokenLogprob[];
  /** Set on the last output of a request. */
  finishReason?: FinishReason;
  errorMessage?: string;
  usage: Usage;
}

export interface EngineStats {
  runningRequests: number;
  waitingRequests: number;
  kvBlocksUsed: number;
  kvBlocksTotal: number;
  prefixCacheQueries: number;
  prefixCacheHits: number;
  preemptions: number;
}

/** KV-cache events, exactly as the block pool changed; see proto BlockStored. */
export type KvEvent =
  | {
      type: "stored";
      /** Chained hashes of consecutive full blocks, parent first. */
      blockHashes: bigint[];
      parentBlockHash?: bigint;
      tokenIds: number[];
      blockSize: number;
    }
  | { type: "removed"; blockHashes: bigint[] }
  | { type: "cleared" };

export type KvEventListener = (events: KvEvent[]) => void;

export interface Engine {
  readonly blockSize: number;
  readonly maxModelLen: number;
  /**
   * Submits a request; yields outputs until one carries a finishReason. Throws EngineError
   * (before the first output) for a request the engine can never serve. Aborting the signal or
   * breaking out of the iteration aborts the request and frees its blocks.
   */
  generate(request: EngineRequest, signal?: AbortSignal): AsyncIterable<EngineOutput>;
  /** Aborts a request by id; false when it is not known. */
  abort(requestId: string): boolean;
  stats(): EngineStats;
  /** Subscribes to KV events; returns the unsubscribe function. */
  onKvEvents(listener: KvEventListener): () => void;
  /** Events that rebuild the current cache contents from nothing, parents before children. */
  kvSnapshot(): KvEvent[];
  close(): Promise<void>;
}

export type EngineErrorCode = "invalid_argument" | "resource_exhausted" | "unavailable" | "internal";

export class EngineError extends Error {
  constructor(
    readonly code: EngineErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "EngineError";
  }
}
