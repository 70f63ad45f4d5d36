/**
 * The native engine: the C++ paged-attention engine (native/, built by `npm install` through
 * cmake-js) behind the Engine interface. The engine steps on its own native thread; each
 * step's outputs and KV events arrive here in one callback, which routes outputs to the
 * request streams and events to the KV listeners. kvSnapshot() is built from the events
 * already delivered, so a snapshot plus the events after it always rebuild the cache exactly.
 *
 * Disaggregated serving (CPU and CUDA devices): a prefill request can keep its prompt's blocks
 * held after it finishes, and a decode request takes its prompt's KV from elsewhere. For the
 * latter the engine thread reserves blocks and reports them in a step callback; this module
 * then runs the request's `fetchKv` and tells the engine thread to commit the blocks, or to
 * recompute the prompt when the fetch failed. While a fetch runs it may be writing into the
 * reserved blocks, so an abort reaches the engine (which frees them) only once the fetch has
 * settled.
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  EngineError,
  type Engine,
  type EngineErrorCode,
  type EngineKvTransfer,
  type EngineOutput,
  type EngineRequest,
  type EngineStats,
  type FinishReason,
  type HeldKv,
  type KvEvent,
  type KvEventListener,
  type KvMemoryLayout,
  type KvReservation,
  type RemotePrefill,
  type TokenLogprob,
} from "../engine.ts";

export interface NativeEngineOptions {
  /** Hugging Face model folder (config.json, safetensors). */
  model: string;
  blockSize?: number;
  /** Bytes of host memory for the paged KV cache; sets the number of blocks. */
  kvCacheMemoryBytes?: number;
  maxNumSeqs?: number;
  /**
   * Tokens an engine step takes. Default 2048, or 8192 on a CUDA GPU of 70 GiB or more other than
   * an A100, as vLLM's OpenAI server chooses: such a GPU runs prefill ~5% faster in the larger
   * steps (bench/RESULTS.md), at the price of longer steps when long prompts share them with
   * decodes. `info.maxNumBatchedTokens` says which.
   */
  maxNumBatchedTokens?: number;
  /** Defaults to the model's max_position_embeddings; capped by what the KV cache holds. */
  maxModelLen?: number;
  enablePrefixCaching?: boolean;
  /** Matmul/attention threads including the step thread; 0 or absent: all cores. */
  threads?: number;
  /** Seed of the random generators of requests without their own seed. */
  seed?: number;
  /** Plain single-threaded reference kernels (tests compare the fast kernels against them). */
  referenceKernels?: boolean;
  /**
   * Where the forward pass runs. Default: "cuda" when the addon was built with the CUDA backend
   * and sees a GPU, else "cpu". On "cuda" the KV cache is sized by gpuMemoryUtilization unless
   * kvCacheMemoryBytes is given.
   */
  device?: NativeDevice;
  /** cuda: share of the GPU's memory for weights, activations and KV cache (default 0.9). */
  gpuMemoryUtilization?: number;
  /** cuda: launch every kernel eagerly instead of replaying CUDA graphs for decode steps. */
  enforceEager?: boolean;
  /**
   * cuda: the type of the weights, the KV cache and the GEMM inputs. "auto" (default): the
   * checkpoint's (bf16, or fp16; fp32 checkpoints run in bf16). "float16" on a bf16 checkpoint
   * keeps every weight's value (loading fails if one lies past fp16's +-65504) and rounds the
   * KV cache and activations to 11 significant bits instead of 8, at fp16's narrower range:
   * an activation past +-65504 saturates. The CPU engine computes in fp32 and takes only "auto".
   */
  dtype?: NativeDtype;
}

export type NativeDevice = "cpu" | "cuda";
export type NativeDtype = "auto" | "bfloat16" | "float16";

/** Whether the addon has the CUDA backend and which GPU it sees. */
export interface CudaInfo {
  built: boolean;
  deviceCount: number;
  name: string;
  totalMemoryBytes: number;
  /** Why CUDA cannot be used, when it cannot. */
  error?: string;
}

export const NATIVE_ENGINE_DEFAULTS = {
  blockSize: 16,
  kvCacheMemoryBytes: 256 * 1024 * 1024,
  maxNumSeqs: 256,
  enablePrefixCaching: true,
} as const;

/** What the loaded model and engine look like. */
export interface NativeEngineInfo {
  architecture: string;
  blockSize: number;
  maxModelLen: number;
  /** Tokens an engine step takes: the option, or its default for the device. */
  maxNumBatchedTokens: number;
  numKvBlocks: number;
  vocabSize: number;
  eosTokenIds: number[];
  /** Bytes of weights one decode step reads (the memory-bandwidth roofline's numerator). */
  weightBytesPerStep: number;
  backend: string;
  /** How the backend runs, where it says (CUDA: its dtype, whether GEMM inputs are split, whether batch 1 is one persistent kernel). */
  backendDetail: string;
  /** The type weights, KV cache and GEMM inputs are kept in: "float32" on CPU, "bfloat16" or "float16" on CUDA. */
  dtype: string;
}

interface NativeOutput {
  requestId: string;
  tokenIds: number[];
  logprobs?: TokenLogprob[];
  finishReason?: FinishReason;
  errorMessage?: string;
  promptTokens: number;
  completionTokens: number;
  cachedTokens: number;
  heldKv?: HeldKv;
}

interface NativeReservation extends KvReservation {
  requestId: string;
}

interface NativeDisaggregation {
  holdKvForRemoteDecode?: boolean;
  /** Present for a remote prefill. */
  remoteFirstTokenId?: number;
}

type StepCallback = (
  outputs: NativeOutput[],
  events: KvEvent[],
  numTokens: number,
  reservations: NativeReservation[],
  barriers: number[],
) => void;

interface NativeHandle {
  add(requestId: string, promptTokenIds: Int32Array, sampling: object, disaggregation?: NativeDisaggregation): void;
  abort(requestId: string): void;
  commitRemoteKv(requestId: string): void;
  recomputeRemoteKv(requestId: string): void;
  releaseHeldKv(requestId: string): void;
  barrier(id: number): void;
  kvLayout(): KvMemoryLayout;
  stats(): EngineStats;
  kvSnapshot(): KvEvent[];
  checkInvariants(): string;
  info(): NativeEngineInfo;
  ref(): void;
  unref(): void;
  close(): Promise<void>;
}

export interface NativeAddon {
  Engine: new (options: object, onStep: StepCallback) => NativeHandle;
  xxh64(bytes: Uint8Array, seed: bigint): bigint;
  cudaInfo(): CudaInfo;
  blockHashes(tokenIds: ArrayLike<number>, blockSize: number, parentHash?: bigint): bigint[];
}

const ADDON_PATH = join(dirname(fileURLToPath(import.meta.url)), "../../../native/build/Release/switchyard_native.node");

let addon: NativeAddon | undefined;

/** The compiled addon; throws a clear error when it has not been built. */
export function loadNativeAddon(): NativeAddon {
  if (addon) return addon;
  if (!existsSync(ADDON_PATH)) {
    throw new Error(`the native engine is not built (${ADDON_PATH} is missing): run \`npm install\` (or \`npx cmake-js compile -d native -O native/build\`)`);
  }
  addon = createRequire(import.meta.url)(ADDON_PATH) as NativeAddon;
  return addon;
}

/** The device a NativeEngine uses when its options name none. */
export function defaultNativeDevice(): NativeDevice {
  const cuda = loadNativeAddon().cudaInfo();
  return cuda.built && cuda.deviceCount > 0 ? "cuda" : "cpu";
}

/** Outputs of one request, from the step callback to its generate() loop. */
class RequestStream {
  private readonly queue: EngineOutput[] = [];
  private wake: (() => void) | undefined;

  push(output: EngineOutput): void {
    this.queue.push(output);
    this.wake?.();
    this.wake = undefined;
  }

  async next(): Promise<EngineOutput> {
    while (this.queue.length === 0) await new Promise<void>((resolve) => (this.wake = resolve));
    return this.queue.shift()!;
  }
}

interface MirroredBlock {
  parent?: bigint;
  tokenIds: number[];
}

/** A remote prefill's KV copy, from the engine's reservation until commit or recompute. */
interface RemoteKvFetch {
  readonly remote: RemotePrefill;
  /** Aborted with the request; fetchKv's signal. */
  readonly controller: AbortController;
  /** Set while fetchKv runs: the reserved blocks must stay allocated until it settles. */
  running?: Promise<void>;
}

interface ActiveRequest {
  readonly stream: RequestStream;
  readonly fetch?: RemoteKvFetch;
}

export class NativeEngine implements Engine {
  readonly blockSize: number;
  readonly maxModelLen: number;
  readonly info: NativeEngineInfo;
  /** Host memory on the CPU device; on cuda the runner's one device allocation of KV cache. */
  readonly kvTransfer: EngineKvTransfer;
  private readonly requests = new Map<string, ActiveRequest>();
  /** Requests whose blocks the engine holds, as told by their final outputs. */
  private readonly held = new Map<string, HeldKv>();
  private readonly barriers = new Map<number, () => void>();
  private nextBarrierId = 0;
  /** Requests and barriers in flight; the step callback keeps Node alive while there are any. */
  private inFlight = 0;
  private readonly listeners = new Set<KvEventListener>();
  /** The cache contents as told by the events delivered so far, in the order stored. */
  private readonly cachedBlocks = new Map<bigint, MirroredBlock>();
  private closed = false;
  /** Tokens the forward passes computed; for benchmarks. */
  tokensComputed = 0;
  /** Remote prefills whose fetchKv failed, so that the engine computed the prompt itself. */
  kvFetchFailures = 0;

  private constructor(private readonly handle: NativeHandle) {
    this.info = handle.info();
    this.blockSize = this.info.blockSize;
    this.maxModelLen = this.info.maxModelLen;
    const layout = handle.kvLayout();
    // The memory is the engine's: valid until close(), so deregister it from agents first.
    this.kvTransfer = {
      layout: () => layout,
      releaseHeldKv: (requestId) => this.releaseHeldKv(requestId),
      heldRequests: () => [...this.held.keys()],
    };
  }

  /** Loads the model and starts the engine thread; rejects with the loader's message (file, tensor). */
  static async load(options: NativeEngineOptions): Promise<NativeEngine> {
    const native = loadNativeAddon();
    let engine: NativeEngine | undefined;
    const device = options.device ?? defaultNativeDevice();
    const { kvCacheMemoryBytes: _hostCacheDefault, ...gpuDefaults } = NATIVE_ENGINE_DEFAULTS;
    // On the GPU the cache is sized by gpuMemoryUtilization, not the host default.
    const defaults = device === "cuda" ? gpuDefaults : NATIVE_ENGINE_DEFAULTS;
    const handle = new native.Engine({ ...defaults, ...options, device }, (outputs, events, numTokens, reservations, barriers) =>
      engine?.onStep(outputs, events, numTokens, reservations, barriers),
    );
    engine = new NativeEngine(handle);
    return engine;
  }

  generate(request: EngineRequest, signal?: AbortSignal): AsyncIterable<EngineOutput> {
    return this.run(request, signal);
  }

  private async *run(request: EngineRequest, signal?: AbortSignal): AsyncGenerator<EngineOutput> {
    const { requestId, promptTokenIds, sampling, holdKvForRemoteDecode, remotePrefill } = request;
    if (this.closed) throw new EngineError("unavailable", "the engine is closed");
    if (this.requests.has(requestId)) throw new EngineError("invalid_argument", `request id ${requestId} is already running`);
    if (holdKvForRemoteDecode && this.held.has(requestId)) {
      throw new EngineError("invalid_argument", `request id ${requestId} still holds KV blocks for a remote decode`);
    }
    if (promptTokenIds.length >= this.maxModelLen) {
      throw new EngineError(
        "invalid_argument",
        `the prompt has ${promptTokenIds.length} tokens; this engine's max model length is ${this.maxModelLen}, which leaves no room to generate`,
      );
    }
    const usage = { promptTokens: promptTokenIds.length, completionTokens: 0, cachedTokens: 0 };
    if (signal?.aborted) {
      yield { tokenIds: [], finishReason: "cancelled", usage };
      return;
    }
    const stream = new RequestStream();
    const disaggregation: NativeDisaggregation | undefined =
      holdKvForRemoteDecode || remotePrefill
        ? { holdKvForRemoteDecode: holdKvForRemoteDecode ?? false, remoteFirstTokenId: remotePrefill?.firstTokenId }
        : undefined;
    try {
      this.handle.add(
        requestId,
        Int32Array.from(promptTokenIds),
        {
          ...sampling,
          // Never generate past the context: the engine also stops there, with "length".
          maxTokens: Math.min(sampling.maxTokens, this.maxModelLen - promptTokenIds.length),
        },
        disaggregation,
      );
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code) throw new EngineError(code as EngineErrorCode, (err as Error).message, { cause: err });
      throw new EngineError("internal", (err as Error).message, { cause: err });
    }
    this.requests.set(requestId, {
      stream,
      ...(remotePrefill ? { fetch: { remote: remotePrefill, controller: new AbortController() } } : {}),
    });
    this.refLoop();
    const onAbort = () => this.abortRequest(requestId);
    signal?.addEventListener("abort", onAbort, { once: true });
    let finished = false;
    try {
      for (;;) {
        const output = await stream.next();
        if (output.finishReason) finished = true;
        yield output;
        if (finished) return;
      }
    } finally {
      signal?.removeEventListener("abort", onAbort);
      // The consumer stopped early: abort; the engine's "cancelled" output then closes the stream.
      if (!finished && !this.closed) this.abortRequest(requestId);
    }
  }

  abort(requestId: string): boolean {
    if (!this.requests.has(requestId) || this.closed) return false;
    this.abortRequest(requestId);
    return true;
  }

  /**
   * Aborts a request. While its remote KV is being fetched, only the fetch is aborted here: the
   * fetch may still be writing into the reserved blocks, so the engine (which frees them on
   * abort) hears of it once fetchKv has settled. A fetchKv must therefore honour its signal.
   */
  private abortRequest(requestId: string): void {
    const fetch = this.requests.get(requestId)?.fetch;
    fetch?.controller.abort();
    if (fetch?.running) return;
    this.handle.abort(requestId);
  }

  /** Runs a reserved request's fetchKv, then commits the blocks or has the engine recompute the prompt. */
  private startFetch(reservation: NativeReservation): void {
    const { requestId, blockIds, numCachedBlocks } = reservation;
    const fetch = this.requests.get(requestId)?.fetch;
    // An aborted request: the engine already freed the reservation (the abort followed the add).
    if (!fetch || fetch.controller.signal.aborted || this.closed) return;
    const signal = fetch.controller.signal;
    const fetched = Promise.resolve()
      .then(() => fetch.remote.fetchKv({ blockIds, numCachedBlocks }, signal))
      .then(
        () => true,
        () => false,
      );
    fetch.running = fetched.then((ok) => {
      fetch.running = undefined;
      if (!ok) this.kvFetchFailures++;
      if (this.closed || this.requests.get(requestId)?.fetch !== fetch) return;
      if (signal.aborted) this.handle.abort(requestId);
      else if (ok) this.handle.commitRemoteKv(requestId);
      else this.handle.recomputeRemoteKv(requestId);
    });
  }

  private releaseHeldKv(requestId: string): boolean {
    if (this.closed || !this.held.delete(requestId)) return false;
    this.handle.releaseHeldKv(requestId);
    return true;
  }

  /**
   * Resolves once the engine thread has applied every call made before it (adds, aborts,
   * releaseHeldKv): stats() and checkInvariants() then reflect them.
   */
  settled(): Promise<void> {
    if (this.closed) return Promise.resolve();
    const id = this.nextBarrierId++;
    return new Promise((resolve) => {
      this.barriers.set(id, resolve);
      this.refLoop();
      this.handle.barrier(id);
    });
  }

  private refLoop(): void {
    if (this.inFlight++ === 0) this.handle.ref();
  }

  private unrefLoop(): void {
    if (--this.inFlight === 0 && !this.closed) this.handle.unref();
  }

  stats(): EngineStats {
    if (this.closed) {
      return { runningRequests: 0, waitingRequests: 0, kvBlocksUsed: 0, kvBlocksTotal: this.info.numKvBlocks, prefixCacheQueries: 0, prefixCacheHits: 0, preemptions: 0 };
    }
    return this.handle.stats();
  }

  onKvEvents(listener: KvEventListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  kvSnapshot(): KvEvent[] {
    // Parents before children: a parent re-stored after its child was kept is emitted first.
    const events: KvEvent[] = [];
    const emitted = new Set<bigint>();
    for (const start of this.cachedBlocks.keys()) {
      const chain: bigint[] = [];
      for (let h: bigint | undefined = start; h !== undefined && !emitted.has(h) && this.cachedBlocks.has(h); h = this.cachedBlocks.get(h)!.parent) {
        chain.push(h);
        emitted.add(h);
      }
      for (const hash of chain.reverse()) {
        const block = this.cachedBlocks.get(hash)!;
        events.push({
          type: "stored",
          blockHashes: [hash],
          ...(block.parent !== undefined ? { parentBlockHash: block.parent } : {}),
          tokenIds: block.tokenIds,
          blockSize: this.blockSize,
        });
      }
    }
    return events;
  }

  /** The native block pool's own snapshot (after the current step); equals kvSnapshot() when idle. */
  nativeKvSnapshot(): KvEvent[] {
    return this.handle.kvSnapshot();
  }

  /** Checks the block pool's invariants; returns "" or the first violation. */
  checkInvariants(): string {
    return this.handle.checkInvariants();
  }

  /** Stops the engine thread and frees the model and KV cache (GPU memory too) before resolving. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // A fetch may still be writing into the KV cache, which the engine frees on close.
    const fetches = [...this.requests.values()].flatMap((r) => (r.fetch ? [r.fetch] : []));
    for (const fetch of fetches) fetch.controller.abort();
    await Promise.all(fetches.map((fetch) => fetch.running));
    await this.handle.close();
    for (const [, request] of this.requests) {
      request.stream.push({ tokenIds: [], finishReason: "cancelled", usage: { promptTokens: 0, completionTokens: 0, cachedTokens: 0 } });
    }
    this.requests.clear();
    this.held.clear();
    for (const resolve of this.barriers.values()) resolve();
    this.barriers.clear();
  }

  private onStep(
    outputs: NativeOutput[],
    events: KvEvent[],
    numTokens: number,
    reservations: NativeReservation[],
    barriers: number[],
  ): void {
    this.tokensComputed += numTokens;
    for (const event of events) this.mirror(event);
    if (events.length > 0) for (const listener of this.listeners) listener(events);
    for (const out of outputs) {
      // Recorded even without a stream, so that releaseHeldKv can always free the blocks.
      if (out.heldKv) this.held.set(out.requestId, out.heldKv);
      const request = this.requests.get(out.requestId);
      if (!request) continue;
      const output: EngineOutput = {
        tokenIds: out.tokenIds,
        usage: { promptTokens: out.promptTokens, completionTokens: out.completionTokens, cachedTokens: out.cachedTokens },
      };
      if (out.logprobs) output.logprobs = out.logprobs;
      if (out.heldKv) output.heldKv = out.heldKv;
      if (out.finishReason) {
        output.finishReason = out.finishReason;
        if (out.errorMessage) output.errorMessage = out.errorMessage;
        this.requests.delete(out.requestId);
        this.unrefLoop();
      }
      request.stream.push(output);
    }
    for (const reservation of reservations) this.startFetch(reservation);
    for (const id of barriers) {
      const resolve = this.barriers.get(id);
      if (!resolve) continue;
      this.barriers.delete(id);
      this.unrefLoop();
      resolve();
    }
  }

  private mirror(event: KvEvent): void {
    switch (event.type) {
      case "stored":
        event.blockHashes.forEach((hash, i) => {
          this.cachedBlocks.set(hash, {
            parent: i === 0 ? event.parentBlockHash : event.blockHashes[i - 1],
            tokenIds: event.tokenIds.slice(i * event.blockSize, (i + 1) * event.blockSize),
          });
        });
        break;
      case "removed":
        for (const hash of event.blockHashes) this.cachedBlocks.delete(hash);
        break;
      case "cleared":
        this.cachedBlocks.clear();
        break;
    }
  }
}
