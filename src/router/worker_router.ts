/**
 * The Router the frontend uses: keeps the set of live workers per model, asks a WorkerSelector
 * for one per request, and relays that worker's Generate stream. Workers come from a static
 * list (--worker URLs), the in-process `serve`, or discovery; all feed addWorker/removeWorker.
 */
import type { GenerateRequest, GenerateResponse } from "../../gen/switchyard/worker/v1/worker_pb.ts";
import { RouterError, type ModelCard, type Router } from "./router.ts";
import type { WorkerHandle } from "./worker_handle.ts";
import type { WorkerSelector } from "./worker_selector.ts";

export class WorkerRouter implements Router {
  private readonly workers = new Map<string, WorkerHandle>();
  /** Tokenizer and limits per served model name; a worker of an unknown model is refused. */
  private readonly modelCards = new Map<string, ModelCard>();

  constructor(modelCards: Iterable<ModelCard>, private readonly selector: WorkerSelector) {
    for (const card of modelCards) this.modelCards.set(card.name, card);
  }

  /** Learns a model from discovery; a card given at start-up (--model) takes precedence. */
  addModelCard(card: ModelCard): void {
    if (!this.modelCards.has(card.name)) this.modelCards.set(card.name, card);
  }

  addWorker(worker: WorkerHandle): void {
    const model = worker.info.model;
    if (!this.modelCards.has(model)) {
      throw new Error(`worker ${worker.id} at ${worker.url} serves model '${model}', which this frontend has no model card for (served: ${[...this.modelCards.keys()].join(", ")})`);
    }
    this.workers.set(worker.id, worker);
    this.selector.workerAdded?.(worker);
  }

  removeWorker(workerId: string): void {
    if (this.workers.delete(workerId)) this.selector.workerRemoved?.(workerId);
  }

  liveWorkers(): WorkerHandle[] {
    return [...this.workers.values()];
  }

  models(): ModelCard[] {
    const served = new Set([...this.workers.values()].map((w) => w.info.model));
    return [...this.modelCards.values()].filter((card) => served.has(card.name));
  }

  async *generate(request: GenerateRequest, signal: AbortSignal): AsyncIterable<GenerateResponse> {
    const candidates = [...this.workers.values()].filter((w) => w.info.model === request.model);
    if (candidates.length === 0) {
      if (!this.modelCards.has(request.model)) throw new RouterError("unknown_model", `model '${request.model}' does not exist`);
      throw new RouterError("no_workers", `no live worker serves model '${request.model}'`, 1);
    }
    const { worker } = this.selector.select({ requestId: request.requestId, tokenIds: request.tokenIds }, candidates);
    worker.inFlight++;
    try {
      yield* worker.client.generate(request, { signal });
    } finally {
      worker.inFlight--;
      this.selector.requestFinished?.(request.requestId, worker);
    }
  }

  async close(): Promise<void> {
    await this.selector.close?.();
    this.workers.clear();
  }
}
