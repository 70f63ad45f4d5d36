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
  /**
   * Disaggregation, prefill side: when the request finishes, keep the blocks that hold the
   * prompt's KV referenced (not freed, not evicted) for a remote decode worker to read. The final
   * output carries them in `heldKv`; `kvTransfer.releaseHeldKv(requestId)` frees them.
   */
  holdKvForRemoteDecode?: boolean;
  /** Disaggregation, decode side: the prompt's KV was computed elsewhere; see RemotePrefill. */
  remotePrefill?: RemotePrefill;
}

/**
 * A request whose prompt a prefill worker already ran. The engine reserves blocks for the whole
 * prompt (reusing what its own prefix cache holds), lets `fetchKv` fill the rest, then goes on as
 * if it had computed the prompt itself and sampled `firstTokenId`: that token counts as the
 * request's first output token (penalties, usage, stop checks), and its KV is computed by the
 * next step. If `fetchKv` rejects, the engine drops the reservation and computes the prompt
 * itself (as it would recompute a preempted request): the request still completes.
 */
export interface RemotePrefill {
  firstTokenId: number;
  fetchKv(reservation: KvReservation, signal: AbortSignal): Promise<void>;
}

export interface KvReservation {
  /** One block per `blockSize` prompt tokens (the last one partly filled), in position order. */
  blockIds: number[];
  /** Leading blocks that already hold the prompt's KV here (prefix-cache hits): no need to fetch them. */
  numCachedBlocks: number;
}

/** The blocks a prefill kept for a remote decode. */
export interface HeldKv {
  /** One block per `blockSize` prompt tokens, in position order. */
  blockIds: number[];
  /** Prompt tokens whose KV the blocks hold. */
  numTokens: number;
}

/**
 * Where an engine's KV blocks live, for a transfer agent to register and move. Each block takes
 * `blockBytes` at `offset + blockId * blockStride` within `memory`, once per segment (e.g. one
 * segment per layer and K/V). Two engines of the same model and settings have segments of equal
 * count and blockBytes, in the same order; block i of one maps to block j of the other segment
 * by segment.
 */
export interface KvMemoryLayout {
  memory:
    | { kind: "host"; buffer: ArrayBuffer }
    | { kind: "host" | "cuda"; address: bigint; length: number; deviceId: number };
  segments: KvSegment[];
  /**
   * The element type of the cached K and V ("float32", "bfloat16", "float16"), where the engine
   * says: engines whose blocks have the same bytes but not the same type cannot exchange them.
   */
  dtype?: string;
}

export interface KvSegment {
  offset: number;
  blockStride: number;
  blockBytes: number;
}

/** What an engine that supports disaggregated serving offers besides the Engine interface. */
export interface EngineKvTransfer {
  layout(): KvMemoryLayout;
  /** Frees the blocks a finished `holdKvForRemoteDecode` request kept; false when none are held. */
  releaseHeldKv(requestId: string): boolean;
  /** Requests whose blocks are still held. */
  heldRequests(): string[];
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
  /** On the final output of a `holdKvForRemoteDecode` request that finished normally. */
  heldKv?: HeldKv;
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
  /** Present when the engine can hold and import KV blocks for disaggregated serving. */
  readonly kvTransfer?: EngineKvTransfer;
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
