/**
 * The router's view of every worker's KV cache, fed by KV event batches from any source: the
 * per-worker Connect KvEvents stream (kv_event_subscriber.ts) today, NATS subjects later, or
 * the router's own predictions when workers publish nothing (approx_predictor.ts).
 *
 * Each worker's batches carry sequence numbers increasing by one. A batch that is not the next
 * one means events were lost, so the worker's entries can no longer be trusted: they are
 * dropped and the source must resubscribe; batches are then ignored until a snapshot (a batch
 * that opens with AllBlocksCleared, or one the source marks as the stream's snapshot) gives a
 * new baseline.
 */
import type { KvEventBatch } from "../../../gen/switchyard/worker/v1/worker_pb.ts";
import { PrefixTree } from "./prefix_tree.ts";

/**
 * What became of a batch: applied; `stale` (a sequence already applied, e.g. redelivered);
 * `awaiting_snapshot` (ignored until the source resubscribes); `gap` (events were lost: the
 * worker's entries were dropped and the source must resubscribe).
 */
export type ApplyOutcome = "applied" | "stale" | "awaiting_snapshot" | "gap";

interface WorkerEntry {
  slot: number;
  /** Sequence of the last applied batch; undefined until a snapshot arrives. */
  lastSequence?: bigint;
}

export class KvIndexer {
  readonly tree = new PrefixTree();
  private readonly workers = new Map<string, WorkerEntry>();
  private readonly slotOwners: (string | undefined)[] = [];

  /**
   * Applies one batch of a worker's events. `snapshot` marks the first batch of a fresh
   * subscription, which replaces whatever was known of the worker.
   */
  applyEvents(workerId: string, batch: KvEventBatch, options: { snapshot?: boolean } = {}): ApplyOutcome {
    const worker = this.entry(workerId);
    const opensWithClear = batch.events[0]?.event.case === "allBlocksCleared";
    if (options.snapshot || opensWithClear) {
      this.tree.clear(worker.slot);
    } else if (worker.lastSequence === undefined) {
      return "awaiting_snapshot";
    } else if (batch.sequence <= worker.lastSequence) {
      return "stale";
    } else if (batch.sequence !== worker.lastSequence + 1n) {
      this.resetWorker(workerId);
      return "gap";
    }
    worker.lastSequence = batch.sequence;
    for (const { event } of batch.events) {
      switch (event.case) {
        case "blockStored":
          this.tree.store(worker.slot, event.value.blockHashes);
          break;
        case "blockRemoved":
          this.tree.remove(worker.slot, event.value.blockHashes);
          break;
        case "allBlocksCleared":
          this.tree.clear(worker.slot);
          break;
      }
    }
    return "applied";
  }

  /** Drops a worker's entries and waits for a snapshot (on a gap, disconnect or resubscribe). */
  resetWorker(workerId: string): void {
    const worker = this.workers.get(workerId);
    if (!worker) return;
    this.tree.clear(worker.slot);
    worker.lastSequence = undefined;
  }

  /** Records blocks directly, outside any event stream (the no-events predictor). */
  storeBlocks(workerId: string, blockHashes: readonly bigint[]): void {
    this.tree.store(this.entry(workerId).slot, blockHashes);
  }

  removeBlocks(workerId: string, blockHashes: readonly bigint[]): void {
    const worker = this.workers.get(workerId);
    if (worker) this.tree.remove(worker.slot, blockHashes);
  }

  /** Forgets a worker that left; its slot is reused. */
  removeWorker(workerId: string): void {
    const worker = this.workers.get(workerId);
    if (!worker) return;
    this.tree.clear(worker.slot);
    this.workers.delete(workerId);
    this.slotOwners[worker.slot] = undefined;
  }

  /** Matched leading blocks per worker; workers without block 0 are absent. */
  findMatches(blockHashes: readonly bigint[]): Map<string, number> {
    const overlaps = new Map<string, number>();
    this.tree.match(blockHashes, (slot, blocks) => overlaps.set(this.slotOwners[slot]!, blocks));
    return overlaps;
  }

  blockCount(workerId: string): number {
    const worker = this.workers.get(workerId);
    return worker ? this.tree.blockCount(worker.slot) : 0;
  }

  workerIds(): string[] {
    return [...this.workers.keys()];
  }

  /** Whether the worker's entries are live (a snapshot arrived and no gap since). */
  isSynced(workerId: string): boolean {
    return this.workers.get(workerId)?.lastSequence !== undefined;
  }

  private entry(workerId: string): WorkerEntry {
    let worker = this.workers.get(workerId);
    if (!worker) {
      let slot = this.slotOwners.indexOf(undefined);
      if (slot < 0) slot = this.slotOwners.length;
      this.slotOwners[slot] = workerId;
      worker = { slot };
      this.workers.set(workerId, worker);
    }
    return worker;
  }
}
