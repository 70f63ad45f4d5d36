/**
 * How the router chooses among live workers of a model. Selectors see the candidates (already
 * filtered to the request's model) and the request's tokens; they never talk to workers
 * themselves, except a KV-aware selector that follows their KV events.
 */
import type { WorkerHandle } from "./worker_handle.ts";

export interface SelectionRequest {
  requestId: string;
  tokenIds: readonly number[];
}

export interface Selection {
  worker: WorkerHandle;
  /** Why this worker, for logs and metrics (e.g. "round_robin", "kv_overlap"). */
  reason: string;
  /** Prompt blocks the selector believes are cached on the chosen worker. */
  overlapBlocks?: number;
}

export interface WorkerSelector {
  /** Throws RouterError("all_busy") when every candidate is over its busy threshold. */
  select(request: SelectionRequest, candidates: readonly WorkerHandle[]): Selection;
  workerAdded?(worker: WorkerHandle): void;
  workerRemoved?(workerId: string): void;
  /** The request left the worker (finished, failed or cancelled). */
  requestFinished?(requestId: string, worker: WorkerHandle): void;
  close?(): Promise<void>;
}

export class RoundRobinSelector implements WorkerSelector {
  private next = 0;
  select(_request: SelectionRequest, candidates: readonly WorkerHandle[]): Selection {
    const worker = candidates[this.next++ % candidates.length];
    return { worker, reason: "round_robin" };
  }
}

export class RandomSelector implements WorkerSelector {
  select(_request: SelectionRequest, candidates: readonly WorkerHandle[]): Selection {
    const worker = candidates[Math.floor(Math.random() * candidates.length)];
    return { worker, reason: "random" };
  }
}
