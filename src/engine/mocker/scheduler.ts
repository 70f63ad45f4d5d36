/**
 * Continuous batching with chunked prefill, after vLLM v1's scheduler. Each step gets a budget
 * of `maxNumBatchedTokens` tokens whose KV it computes:
 *
 * 1. Running requests that decode get one token each, then running requests in the middle of
 *    a chunked prefill get as much of the rest of their prompt as the budget leaves.
 *    A request that needs a block when none is free preempts the newest running request
 *    (possibly itself): its blocks are freed (its full blocks stay cached) and it goes back to
 *    the front of the waiting queue, to be recomputed from its prompt and outputs later.
 * 2. If nothing was preempted, waiting requests are admitted first come first served while
 *    fewer than `maxNumSeqs` run and budget is left: the prefix cache supplies the longest run
 *    of cached full blocks (never the whole prompt: the last token is always computed, it
 *    gives the logits), the rest is a prefill chunk. A request that does not fit in the free
 *    blocks stops admission (head-of-line, as in vLLM).
 *
 * The engine runs the step, then reports the computed tokens back through `commitComputed`,
 * which caches the blocks that became full.
 *
 * A request whose prompt a prefill worker computed (`remotePrefill`) is admitted differently:
 * it gets blocks for its whole prompt at once (its own prefix-cache hits first, the whole
 * prompt may hit since nothing is computed here) and waits in `fetching`, taking no step and
 * no budget but a seat among `maxNumSeqs`, until the engine reports the fetch's outcome
 * through `finishFetch`. A fetching request is never preempted: its blocks are being written.
 */
import type { BlockPool, KvBlock } from "./block_pool.ts";
import type { Sequence } from "./sequence.ts";
import type { StepWork } from "./timing.ts";

export interface SchedulerConfig {
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
}

export interface ScheduledChunk {
  seq: Sequence;
  /** Tokens whose KV this step computes for the request. */
  numNewTokens: number;
}

export interface StepPlan {
  scheduled: ScheduledChunk[];
  /** Requests preempted while planning this step. */
  preempted: Sequence[];
  /** Remote-prefill requests admitted while planning this step: their fetches start now. */
  reserved: Sequence[];
  work: StepWork;
}

export class Scheduler {
  /** Front is next to be admitted. */
  readonly waiting: Sequence[] = [];
  /** In admission order; the last one is the newest, the first to be preempted. */
  readonly running: Sequence[] = [];
  /** Remote-prefill requests holding reserved blocks while their KV arrives. */
  readonly fetching = new Set<Sequence>();
  numPreemptions = 0;

  constructor(
    private readonly pool: BlockPool,
    private readonly config: SchedulerConfig,
  ) {
    if (!(config.maxNumSeqs >= 1)) throw new Error(`maxNumSeqs must be >= 1, got ${config.maxNumSeqs}`);
    if (!(config.maxNumBatchedTokens >= 1)) throw new Error(`maxNumBatchedTokens must be >= 1, got ${config.maxNumBatchedTokens}`);
  }

  get hasWork(): boolean {
    return this.waiting.length > 0 || this.running.length > 0 || this.fetching.size > 0;
  }

  add(seq: Sequence): void {
    seq.status = "waiting";
    this.waiting.push(seq);
  }

  /** Blocks a request needs at most: KV for every token but the last one it will sample. */
  maxBlocksFor(numTokensAtMost: number): number {
    return Math.ceil(Math.max(numTokensAtMost - 1, 1) / this.pool.blockSize);
  }

  schedule(): StepPlan {
    let budget = this.config.maxNumBatchedTokens;
    const plan = new Map<Sequence, number>();
    const preempted: Sequence[] = [];
    const reserved: Sequence[] = [];

    const decoding = this.running.filter((s) => !s.isPrefilling);
    const prefilling = this.running.filter((s) => s.isPrefilling);
    for (const seq of [...decoding, ...prefilling]) {
      if (budget === 0) break;
      if (seq.status !== "running") continue; // preempted earlier in this loop
      const numNew = Math.min(seq.numTokens - seq.numComputedTokens, budget);
      while (!this.allocateSlots(seq, numNew)) {
        const victim = this.running[this.running.length - 1];
        const refund = plan.get(victim);
        if (refund !== undefined) {
          plan.delete(victim);
          budget += refund;
        }
        this.preempt(victim);
        preempted.push(victim);
        if (victim === seq) break;
      }
      if (seq.status !== "running") continue;
      plan.set(seq, numNew);
      budget -= numNew;
    }

    if (preempted.length === 0) {
      while (this.waiting.length > 0 && budget > 0 && this.running.length + this.fetching.size < this.config.maxNumSeqs) {
        const seq = this.waiting[0];
        if (seq.remotePrefill) {
          if (!this.reserve(seq)) break;
          this.waiting.shift();
          this.fetching.add(seq);
          seq.status = "fetching";
          reserved.push(seq);
          continue;
        }
        const numNew = this.admit(seq, budget);
        if (numNew === 0) break;
        this.waiting.shift();
        this.running.push(seq);
        seq.status = "running";
        plan.set(seq, numNew);
        budget -= numNew;
      }
    }

    const work: StepWork = { prefillTokens: 0, decodeSeqs: 0, decodeContextTokens: 0 };
    const scheduled: ScheduledChunk[] = [];
    for (const [seq, numNewTokens] of plan) {
      scheduled.push({ seq, numNewTokens });
      if (seq.isPrefilling) {
        work.prefillTokens += numNewTokens;
      } else {
        work.decodeSeqs++;
        work.decodeContextTokens += seq.numComputedTokens + numNewTokens;
      }
    }
    return { scheduled, preempted, reserved, work };
  }

  /** Records that the step computed `numNewTokens` more tokens of `seq`; caches blocks that filled. */
  commitComputed(seq: Sequence, numNewTokens: number): void {
    seq.numComputedTokens += numNewTokens;
    const bs = this.pool.blockSize;
    const full = Math.floor(seq.numComputedTokens / bs);
    const stored = seq.numStoredBlocks;
    if (full <= stored) return;
    this.pool.cacheFullBlocks(
      seq.blockTable.slice(stored, full),
      seq.blockHashes.slice(stored, full),
      stored === 0 ? undefined : seq.blockHashes[stored - 1],
      seq.tokenIds.slice(stored * bs, full * bs),
    );
    seq.numStoredBlocks = full;
  }

  /**
   * A fetch ended. Fetched: the prompt's KV is in the reserved blocks, which are cached as if
   * computed here, and the request runs (it decodes next). Not fetched: the reservation is
   * dropped and the request waits at the front of the queue to compute everything itself, as a
   * preempted request would.
   */
  finishFetch(seq: Sequence, fetched: boolean): void {
    this.fetching.delete(seq);
    seq.remotePrefill = undefined;
    if (fetched) {
      this.commitComputed(seq, seq.numPromptTokens - seq.numComputedTokens);
      seq.status = "running";
      this.running.push(seq);
    } else {
      this.pool.free(seq.blockTable);
      seq.resetComputed();
      seq.status = "waiting";
      this.waiting.unshift(seq);
    }
  }

  /**
   * Takes a request aborted while fetching out of `fetching` without freeing its blocks, which
   * the transfer may still be writing; returns them for the caller to free once it has stopped.
   */
  abandonFetch(seq: Sequence): KvBlock[] {
    const blocks = seq.blockTable;
    this.fetching.delete(seq);
    seq.resetComputed();
    seq.status = "finished";
    return blocks;
  }

  /** Takes a finished or aborted request out of the queues and frees its blocks. */
  remove(seq: Sequence): void {
    const queue = seq.status === "running" ? this.running : this.waiting;
    const i = queue.indexOf(seq);
    if (i >= 0) queue.splice(i, 1);
    this.fetching.delete(seq);
    this.pool.free(seq.blockTable);
    seq.resetComputed();
    seq.status = "finished";
  }

  /**
   * Gives a waiting request its prefix hit and the blocks for its first chunk; returns the
   * chunk's length, or 0 when the free blocks cannot hold it.
   */
  private admit(seq: Sequence, budget: number): number {
    const bs = this.pool.blockSize;
    // The last token is always computed, so at most (numTokens - 1) tokens come from the cache.
    const cacheable = seq.blockHashes.slice(0, Math.floor((seq.numTokens - 1) / bs));
    const hit = this.pool.longestCachedPrefix(cacheable);
    const numNew = Math.min(seq.numTokens - hit.length * bs, budget);
    return this.takeBlocks(seq, hit, hit.length * bs + numNew) ? numNew : 0;
  }

  /**
   * Reserves blocks for a remote-prefill request's whole prompt, its own cached prefix first
   * (all of it may hit: nothing is computed here); false when the free blocks cannot hold the rest.
   */
  private reserve(seq: Sequence): boolean {
    return this.takeBlocks(seq, this.pool.longestCachedPrefix(seq.blockHashes), seq.numTokens);
  }

  /**
   * Gives a request the prefix-hit blocks `hit` plus fresh blocks up to `numTokens` tokens,
   * counting the hit as computed; false (taking nothing) when the free blocks cannot hold them.
   */
  private takeBlocks(seq: Sequence, hit: KvBlock[], numTokens: number): boolean {
    const hitTokens = hit.length * this.pool.blockSize;
    const needed = Math.ceil(numTokens / this.pool.blockSize) - hit.length;
    if (this.pool.numFreeBlocks - this.pool.countFree(hit) < needed) return false;
    this.pool.touch(hit);
    seq.blockTable = [...hit, ...this.pool.allocate(needed)];
    seq.numComputedTokens = hitTokens;
    seq.numStoredBlocks = hit.length;
    if (this.pool.enablePrefixCaching) this.pool.recordPrefixLookup(seq.numTokens, hitTokens);
    if (seq.numCachedTokens < 0) seq.numCachedTokens = hitTokens;
    return true;
  }

  /** Grows the block table to hold `numNewTokens` more computed tokens; false when blocks ran out. */
  private allocateSlots(seq: Sequence, numNewTokens: number): boolean {
    const needed = Math.ceil((seq.numComputedTokens + numNewTokens) / this.pool.blockSize) - seq.blockTable.length;
    if (needed <= 0) return true;
    if (needed > this.pool.numFreeBlocks) return false;
    seq.blockTable.push(...this.pool.allocate(needed));
    return true;
  }

  private preempt(seq: Sequence): void {
    this.running.splice(this.running.indexOf(seq), 1);
    this.pool.free(seq.blockTable);
    seq.resetComputed();
    seq.status = "waiting";
    seq.numPreemptions++;
    this.numPreemptions++;
    this.waiting.unshift(seq);
  }
}
