/** Discovery from a fixed list of worker URLs (--worker): each URL is followed for good. */
import type { Logger } from "../runtime/logger.ts";
import { followWorker, type FollowOptions } from "./worker_follower.ts";
import type { WorkerSink } from "./worker_selector.ts";

export class StaticWorkers {
  private readonly abort = new AbortController();
  private readonly loops: Promise<void>[];
  private readonly attempted: Promise<void>[];

  constructor(urls: string[], router: WorkerSink, log: Logger, options: FollowOptions = {}) {
    const attempted: Promise<void>[] = [];
    this.loops = urls.map((url) => {
      let tried!: () => void;
      attempted.push(new Promise<void>((resolve) => (tried = resolve)));
      return followWorker(url, router, log, this.abort.signal, { ...options, onFirstAttempt: tried });
    });
    this.attempted = attempted;
  }

  /**
   * Resolves once every worker was tried once (answered, refused or timed out), so a frontend
   * that starts serving after it does not turn away its first requests while workers that are
   * up are still being contacted.
   */
  async firstContact(): Promise<void> {
    await Promise.all(this.attempted);
  }

  async close(): Promise<void> {
    this.abort.abort();
    await Promise.all(this.loops);
  }
}
