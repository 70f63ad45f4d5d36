/**
 * Discovery from a fixed list of worker URLs (--worker): connects to each in the background,
 * polls GetInfo to keep load figures fresh, takes a worker out of the router when it stops
 * answering and puts it back when it answers again.
 */
import { create } from "@bufbuild/protobuf";
import { GetInfoRequestSchema } from "../../gen/switchyard/worker/v1/worker_pb.ts";
import type { Logger } from "../runtime/logger.ts";
import { connectWorker, type WorkerHandle } from "./worker_handle.ts";
import type { WorkerRouter } from "./worker_router.ts";

export interface StaticWorkersOptions {
  pollIntervalMs?: number;
  timeoutMs?: number;
}

export class StaticWorkers {
  private readonly abort = new AbortController();
  private readonly loops: Promise<void>[];

  constructor(
    urls: string[],
    private readonly router: WorkerRouter,
    private readonly log: Logger,
    private readonly options: StaticWorkersOptions = {},
  ) {
    this.loops = urls.map((url) => this.follow(url));
  }

  async close(): Promise<void> {
    this.abort.abort();
    await Promise.all(this.loops);
  }

  private async follow(url: string): Promise<void> {
    const pollMs = this.options.pollIntervalMs ?? 2000;
    const timeoutMs = this.options.timeoutMs ?? 5000;
    let worker: WorkerHandle | undefined;
    let warned = false;
    while (!this.abort.signal.aborted) {
      try {
        if (!worker) {
          worker = await connectWorker(url, timeoutMs);
          this.router.addWorker(worker);
          this.log.info(`worker ${worker.id} at ${url} serves '${worker.info.model}'`);
          warned = false;
        } else {
          const info = await worker.client.getInfo(create(GetInfoRequestSchema, {}), { timeoutMs, signal: this.abort.signal });
          worker.info = info;
        }
      } catch (err) {
        if (this.abort.signal.aborted) break;
        if (worker) {
          this.log.warn(`worker ${worker.id} at ${url} stopped answering; routing around it`, err);
          this.router.removeWorker(worker.id);
          worker = undefined;
        } else if (!warned) {
          this.log.warn(`worker at ${url} is not reachable yet; retrying`, err);
          warned = true;
        }
      }
      await sleep(pollMs, this.abort.signal);
    }
    if (worker) this.router.removeWorker(worker.id);
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}
