/**
 * KV-aware routing for engines that publish no KV events (`useKvEvents: false`): the router
 * assumes that a worker caches the full blocks of every prompt it routed there, for `ttlMs`
 * after the last request that used them, and feeds that prediction into the same indexer that
 * events would feed. Routing a block again renews its expiry.
 */
import type { KvIndexer } from "./kv_indexer.ts";

interface Expiry {
  workerId: string;
  blockHash: bigint;
  expiresAtMs: number;
}

export class ApproxKvPredictor {
  /** Current expiry per worker and block. */
  private readonly expiries = new Map<string, Map<bigint, number>>();
  /**
   * Every expiry ever set, in the order set. With one TTL and a monotonic clock that is also
   * expiry order; an entry superseded by a renewal is skipped when it reaches the head.
   */
  private queue: Expiry[] = [];
  private head = 0;

  constructor(
    private readonly indexer: KvIndexer,
    private readonly ttlMs: number,
    private readonly now: () => number = Date.now,
  ) {
    if (!(ttlMs > 0)) throw new Error(`predictionTtlMs must be positive, got ${ttlMs}`);
  }

  /** The router sent a request with these full blocks to the worker. */
  recordRouted(workerId: string, blockHashes: readonly bigint[]): void {
    if (blockHashes.length === 0) return;
    const expiresAtMs = this.now() + this.ttlMs;
    let blocks = this.expiries.get(workerId);
    if (!blocks) {
      blocks = new Map();
      this.expiries.set(workerId, blocks);
    }
    for (const blockHash of blockHashes) {
      blocks.set(blockHash, expiresAtMs);
      this.queue.push({ workerId, blockHash, expiresAtMs });
    }
    this.indexer.storeBlocks(workerId, blockHashes);
  }

  /** Removes predictions whose TTL has passed; call before reading the indexer. */
  expire(): void {
    const now = this.now();
    const expired = new Map<string, bigint[]>();
    while (this.head < this.queue.length && this.queue[this.head].expiresAtMs <= now) {
      const { workerId, blockHash, expiresAtMs } = this.queue[this.head++];
      const blocks = this.expiries.get(workerId);
      if (blocks?.get(blockHash) !== expiresAtMs) continue;
      blocks.delete(blockHash);
      let hashes = expired.get(workerId);
      if (!hashes) expired.set(workerId, (hashes = []));
      hashes.push(blockHash);
    }
    for (const [workerId, hashes] of expired) this.indexer.removeBlocks(workerId, hashes);
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
  }

  /** Predicted blocks of a worker (not yet expired by `expire`). */
  predictedBlocks(workerId: string): number {
    return this.expiries.get(workerId)?.size ?? 0;
  }

  removeWorker(workerId: string): void {
    // Its queue entries no longer match any expiry and fall out as they reach the head.
    this.expiries.delete(workerId);
    this.indexer.removeWorker(workerId);
  }
}
