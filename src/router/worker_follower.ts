/**
 * Keeps one worker URL in the router while it answers: connects in the background, polls
 * GetInfo to keep load figures fresh, takes the worker out of rotation when it stops answering
 * and puts it back when it answers again. Static --worker lists and NATS discovery both use it.
 */
import { create } from "@bufbuild/protobuf";
import { GetInfoRequestSchema, ServingStatus } from "../../gen/switchyard/worker/v1/worker_pb.ts";
import type { Logger } from "../runtime/logger.ts";
import { connectWorker, type WorkerHandle } from "./worker_handle.ts";
import type { WorkerSink } from "./worker_selector.ts";
import { sleep } from "../util/sleep.ts";

export interface FollowOptions {
  pollIntervalMs?: number;
  timeoutMs?: number;
  /** Called once, after the first attempt to reach the worker, whether or not it answered. */
  onFirstAttempt?: () => void;
}

/** Runs until `signal` aborts; the worker is removed from the router on the way out. */
export async function followWorker(url: string, router: WorkerSink, log: Logger, signal: AbortSignal, options: FollowOptions = {}): Promise<void> {
  const pollMs = options.pollIntervalMs ?? 2000;
  const timeoutMs = options.timeoutMs ?? 5000;
  let worker: WorkerHandle | undefined;
  let warned = false;
  let firstAttempt = options.onFirstAttempt;
  while (!signal.aborted) {
    try {
      if (!worker) {
        const candidate = await connectWorker(url, timeoutMs);
        if (signal.aborted) break;
        if (candidate.info.status !== ServingStatus.NOT_SERVING) {
          worker = candidate;
          router.addWorker(worker);
          log.info(`worker ${worker.id} at ${url} serves '${worker.info.model}'`);
          warned = false;
        }
      } else {
        worker.info = await worker.client.getInfo(create(GetInfoRequestSchema, {}), { timeoutMs, signal });
        if (worker.info.status === ServingStatus.NOT_SERVING) {
          log.info(`worker ${worker.id} at ${url} is not serving (draining); routing around it`);
          router.removeWorker(worker.id);
          worker = undefined;
        }
      }
    } catch (err) {
      if (signal.aborted) break;
      if (worker) {
        log.warn(`worker ${worker.id} at ${url} stopped answering; routing around it`, err);
        router.removeWorker(worker.id);
        worker = undefined;
      } else if (!warned) {
        log.warn(`worker at ${url} is not reachable yet; retrying`, err);
        warned = true;
      }
    }
    firstAttempt?.();
    firstAttempt = undefined;
    await sleep(pollMs, signal);
  }
  firstAttempt?.();
  if (worker) router.removeWorker(worker.id);
}
