/**
 * The state behind a standalone router service: the live workers (fed by discovery through
 * addWorker/removeWorker, as WorkerRouter is) and a selector that several frontends consult
 * for each request, so they share one view of the workers' caches and of requests in flight.
 *
 * A frontend that dies without reporting its requests finished would leave them counted as
 * load forever; a request still running after `requestLeaseMs` is therefore taken as finished.
 */
import { RouterError } from "../router.ts";
import type { WorkerHandle } from "../worker_handle.ts";
import type { Selection, SyncWorkerSelector } from "../worker_selector.ts";

export interface SharedRouterOptions {
  /** How long a request may run before it is counted as finished anyway (default 10 min). */
  requestLeaseMs?: number;
  now?: () => number;
}

interface RunningRequest {
  worker: WorkerHandle;
  startedAtMs: number;
}

export class SharedRouter {
  private readonly workers = new Map<string, WorkerHandle>();
  /** In routing order, so the oldest leases come first. */
  private readonly running = new Map<string, RunningRequest>();
  private readonly requestLeaseMs: number;
  private readonly now: () => number;

  constructor(
    readonly selector: SyncWorkerSelector,
    options: SharedRouterOptions = {},
  ) {
    this.requestLeaseMs = options.requestLeaseMs ?? 600_000;
    this.now = options.now ?? Date.now;
  }

  addWorker(worker: WorkerHandle): void {
    this.workers.set(worker.id, worker);
    this.selector.workerAdded?.(worker);
  }

  removeWorker(workerId: string): void {
    if (!this.workers.delete(workerId)) return;
    for (const [requestId, request] of this.running) if (request.worker.id === workerId) this.running.delete(requestId);
    this.selector.workerRemoved?.(workerId);
  }

  liveWorkers(): WorkerHandle[] {
    return [...this.workers.values()];
  }

  isRunning(requestId: string): boolean {
    return this.running.has(requestId);
  }

  /** Picks a worker and counts the request as running there. Throws RouterError. */
  findBestWorker(request: { requestId: string; tokenIds: readonly number[]; model: string; candidateWorkerIds?: readonly string[] }): Selection {
    this.expireLeases();
    const allowed = request.candidateWorkerIds?.length ? new Set(request.candidateWorkerIds) : undefined;
    const ofModel = [...this.workers.values()].filter((w) => request.model === "" || w.info.model === request.model);
    const candidates = allowed ? ofModel.filter((w) => allowed.has(w.id)) : ofModel;
    if (candidates.length === 0) {
      if (ofModel.length > 0) throw new RouterError("no_workers", `none of the candidate workers (${[...allowed!].join(", ")}) is live`, 1);
      if (this.workers.size > 0) throw new RouterError("unknown_model", `no worker serves model '${request.model}'`);
      throw new RouterError("no_workers", "no live worker", 1);
    }
    const selection = this.selector.select({ requestId: request.requestId, tokenIds: request.tokenIds }, candidates);
    this.running.set(request.requestId, { worker: selection.worker, startedAtMs: this.now() });
    return selection;
  }

  /** False when no running request has that id. */
  markFinished(requestId: string): boolean {
    const request = this.running.get(requestId);
    if (!request) return false;
    this.running.delete(requestId);
    this.selector.requestFinished?.(requestId, request.worker);
    return true;
  }

  async close(): Promise<void> {
    await this.selector.close?.();
    this.workers.clear();
    this.running.clear();
  }

  private expireLeases(): void {
    const oldest = this.now() - this.requestLeaseMs;
    for (const [requestId, request] of this.running) {
      if (request.startedAtMs > oldest) break;
      this.markFinished(requestId);
    }
  }
}
