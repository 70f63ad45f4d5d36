/**
 * The Router the frontend uses: keeps the set of live workers per model, asks a WorkerSelector
 * for one per request, and relays that worker's Generate stream. Workers come from a static
 * list (--worker URLs), the in-process `serve`, or discovery; all feed addWorker/removeWorker.
 *
 * Migration: when a worker's stream breaks mid-request (process killed, connection lost), the
 * request is sent again to another worker as prompt + the tokens generated so far, with the
 * token budget reduced by as much, up to `migrationLimit` times. The caller sees one stream:
 * usage is rewritten to count against the original prompt.
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  CancelRequestSchema,
  FinishReason,
  GenerateRequestSchema,
  GenerateResponseSchema,
  type GenerateRequest,
  type GenerateResponse,
} from "../../gen/switchyard/worker/v1/worker_pb.ts";
import type { Logger } from "../runtime/logger.ts";
import { RouterError, type InstanceInfo, type ModelCard, type Router } from "./router.ts";
import type { WorkerHandle } from "./worker_handle.ts";
import { decidePrefillPlace, type PrefillPolicyOptions } from "./disagg/prefill_policy.ts";
import { decodeRequest, runRemotePrefill, shouldPrefillLocallyAfter, type PrefillResult } from "./disagg/remote_prefill.ts";
import type { Selection, WorkerSelector, WorkerSink } from "./worker_selector.ts";

export interface WorkerRouterOptions {
  /** Times one request may move to another worker after its stream broke (0: never). */
  migrationLimit?: number;
  /** Conditional disaggregation, when prefill workers are present (default: always remote). */
  prefillPolicy?: Partial<PrefillPolicyOptions>;
  log?: Logger;
}

/**
 * Codes that say the worker or the connection failed, not the request. Canceled is among them
 * because a worker that dies resets its HTTP/2 streams with CANCEL; a cancellation of our own
 * (the client left) is recognised by our signal instead.
 */
const MIGRATABLE = new Set([Code.Unavailable, Code.Internal, Code.Unknown, Code.Aborted, Code.DeadlineExceeded, Code.Canceled]);

export class StreamBrokenError extends Error {
  constructor(workerId: string, what = "closed the stream") {
    super(`worker ${workerId} ${what} before the request finished`);
    this.name = "StreamBrokenError";
  }
}

export class WorkerRouter implements Router, WorkerSink {
  private readonly workers = new Map<string, WorkerHandle>();
  /** Tokenizer and limits per served model name; a worker of an unknown model is refused. */
  private readonly modelCards = new Map<string, ModelCard>();
  private readonly migrationLimit: number;

  constructor(modelCards: Iterable<ModelCard>, private readonly selector: WorkerSelector, private readonly options: WorkerRouterOptions = {}) {
    for (const card of modelCards) this.modelCards.set(card.name, card);
    this.migrationLimit = options.migrationLimit ?? 0;
    this.prefillPolicy = { maxLocalPrefillLength: 0, maxPrefillQueueSize: 0, ...options.prefillPolicy };
  }

  private readonly prefillPolicy: PrefillPolicyOptions;

  private readonly modelCardListeners: ((card: ModelCard) => void)[] = [];

  /** Learns a model from discovery; a card given at start-up (--model) takes precedence. */
  addModelCard(card: ModelCard): void {
    if (this.modelCards.has(card.name)) return;
    this.modelCards.set(card.name, card);
    for (const listener of this.modelCardListeners) listener(card);
  }

  onModelCard(listener: (card: ModelCard) => void): void {
    this.modelCardListeners.push(listener);
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

  instances(): InstanceInfo[] {
    return [...this.workers.values()].map((w) => ({ id: w.id, url: w.url, model: w.info.model, mode: w.info.disaggregationMode || "agg", inFlight: w.inFlight }));
  }

  models(): ModelCard[] {
    const served = new Set([...this.workers.values()].map((w) => w.info.model));
    return [...this.modelCards.values()].filter((card) => served.has(card.name));
  }

  async *generate(request: GenerateRequest, signal: AbortSignal): AsyncIterable<GenerateResponse> {
    const promptTokens = request.tokenIds.length;
    const generated: number[] = [];
    const failedWorkers = new Set<string>();
    let migrations = 0;
    // Once the caller's stream is not one worker's whole answer (a migration, or a prefill done
    // by another worker), usage is rewritten to count against the original prompt.
    let stitched = false;
    let cachedTokens: number | undefined;
    for (;;) {
      // A migrated request is routed by its whole context, prompt and tokens so far.
      const attempt = generated.length === 0 ? request : continuation(request, generated);
      const selection = await this.pick(attempt, failedWorkers);
      const worker = selection.worker;
      worker.inFlight++;
      this.options.log?.debug(
        `request ${request.requestId} (seed ${request.sampling?.seed ?? "none"}, max_tokens ${request.sampling?.maxTokens ?? "none"}): worker ${worker.id}, ${worker.inFlight} in flight there`,
      );
      let released = false;
      // Consumers may stop iterating at the final message without closing the stream, so the
      // request is released before that message is handed over, and only once.
      const release = () => {
        if (released) return;
        released = true;
        worker.inFlight--;
        this.selector.requestFinished?.(request.requestId, worker);
      };
      let decodeStart = generated.length;
      // A prefill worker holding this attempt's KV until a decode worker has read it.
      let heldBy: WorkerHandle | undefined;
      try {
        let workerRequest = attempt;
        const prefill = await this.prefillElsewhere(attempt, selection, failedWorkers, signal);
        if (prefill) {
          stitched = true;
          cachedTokens ??= prefill.response.usage?.cachedTokens;
          generated.push(...prefill.response.tokenIds);
          if (!prefill.kvTransfer) {
            // The first token ended the request (EOS or a stop token).
            release();
            yield withUsage(prefill.response, promptTokens, generated.length, cachedTokens);
            return;
          }
          heldBy = prefill.worker;
          yield firstTokenMessage(prefill.response);
          workerRequest = decodeRequest(attempt, { response: prefill.response, kvTransfer: prefill.kvTransfer });
          decodeStart = generated.length;
        }
        for await (const response of worker.client.generate(workerRequest, { signal })) {
          // The decode worker has the KV (read, or recomputed after telling the prefill worker).
          heldBy = undefined;
          generated.push(...response.tokenIds);
          if (response.finishReason === FinishReason.CANCELLED && !signal.aborted) {
            // The worker gave the request up unasked (its engine closed: a shutdown past its
            // grace period). Its tokens so far stand; the rest is a broken stream's: another
            // worker takes the request, as a retry if nothing came yet, else as a migration.
            if (response.tokenIds.length > 0) {
              yield create(GenerateResponseSchema, { tokenIds: response.tokenIds, logprobs: response.logprobs });
            }
            throw new StreamBrokenError(worker.id, "cancelled the request");
          }
          if (stitched && response.usage) rewriteUsage(response, promptTokens, generated.length, cachedTokens);
          if (response.finishReason !== FinishReason.UNSPECIFIED) {
            release();
            yield response;
            return;
          }
          yield response;
        }
        throw new StreamBrokenError(worker.id);
      } catch (err) {
        this.options.log?.debug(`request ${request.requestId}: worker ${worker.id} failed after ${generated.length} tokens: ${(err as Error).message}`);
        if (signal.aborted) throw err;
        if (generated.length === decodeStart && failedBeforeOutput(err) && !failedWorkers.has(worker.id)) {
          // The worker refused the request (draining, overloaded) or failed before it produced
          // anything (its connection closed under it): the client has seen nothing of this
          // attempt, so any other worker may take it, and that is no migration.
          failedWorkers.add(worker.id);
          if (this.hasOtherWorker(request.model, failedWorkers)) continue;
          throw err;
        }
        if (!this.canMigrate(err, migrations)) throw err;
        migrations++;
        stitched = true;
        failedWorkers.add(worker.id);
        const maxTokens = request.sampling?.maxTokens;
        if (maxTokens !== undefined && generated.length >= maxTokens) {
          // Every token arrived; only the closing message was lost.
          yield create(GenerateResponseSchema, {
            finishReason: FinishReason.LENGTH,
            usage: { promptTokens, completionTokens: generated.length, cachedTokens: cachedTokens ?? 0 },
          });
          return;
        }
        this.options.log?.warn(`request ${request.requestId} lost worker ${worker.id} after ${generated.length} tokens; migrating (${migrations}/${this.migrationLimit})`, err);
      } finally {
        release();
        // The decode never got going (the client left, the decode worker refused or died
        // first): free the prefill worker's blocks now rather than at its transfer timeout.
        if (heldBy) void releaseHeldKv(heldBy, attempt.requestId, this.options.log);
      }
    }
  }

  /**
   * Runs the prefill on a prefill worker when the policy says so, returning its result; undefined
   * when the decode worker is to compute the prompt itself (the policy's choice, or the prefill
   * worker failed in a way the decode worker can make up for).
   */
  private async prefillElsewhere(
    attempt: GenerateRequest,
    decode: Selection,
    failedWorkers: Set<string>,
    signal: AbortSignal,
  ): Promise<PrefillResult | undefined> {
    const prefillWorkers = this.candidates(attempt.model, failedWorkers, "prefill");
    const overlapTokens = (decode.overlapBlocks ?? 0) * decode.worker.info.blockSize;
    const uncachedTokens = Math.max(0, attempt.tokenIds.length - overlapTokens);
    const place = decidePrefillPlace({ uncachedTokens, maxTokens: attempt.sampling?.maxTokens, prefillWorkers }, this.prefillPolicy);
    const log = this.options.log;
    const id = attempt.requestId;
    // The decode worker's selection is still open under the request's id.
    const selectionId = `${id}/prefill`;
    if (place.where === "local") {
      if (place.reason !== "no_prefill_workers") log?.info(`request ${id}: prefill on decode worker ${decode.worker.id} (${place.reason}; ${uncachedTokens} uncached tokens)`);
      return undefined;
    }
    let prefillWorker: WorkerHandle;
    try {
      prefillWorker = (await this.selector.select({ requestId: selectionId, tokenIds: attempt.tokenIds, model: attempt.model }, prefillWorkers)).worker;
    } catch (err) {
      if (!(err instanceof RouterError)) throw err;
      log?.info(`request ${id}: prefill on decode worker ${decode.worker.id} (no prefill worker free: ${err.message})`);
      return undefined;
    }
    prefillWorker.inFlight++;
    try {
      const result = await runRemotePrefill(prefillWorker, attempt, signal);
      log?.info(`request ${id}: prefill on ${prefillWorker.id}, decode on ${decode.worker.id} (${uncachedTokens} uncached tokens)`);
      return result;
    } catch (err) {
      if (signal.aborted || !shouldPrefillLocallyAfter(err)) throw err;
      failedWorkers.add(prefillWorker.id);
      log?.warn(`request ${id}: prefill worker ${prefillWorker.id} failed (${(err as Error).message}); prefill on decode worker ${decode.worker.id}`);
      return undefined;
    } finally {
      prefillWorker.inFlight--;
      this.selector.requestFinished?.(selectionId, prefillWorker);
    }
  }

  async close(): Promise<void> {
    await this.selector.close?.();
    this.workers.clear();
  }

  private async pick(request: GenerateRequest, failedWorkers: ReadonlySet<string>): Promise<Selection> {
    const candidates = this.candidates(request.model, failedWorkers, "decode");
    if (candidates.length === 0) {
      if (!this.modelCards.has(request.model)) throw new RouterError("unknown_model", `model '${request.model}' does not exist`);
      throw new RouterError("no_workers", `no live worker serves model '${request.model}'`, 1);
    }
    return await this.selector.select({ requestId: request.requestId, tokenIds: request.tokenIds, model: request.model }, candidates);
  }

  /**
   * Workers of `model` in a role: prefill workers, or those that decode (agg and decode workers;
   * prefill workers too when there is nothing else, since any worker can serve a whole request).
   * Workers this request already lost are avoided unless they are all that is left.
   */
  private candidates(model: string, failedWorkers: ReadonlySet<string>, role: "prefill" | "decode"): WorkerHandle[] {
    const ofModel = [...this.workers.values()].filter((w) => w.info.model === model);
    const isPrefill = (w: WorkerHandle) => w.info.disaggregationMode === "prefill";
    let all = ofModel.filter((w) => (role === "prefill" ? isPrefill(w) : !isPrefill(w)));
    if (role === "decode" && all.length === 0) all = ofModel;
    if (role === "prefill") return all.filter((w) => !failedWorkers.has(w.id));
    const fresh = all.filter((w) => !failedWorkers.has(w.id));
    return fresh.length > 0 ? fresh : all;
  }

  private hasOtherWorker(model: string, excluded: ReadonlySet<string>): boolean {
    return this.candidates(model, new Set(), "decode").some((w) => !excluded.has(w.id));
  }

  private canMigrate(err: unknown, migrations: number): boolean {
    if (migrations >= this.migrationLimit) return false;
    if (err instanceof StreamBrokenError) return true;
    const code = ConnectError.from(err).code;
    this.options.log?.debug(`worker stream failed with ${Code[code]}: ${(err as Error).message}`);
    return MIGRATABLE.has(code);
  }
}

function failedBeforeOutput(err: unknown): boolean {
  if (err instanceof StreamBrokenError) return true;
  return err instanceof ConnectError && (err.code === Code.ResourceExhausted || MIGRATABLE.has(err.code));
}

/** The request that carries on where a broken attempt stopped. */
function continuation(request: GenerateRequest, generated: readonly number[]): GenerateRequest {
  const sampling = request.sampling;
  return create(GenerateRequestSchema, {
    ...request,
    tokenIds: [...request.tokenIds, ...generated],
    sampling: sampling && {
      ...sampling,
      maxTokens: sampling.maxTokens === undefined ? undefined : sampling.maxTokens - generated.length,
      minTokens: Math.max(0, sampling.minTokens - generated.length),
    },
  });
}

function rewriteUsage(response: GenerateResponse, promptTokens: number, completionTokens: number, cachedTokens: number | undefined): void {
  if (!response.usage) return;
  response.usage.promptTokens = promptTokens;
  response.usage.completionTokens = completionTokens;
  if (cachedTokens !== undefined) response.usage.cachedTokens = cachedTokens;
}

function withUsage(response: GenerateResponse, promptTokens: number, completionTokens: number, cachedTokens: number | undefined): GenerateResponse {
  return create(GenerateResponseSchema, {
    tokenIds: response.tokenIds,
    logprobs: response.logprobs,
    finishReason: response.finishReason,
    errorMessage: response.errorMessage,
    usage: { promptTokens, completionTokens, cachedTokens: cachedTokens ?? 0 },
  });
}

async function releaseHeldKv(worker: WorkerHandle, requestId: string, log: Logger | undefined): Promise<void> {
  try {
    await worker.client.cancel(create(CancelRequestSchema, { requestId }), { timeoutMs: 5000 });
  } catch (err) {
    log?.debug(`could not tell prefill worker ${worker.id} to free the KV of ${requestId}: ${(err as Error).message}`);
  }
}

/** The prefill's token, passed on as the first message of a stream that goes on elsewhere. */
function firstTokenMessage(prefill: GenerateResponse): GenerateResponse {
  return create(GenerateResponseSchema, { tokenIds: prefill.tokenIds, logprobs: prefill.logprobs });
}
