/**
 * Prefill side: the requests whose KV blocks this worker keeps for a decode worker to read,
 * and the one reason each is freed (see ReleaseReason). Every hold has a deadline, so blocks
 * a decode never reads (the router gave up, the decode worker died) come back on their own.
 */
import type { EngineKvTransfer } from "../../engine/engine.ts";
import type { Logger } from "../../runtime/logger.ts";
import type { KvTransferEvents, ReleaseReason } from "./transfer_events.ts";

export class HeldKvRegistry {
  private readonly deadlines = new Map<string, NodeJS.Timeout>();
  private emptyWaiters: (() => void)[] = [];

  constructor(
    private readonly engineKv: EngineKvTransfer,
    private readonly timeoutMs: number,
    private readonly events: KvTransferEvents,
    private readonly log: Logger,
  ) {}

  get size(): number {
    return this.deadlines.size;
  }

  /** Starts the deadline of blocks the engine now holds for `requestId`. */
  hold(requestId: string, numBlocks: number): void {
    clearTimeout(this.deadlines.get(requestId));
    const timer = setTimeout(() => {
      this.log.warn(
        `request ${requestId}: no decode worker read its ${numBlocks} held KV blocks within ${this.timeoutMs / 1000} s; freeing them`,
      );
      this.release(requestId, "timeout");
    }, this.timeoutMs);
    // A pending deadline alone does not keep the process alive.
    timer.unref();
    this.deadlines.set(requestId, timer);
  }

  /** Frees the blocks held for `requestId`; false when none are (never held, or already freed). */
  release(requestId: string, reason: ReleaseReason): boolean {
    const timer = this.deadlines.get(requestId);
    if (timer === undefined) return false;
    clearTimeout(timer);
    this.deadlines.delete(requestId);
    this.engineKv.releaseHeldKv(requestId);
    this.events.emit({ type: "released", reason });
    if (this.deadlines.size === 0) for (const wake of this.emptyWaiters.splice(0)) wake();
    return true;
  }

  releaseAll(reason: ReleaseReason): void {
    for (const requestId of [...this.deadlines.keys()]) this.release(requestId, reason);
  }

  /** Resolves once nothing is held, or after `timeoutMs`, whichever comes first. */
  async whenEmpty(timeoutMs: number): Promise<void> {
    if (this.deadlines.size === 0 || timeoutMs <= 0) return;
    await new Promise<void>((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        this.emptyWaiters = this.emptyWaiters.filter((w) => w !== wake);
        resolve();
      }, timeoutMs);
      this.emptyWaiters.push(wake);
    });
  }
}
