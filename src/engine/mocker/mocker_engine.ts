/**
 * The mocker: an Engine that runs no model but keeps real KV-cache bookkeeping (block pool,
 * prefix cache, KV events, continuous batching, preemption) and takes as long as the timing
 * model says a small model on an H100 would. It is the test double for KV-aware routing at
 * scale.
 *
 * The step loop runs on timers: each tick finishes the step in flight (tokens, outputs, KV
 * events), plans the next one and sleeps for its simulated duration. It stops when there is
 * no work and restarts on the next request. KV events of one tick are delivered together as
 * one batch, and the pool never holds undelivered events between ticks, so `kvSnapshot()`
 * taken between ticks plus every later batch rebuilds the cache exactly.
 *
 * Pacing. By default a tick runs at most one step, so the simulated engine advances only as
 * fast as the event loop it shares with its consumers turns, and every consumer sees every
 * step (tests rely on that). With `ownClock` it behaves like an engine on hardware of its own,
 * which does not wait for the event loop: a tick that comes late (the loop was busy with the
 * consumers) runs back to back every step whose simulated end has passed, and at speedup 0,
 * where steps take no simulated time, as many as it can. A tick may take as much of the event
 * loop as everything else did while the engine was running (eventLoopUtilization), so the
 * simulation never takes more than half of a busy thread, and at most MAX_TICK_MS; time it
 * could not catch up on within that is not made up later, as on a GPU slower than its timing
 * model. Outputs a consumer has not taken yet merge (see OutputQueue): a consumer that falls
 * behind gets fewer, larger outputs, as vLLM's AsyncLLM gives them.
 *
 * Generated tokens are pseudo-random ids in [0, vocabSize), a function of the request's seed
 * (mixed with its prompt), or of the prompt alone without a seed, and of the output position:
 * the same request gives the same tokens whatever else is batched with it, even across
 * preemptions, and on whichever worker it runs: a decode worker continues a remote prefill
 * exactly as the prefill worker would have.
 *
 * Disaggregation (`kvTransfer`): computed tokens write a pattern into a fake KV memory (see
 * kv_memory.ts) that a transfer agent can register and move. A `holdKvForRemoteDecode`
 * request keeps its prompt blocks referenced after it finishes, until `releaseHeldKv`. A
 * `remotePrefill` request reserves its prompt's blocks, waits for `fetchKv` without taking a
 * step, checks every prompt slot against the pattern (a mismatch fails the request: the
 * transfer moved the wrong bytes), caches the blocks (BlockStored events, as if computed here)
 * and decodes on from `firstTokenId`, which counts as its first output but is not emitted
 * again: the prefill worker already returned it. A rejected fetch falls back to computing the
 * prompt here.
 */
import { performance, type EventLoopUtilization } from "node:perf_hooks";
import {
  EngineError,
  type Engine,
  type EngineKvTransfer,
  type HeldKv,
  type EngineOutput,
  type EngineRequest,
  type EngineStats,
  type FinishReason,
  type KvEvent,
  type KvEventListener,
  type TokenLogprob,
  type TopLogprob,
} from "../engine.ts";
import { BlockPool, type KvBlock } from "./block_pool.ts";
import { FakeKvMemory } from "./kv_memory.ts";
import { fmix32 } from "./mix.ts";
import { Scheduler, type StepPlan } from "./scheduler.ts";
import { Sequence } from "./sequence.ts";
import { TimingModel, type TimingConstants } from "./timing.ts";

export interface MockerEngineOptions {
  /** Tokens per KV block. */
  blockSize?: number;
  /** KV blocks in the simulated pool. */
  numGpuBlocks?: number;
  maxNumSeqs?: number;
  /** Token budget of one step (decode tokens plus prefill chunks). */
  maxNumBatchedTokens?: number;
  maxModelLen?: number;
  enablePrefixCaching?: boolean;
  /** Divides every simulated duration; 0 or Infinity runs steps back to back. */
  speedupRatio?: number;
  /**
   * Keep the simulated engine's own time instead of one step per event-loop turn: late ticks
   * catch up on the steps a real engine would have run meanwhile (see the module comment).
   * Off by default; the CLI's workers turn it on.
   */
  ownClock?: boolean;
  /** Generated ids lie in [0, vocabSize). */
  vocabSize?: number;
  /** Ids that end a request with "stop" (unless ignore_eos). */
  eosTokenIds?: number[];
  timing?: Partial<TimingConstants>;
  /**
   * Bytes of fake KV memory per block (K and V halves, a multiple of 8); what disaggregated
   * serving moves per block. Small by default, so tests stay cheap; a model-sized value (e.g.
   * 2 MiB for 16 tokens of an 8B model) makes transfer benchmarks realistic.
   */
  kvBytesPerBlock?: number;
}

/**
 * The longest an ownClock tick holds the event loop: about one decode step of the model the
 * timing model describes (decodeBaseMs), so the simulation delays its consumers' outputs and
 * I/O no more than a real engine's step would.
 */
const MAX_TICK_MS = 5;

const DEFAULTS = {
  blockSize: 16,
  numGpuBlocks: 16384,
  maxNumSeqs: 256,
  maxNumBatchedTokens: 8192,
  maxModelLen: 32768,
  enablePrefixCaching: true,
  speedupRatio: 1,
  vocabSize: 151643,
  eosTokenIds: [] as number[],
  kvBytesPerBlock: 256,
  ownClock: false,
};

interface ActiveRequest {
  seq: Sequence;
  outputs: OutputQueue;
  sampler: FakeSampler;
  detachSignal?: () => void;
  holdKvForRemoteDecode: boolean;
  /** Blocks are held, but the output that says so has not reached the consumer yet. */
  heldKvUndelivered?: boolean;
  /** Aborts the fetch of a remote prefill. */
  fetchAbort?: AbortController;
}

export class MockerEngine implements Engine {
  readonly blockSize: number;
  readonly maxModelLen: number;
  readonly numGpuBlocks: number;
  readonly kvTransfer: EngineKvTransfer;
  private readonly vocabSize: number;
  private readonly eosTokenIds: ReadonlySet<number>;
  private readonly pool: BlockPool;
  private readonly scheduler: Scheduler;
  private readonly timing: TimingModel;
  private readonly kvMemory: FakeKvMemory;
  private readonly requests = new Map<string, ActiveRequest>();
  /** Prompt blocks of finished holdKvForRemoteDecode requests, one reference each, by request id. */
  private readonly heldKv = new Map<string, KvBlock[]>();
  /** Requests aborted while fetching whose fetch has not settled: their blocks are not free yet. */
  private abandonedFetches = 0;
  private readonly listeners = new Set<KvEventListener>();
  private inFlight?: StepPlan;
  private loopActive = false;
  private timer?: NodeJS.Timeout;
  private immediate?: NodeJS.Immediate;
  /** performance.now() at which the next tick is due; steps are laid end to end from it. */
  private nextTickAtMs = 0;
  private readonly ownClock: boolean;
  /**
   * Event-loop time at the end of the last tick, whose work since is the next tick's budget;
   * unset when the engine starts from idle.
   */
  private loopMark?: EventLoopUtilization;
  private closed = false;

  constructor(options: MockerEngineOptions = {}) {
    const o = { ...DEFAULTS, ...stripUndefined(options) };
    const positiveInt = (name: string, value: number) => {
      if (!Number.isInteger(value) || value < 1) throw new Error(`mocker option ${name} must be a positive integer, got ${value}`);
    };
    positiveInt("blockSize", o.blockSize);
    positiveInt("numGpuBlocks", o.numGpuBlocks);
    positiveInt("maxNumSeqs", o.maxNumSeqs);
    positiveInt("maxNumBatchedTokens", o.maxNumBatchedTokens);
    positiveInt("maxModelLen", o.maxModelLen);
    positiveInt("vocabSize", o.vocabSize);
    this.blockSize = o.blockSize;
    this.maxModelLen = o.maxModelLen;
    this.numGpuBlocks = o.numGpuBlocks;
    this.vocabSize = o.vocabSize;
    this.eosTokenIds = new Set(o.eosTokenIds);
    this.pool = new BlockPool({ numBlocks: o.numGpuBlocks, blockSize: o.blockSize, enablePrefixCaching: o.enablePrefixCaching });
    this.scheduler = new Scheduler(this.pool, { maxNumSeqs: o.maxNumSeqs, maxNumBatchedTokens: o.maxNumBatchedTokens });
    this.timing = new TimingModel(options.timing, o.speedupRatio);
    this.ownClock = o.ownClock;
    this.kvMemory = new FakeKvMemory(o.numGpuBlocks, o.blockSize, o.kvBytesPerBlock);
    this.kvTransfer = {
      layout: () => this.kvMemory.layout(),
      releaseHeldKv: (requestId) => this.releaseHeldKv(requestId),
      heldRequests: () => [...this.heldKv.keys()],
    };
  }

  generate(request: EngineRequest, signal?: AbortSignal): AsyncIterable<EngineOutput> {
    const { requestId, promptTokenIds: prompt, sampling } = request;
    if (this.closed) throw new EngineError("unavailable", "the mocker engine is closed");
    if (prompt.length === 0) throw new EngineError("invalid_argument", `request ${requestId}: the prompt is empty`);
    if (prompt.length >= this.maxModelLen) {
      throw new EngineError(
        "invalid_argument",
        `request ${requestId}: the prompt has ${prompt.length} tokens; the context length is ${this.maxModelLen}, which leaves no room to generate`,
      );
    }
    if (this.requests.has(requestId)) throw new EngineError("invalid_argument", `request id ${requestId} is already running`);
    if (!(sampling.maxTokens >= 1)) throw new EngineError("invalid_argument", `request ${requestId}: max_tokens must be >= 1, got ${sampling.maxTokens}`);
    const maxTotalTokens = Math.min(prompt.length + sampling.maxTokens, this.maxModelLen);
    const blocksNeeded = this.scheduler.maxBlocksFor(maxTotalTokens);
    if (blocksNeeded > this.numGpuBlocks) {
      throw new EngineError(
        "resource_exhausted",
        `request ${requestId}: prompt (${prompt.length}) plus max_tokens (${sampling.maxTokens}) needs ${blocksNeeded} KV blocks of ${this.blockSize} tokens; the whole pool has ${this.numGpuBlocks}`,
      );
    }

    const holdKvForRemoteDecode = request.holdKvForRemoteDecode === true;
    if (holdKvForRemoteDecode && request.remotePrefill) {
      throw new EngineError("invalid_argument", `request ${requestId}: a request cannot both take its prefill from a remote worker and hold its KV for a remote decode`);
    }
    if (holdKvForRemoteDecode && this.heldKv.has(requestId)) {
      throw new EngineError("invalid_argument", `request id ${requestId} still holds KV blocks for a remote decode`);
    }

    const seq = new Sequence(requestId, prompt, sampling, this.blockSize);
    seq.remotePrefill = request.remotePrefill;
    const active: ActiveRequest = {
      seq,
      outputs: new OutputQueue(),
      sampler: new FakeSampler(sampling.seed, prompt, this.vocabSize),
      holdKvForRemoteDecode,
    };
    this.requests.set(requestId, active);
    this.scheduler.add(seq);
    if (signal) {
      const onAbort = () => this.abortRequest(active);
      signal.addEventListener("abort", onAbort, { once: true });
      active.detachSignal = () => signal.removeEventListener("abort", onAbort);
      if (signal.aborted) this.abortRequest(active);
    }
    this.startLoop();
    return this.stream(active);
  }

  abort(requestId: string): boolean {
    const active = this.requests.get(requestId);
    if (!active) return false;
    this.abortRequest(active);
    return true;
  }

  stats(): EngineStats {
    return {
      // A request fetching its remote prefill is admitted and holds blocks: it counts as running.
      runningRequests: this.scheduler.running.length + this.scheduler.fetching.size,
      waitingRequests: this.scheduler.waiting.length,
      kvBlocksUsed: this.pool.numUsedBlocks,
      kvBlocksTotal: this.pool.numBlocks,
      // In tokens, as vLLM reports its prefix cache hit rate.
      prefixCacheQueries: this.pool.prefixCacheQueryTokens,
      prefixCacheHits: this.pool.prefixCacheHitTokens,
      preemptions: this.scheduler.numPreemptions,
    };
  }

  onKvEvents(listener: KvEventListener): () => void {
    const wrapped: KvEventListener = (events) => listener(events);
    this.listeners.add(wrapped);
    return () => {
      this.listeners.delete(wrapped);
    };
  }

  kvSnapshot(): KvEvent[] {
    return this.pool.snapshot();
  }

  /**
   * Drops every cached block (AllBlocksCleared), as vLLM's reset_prefix_cache; refuses and
   * returns false while any request holds blocks.
   */
  resetPrefixCache(): boolean {
    const reset = this.pool.resetPrefixCache();
    this.deliverEvents();
    return reset;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const active of [...this.requests.values()]) this.abortRequest(active);
    clearTimeout(this.timer);
    clearImmediate(this.immediate);
    this.timer = this.immediate = this.inFlight = undefined;
    this.loopActive = false;
    for (const requestId of [...this.heldKv.keys()]) this.releaseHeldKv(requestId);
    this.listeners.clear();
  }

  private async *stream(active: ActiveRequest): AsyncGenerator<EngineOutput> {
    let finished = false;
    try {
      while (!finished) {
        const output = await active.outputs.next();
        finished = output.finishReason !== undefined;
        if (output.heldKv) active.heldKvUndelivered = false;
        yield output;
      }
    } finally {
      // Reached when the consumer stops early (break, return, throw).
      if (!finished && this.requests.get(active.seq.requestId) === active) this.abortRequest(active);
      // A consumer that never saw heldKv cannot release it.
      if (active.heldKvUndelivered) this.releaseHeldKv(active.seq.requestId);
    }
  }

  private abortRequest(active: ActiveRequest): void {
    if (this.requests.get(active.seq.requestId) !== active) return;
    if (active.seq.status === "fetching") {
      // onFetchSettled frees the blocks once the transfer can no longer write into them.
      this.scheduler.abandonFetch(active.seq);
      this.abandonedFetches++;
      active.fetchAbort?.abort(new EngineError("unavailable", `request ${active.seq.requestId} was aborted`));
    } else {
      this.scheduler.remove(active.seq);
    }
    this.finish(active, { tokenIds: [], finishReason: "cancelled", usage: usageOf(active.seq) });
  }

  private finish(active: ActiveRequest, output: EngineOutput): void {
    this.requests.delete(active.seq.requestId);
    active.detachSignal?.();
    active.outputs.push(output);
  }

  private startLoop(): void {
    if (this.loopActive || this.closed) return;
    this.loopActive = true;
    this.nextTickAtMs = performance.now();
    // An idle engine has nothing to catch up on: its first tick runs one step.
    this.loopMark = undefined;
    // Deferred, so requests submitted in the same turn of the event loop share the first step.
    this.immediate = setImmediate(this.tick);
  }

  private readonly tick = (): void => {
    this.timer = this.immediate = undefined;
    const startedMs = performance.now();
    let planned = this.step();
    if (this.ownClock) {
      const budgetMs = this.loopMark ? Math.min(performance.eventLoopUtilization(this.loopMark).active, MAX_TICK_MS) : 0;
      while (planned) {
        const nowMs = performance.now();
        if (this.nextTickAtMs > nowMs) break;
        if (nowMs - startedMs >= budgetMs) {
          // The share is used up: what the engine is behind is dropped, not run later in a burst.
          this.nextTickAtMs = nowMs;
          break;
        }
        planned = this.step();
      }
    }
    if (planned) {
      const delayMs = this.nextTickAtMs - performance.now();
      // Behind schedule (timers fire late, at 1 ms granularity): catch up back to back.
      if (delayMs < 1) this.immediate = setImmediate(this.tick);
      else this.timer = setTimeout(this.tick, delayMs);
    }
    if (this.ownClock) this.loopMark = performance.eventLoopUtilization();
    // Last, so a listener that throws cannot stop the loop.
    this.deliverEvents();
  };

  /**
   * Finishes the step in flight and plans the next one. Returns true when a step is in flight
   * (due at nextTickAtMs); false when the loop stopped or already queued its next turn.
   */
  private step(): boolean {
    if (this.inFlight) this.completeStep(this.inFlight);
    this.inFlight = undefined;
    const plan = this.scheduler.schedule();
    for (const seq of plan.reserved) this.startFetch(this.requests.get(seq.requestId)!);
    if (plan.scheduled.length > 0) {
      this.inFlight = plan;
      const durationMs = this.timing.simulatedMs(plan.work);
      // Steps are laid end to end; by the turn, the engine is never more than one step behind.
      const fromMs = this.ownClock ? this.nextTickAtMs : Math.max(this.nextTickAtMs, performance.now() - durationMs);
      this.nextTickAtMs = fromMs + durationMs;
      return true;
    }
    if (plan.preempted.length > 0) {
      // Everything running was preempted: admit again next tick.
      this.immediate = setImmediate(this.tick);
    } else if (this.scheduler.waiting.length > 0 && !this.blocksWillFree()) {
      this.failUnschedulable(this.scheduler.waiting[0]);
      this.immediate = setImmediate(this.tick);
    } else {
      // Idle, or waiting for blocks that a fetch or a held request frees: both restart the loop.
      this.loopActive = false;
    }
    return false;
  }

  /** The step's forward pass is done: its tokens' KV exists and the last chunk samples a token. */
  private completeStep(plan: StepPlan): void {
    for (const { seq, numNewTokens } of plan.scheduled) {
      if (seq.status !== "running") continue; // aborted while the step ran
      this.kvMemory.write(seq.blockTable, seq.tokenIds, seq.blockHashes, seq.numComputedTokens, seq.numComputedTokens + numNewTokens);
      this.scheduler.commitComputed(seq, numNewTokens);
      if (seq.numComputedTokens < seq.numTokens) continue; // a prefill chunk: no token yet
      const active = this.requests.get(seq.requestId)!;
      const position = seq.numOutputTokens;
      const tokenId = active.sampler.tokenAt(position);
      seq.appendToken(tokenId);
      const output: EngineOutput = { tokenIds: [tokenId], usage: usageOf(seq) };
      if (seq.sampling.logprobs !== undefined) {
        output.logprobs = [active.sampler.logprobsAt(position, tokenId, seq.sampling.logprobs)];
      }
      const finishReason = this.stopReason(seq);
      if (finishReason) {
        output.finishReason = finishReason;
        if (active.holdKvForRemoteDecode) {
          output.heldKv = this.holdPromptBlocks(seq);
          active.heldKvUndelivered = true;
        }
        this.scheduler.remove(seq);
        this.finish(active, output);
      } else {
        active.outputs.push(output);
      }
    }
  }

  /** Whether blocks not held by running requests will be freed later: by a fetch or a release. */
  private blocksWillFree(): boolean {
    return this.scheduler.fetching.size > 0 || this.abandonedFetches > 0 || this.heldKv.size > 0;
  }

  /** Takes a reference on the blocks of a finishing request's prompt, so they outlive it. */
  private holdPromptBlocks(seq: Sequence): HeldKv {
    const blocks = seq.blockTable.slice(0, Math.ceil(seq.numPromptTokens / this.blockSize));
    this.pool.touch(blocks);
    this.heldKv.set(seq.requestId, blocks);
    return { blockIds: blocks.map((b) => b.id), numTokens: seq.numPromptTokens };
  }

  private releaseHeldKv(requestId: string): boolean {
    const blocks = this.heldKv.get(requestId);
    if (!blocks) return false;
    this.heldKv.delete(requestId);
    this.pool.free(blocks);
    // Requests waiting for blocks may fit now.
    this.startLoop();
    return true;
  }

  private startFetch(active: ActiveRequest): void {
    const seq = active.seq;
    const remote = seq.remotePrefill!;
    const controller = new AbortController();
    active.fetchAbort = controller;
    const blocks = seq.blockTable;
    const reservation = { blockIds: blocks.map((b) => b.id), numCachedBlocks: seq.numStoredBlocks };
    let fetched: Promise<void>;
    try {
      fetched = Promise.resolve(remote.fetchKv(reservation, controller.signal));
    } catch (err) {
      fetched = Promise.reject(err);
    }
    fetched.then(
      () => this.onFetchSettled(active, blocks, true),
      () => this.onFetchSettled(active, blocks, false),
    );
  }

  private onFetchSettled(active: ActiveRequest, blocks: KvBlock[], fetched: boolean): void {
    const seq = active.seq;
    active.fetchAbort = undefined;
    if (seq.status !== "fetching") {
      // Aborted (or closed) while fetching: the reserved blocks were left for now.
      this.abandonedFetches--;
      if (!this.closed) this.pool.free(blocks);
      this.startLoop();
      return;
    }
    if (fetched) {
      const mismatch = this.kvMemory.firstMismatch(seq.blockTable, seq.tokenIds, seq.blockHashes, seq.numPromptTokens);
      if (mismatch) {
        this.scheduler.remove(seq);
        this.finish(active, {
          tokenIds: [],
          finishReason: "error",
          errorMessage:
            `request ${seq.requestId}: the KV fetched from the prefill worker is wrong: prompt block ${mismatch.blockIndex} ` +
            `(local block ${mismatch.blockId}) does not hold what computing position ${mismatch.position} gives`,
          usage: usageOf(seq),
        });
        this.deliverEvents();
        this.startLoop();
        return;
      }
    }
    const firstTokenId = seq.remotePrefill!.firstTokenId;
    this.scheduler.finishFetch(seq, fetched);
    seq.appendToken(firstTokenId);
    const finishReason = this.stopReason(seq);
    if (finishReason) {
      this.scheduler.remove(seq);
      this.finish(active, { tokenIds: [], finishReason, usage: usageOf(seq) });
    }
    this.deliverEvents();
    this.startLoop();
  }

  /** vLLM's order: length caps first, then stop ids, which min_tokens holds back. */
  private stopReason(seq: Sequence): FinishReason | undefined {
    const s = seq.sampling;
    if (seq.numTokens >= this.maxModelLen || seq.numOutputTokens >= s.maxTokens) return "length";
    if (seq.numOutputTokens < s.minTokens) return undefined;
    const last = seq.lastTokenId;
    if (!s.ignoreEos && this.eosTokenIds.has(last)) return "stop";
    if (s.stopTokenIds.includes(last)) return "stop";
    return undefined;
  }

  /**
   * Nothing runs and the head of the waiting queue still cannot be admitted: it cannot fit
   * even in an empty pool. generate() rejects such requests up front; this keeps a case it
   * missed from hanging.
   */
  private failUnschedulable(seq: Sequence): void {
    const active = this.requests.get(seq.requestId)!;
    this.scheduler.remove(seq);
    this.finish(active, {
      tokenIds: [],
      finishReason: "error",
      errorMessage: `request ${seq.requestId} needs more KV blocks than the whole pool of ${this.pool.numBlocks} holds`,
      usage: usageOf(seq),
    });
  }

  private deliverEvents(): void {
    const events = this.pool.drainEvents();
    if (events.length === 0) return;
    for (const listener of [...this.listeners]) listener(events);
  }
}

function usageOf(seq: Sequence) {
  return {
    promptTokens: seq.numPromptTokens,
    completionTokens: seq.numOutputTokens,
    cachedTokens: Math.max(seq.numCachedTokens, 0),
  };
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/**
 * A request's outputs between the step loop and its consumer. A consumer that falls behind
 * gets the outputs queued since its last read merged into one, as vLLM's AsyncLLM does
 * (RequestOutputCollector): token ids and logprobs concatenated, the latest usage and finish
 * reason kept. So a slow consumer costs one message per read rather than one per step, and the
 * queue holds at most two outputs. A cancelled or failed finish is not merged into queued
 * tokens: those still reach the consumer first, as they would have without the merge.
 */
class OutputQueue {
  private readonly queued: EngineOutput[] = [];
  private waiter?: (output: EngineOutput) => void;
  private handOffQueued = false;

  push(output: EngineOutput): void {
    const tail = this.queued.at(-1);
    if (tail && tail.finishReason === undefined && output.finishReason !== "cancelled" && output.finishReason !== "error") {
      mergeInto(tail, output);
    } else {
      this.queued.push(output);
    }
    // A waiting consumer is handed its output once the current task (a tick of several steps)
    // is over, merged with whatever else that task pushed: it could not have run earlier.
    if (this.waiter && !this.handOffQueued) {
      this.handOffQueued = true;
      queueMicrotask(this.handOff);
    }
  }

  private readonly handOff = (): void => {
    this.handOffQueued = false;
    const waiter = this.waiter;
    if (!waiter || this.queued.length === 0) return;
    this.waiter = undefined;
    waiter(this.queued.shift()!);
  };

  next(): Promise<EngineOutput> {
    const output = this.queued.shift();
    if (output) return Promise.resolve(output);
    return new Promise((resolve) => (this.waiter = resolve));
  }
}

/** Appends `later` (the next step's output of the same request) to `earlier`, in place. */
function mergeInto(earlier: EngineOutput, later: EngineOutput): void {
  for (const id of later.tokenIds) earlier.tokenIds.push(id);
  if (later.logprobs) {
    if (earlier.logprobs) for (const lp of later.logprobs) earlier.logprobs.push(lp);
    else earlier.logprobs = later.logprobs;
  }
  earlier.usage = later.usage;
  if (later.finishReason !== undefined) earlier.finishReason = later.finishReason;
  if (later.heldKv) earlier.heldKv = later.heldKv;
}

/**
 * Deterministic stand-in for sampling: every draw is a hash of (request key, output
 * position, lane), so it depends on nothing else in the batch.
 */
class FakeSampler {
  private readonly key0: number;
  private readonly key1: number;

  constructor(
    seed: bigint | undefined,
    prompt: readonly number[],
    private readonly vocabSize: number,
  ) {
    let h0 = 0x243f6a88;
    let h1 = 0x85a308d3;
    for (const t of prompt) {
      h0 = fmix32(h0 ^ t);
      h1 = fmix32(Math.imul(h1, 0x9e3779b1) ^ t);
    }
    if (seed !== undefined) {
      const s = BigInt.asUintN(64, seed);
      h0 = fmix32(h0 ^ fmix32(Number(s & 0xffffffffn)));
      h1 = fmix32(h1 ^ fmix32(Number(s >> 32n) ^ 0x13198a2e));
    }
    this.key0 = h0;
    this.key1 = h1;
  }

  tokenAt(position: number): number {
    return this.draw(position, 0) % this.vocabSize;
  }

  /**
   * Fake but consistent logprobs: the chosen token is the most likely one, with probability
   * p in [0.3, 0.9); the i-th alternative has p(1-p)^i, so the values are sorted, all <= 0, and
   * their probabilities sum to at most 1.
   */
  logprobsAt(position: number, tokenId: number, numAlternatives: number): TokenLogprob {
    const p = 0.3 + (0.6 * this.draw(position, 1)) / 2 ** 32;
    const top: TopLogprob[] = [];
    const used = new Set<number>();
    const count = Math.min(numAlternatives, this.vocabSize);
    for (let i = 0, lane = 2; i < count; i++) {
      let id = tokenId;
      if (i > 0) {
        do id = this.draw(position, lane++) % this.vocabSize;
        while (used.has(id));
      }
      used.add(id);
      top.push({ tokenId: id, logprob: Math.log(p * (1 - p) ** i) });
    }
    return { tokenId, logprob: Math.log(p), top };
  }

  private draw(position: number, lane: number): number {
    return fmix32(fmix32(this.key0 ^ Math.imul(position + 1, 0x9e3779b1)) ^ this.key1 ^ Math.imul(lane + 1, 0x7feb352d));
  }
}
