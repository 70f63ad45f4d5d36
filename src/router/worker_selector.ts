/** Where discovery puts the workers it finds: a WorkerRouter, or a standalone SharedRouter. */
export interface WorkerSink {
  addWorker(worker: WorkerHandle): void;
  removeWorker(workerId: string): void;
  /** Learns a model announced by discovery (a frontend needs its tokenizer). */
  addModelCard?(card: ModelCard): void;
}

/**
 * How the router chooses among live workers of a model. Selectors see the candidates (already
 * filtered to the request's model) and the request's tokens; they never talk to workers
 * themselves, except a KV-aware selector that follows their KV events.
 */
import type { ModelCard } from "./router.ts";
import type { WorkerHandle } from "./worker_handle.ts";

export interface SelectionRequest {
  requestId: string;
  tokenIds: readonly number[];
  /** The served model; a remote router service needs it, local selectors see filtered candidates. */
  model?: string;
}

export interface Selection {
  worker: WorkerHandle;
  /** Why this worker, for logs and metrics (e.g. "round_robin", "kv_overlap"). */
  reason: string;
  /** Prompt blocks the selector believes are cached on the chosen worker. */
  overlapBlocks?: number;
}

export interface WorkerSelector {
  /**
   * Throws RouterError("all_busy") when every candidate is over its busy threshold. May answer
   * asynchronously (a selector that asks a remote router service does).
   */
  select(request: SelectionRequest, candidates: readonly WorkerHandle[]): Selection | Promise<Selection>;
  workerAdded?(worker: WorkerHandle): void;
  workerRemoved?(workerId: string): void;
  /** The request left the worker (finished, failed or cancelled). */
  requestFinished?(requestId: string, worker: WorkerHandle): void;
  close?(): Promise<void>;
}

/** A selector that answers at once: what a shared router service can consult. */
export interface SyncWorkerSelector extends WorkerSelector {
  select(request: SelectionRequest, candidates: readonly WorkerHandle[]): Selection;
}

export class RoundRobinSelector implements SyncWorkerSelector {
  private next = 0;
  select(_request: SelectionRequest, candidates: readonly WorkerHandle[]): Selection {
    const worker = candidates[this.next++ % candidates.length];
    return { worker, reason: "round_robin" };
  }
}

export class RandomSelector implements SyncWorkerSelector {
  select(_request: SelectionRequest, candidates: readonly WorkerHandle[]): Selection {
    const worker = candidates[Math.floor(Math.random() * candidates.length)];
    return { worker, reason: "random" };
  }
}
