/** Discovery from a fixed list of worker URLs (--worker): each URL is followed for good. */
import type { Logger } from "../runtime/logger.ts";
import { followWorker, type FollowOptions } from "./worker_follower.ts";
import type { WorkerSink } from "./worker_selector.ts";

export class StaticWorkers {
  private readonly abort = new AbortController();
  private readonly loops: Promise<void>[];

  constructor(urls: string[], router: WorkerSink, log: Logger, options: FollowOptions = {}) {
    this.loops = urls.map((url) => followWorker(url, router, log, this.abort.signal, options));
  }

  async close(): Promise<void> {
    this.abort.abort();
    await Promise.all(this.loops);
  }
}
