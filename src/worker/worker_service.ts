/**
 * WorkerService: the wire contract over one Engine. Handlers parse and validate, call the
 * engine, and map its errors to Connect codes; the engine owns all scheduling and caching.
 */
import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import {
  CancelResponseSchema,
  FinishReason as WireFinishReason,
  GenerateResponseSchema,
  GetInfoResponseSchema,
  HealthResponseSchema,
  ServingStatus,
  WorkerService,
  type GenerateRequest,
  type GenerateResponse,
} from "../../gen/switchyard/worker/v1/worker_pb.ts";
import { EngineError, type Engine, type EngineOutput, type EngineRequest, type FinishReason } from "../engine/engine.ts";
import { resolveSampling } from "../engine/sampling.ts";
import { applyDisaggregation, type Disaggregation } from "./disagg/disaggregation.ts";
import { runCanary, type CanaryResult, type HealthCheckPayload } from "./health_check.ts";
import type { KvEventPublisher } from "./kv_event_publisher.ts";

export type DisaggregationMode = "agg" | "prefill" | "decode";

export interface WorkerIdentity {
  workerId: string;
  /** The served model name. */
  model: string;
  engineName: string;
  disaggregationMode: DisaggregationMode;
}

export interface WorkerServiceOptions extends WorkerIdentity {
  engine: Engine;
  kvEvents: KvEventPublisher;
  healthPayload: HealthCheckPayload;
  canaryTimeoutMs?: number;
  /** Present when the engine supports KV transfer: serves do_remote_decode and do_remote_prefill. */
  disaggregation?: Disaggregation;
}

/** The worker's mutable serving state, shared by the handlers and lifecycle code. */
export class WorkerState {
  /** Set on shutdown: new requests are refused, in-flight ones finish. */
  draining = false;
  lastCanary?: CanaryResult & { atMs: number };
  private running = 0;
  private idleWaiters: (() => void)[] = [];

  get inFlight(): number {
    return this.running;
  }

  requestStarted(): void {
    this.running++;
  }

  requestEnded(): void {
    if (--this.running > 0) return;
    for (const wake of this.idleWaiters.splice(0)) wake();
  }

  /** Resolves once no request is in flight, or after `timeoutMs`, whichever comes first. */
  async whenIdle(timeoutMs: number): Promise<void> {
    if (this.running === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve) => {
      this.idleWaiters.push(resolve);
      timer = setTimeout(resolve, timeoutMs);
    });
    clearTimeout(timer);
  }
}

const FINISH_REASONS: Record<FinishReason, WireFinishReason> = {
  stop: WireFinishReason.STOP,
  length: WireFinishReason.LENGTH,
  cancelled: WireFinishReason.CANCELLED,
  error: WireFinishReason.ERROR,
};

export function engineErrorToConnect(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  if (err instanceof EngineError) {
    const code = {
      invalid_argument: Code.InvalidArgument,
      resource_exhausted: Code.ResourceExhausted,
      unavailable: Code.Unavailable,
      internal: Code.Internal,
    }[err.code];
    return new ConnectError(err.message, code, undefined, undefined, err);
  }
  return ConnectError.from(err, Code.Internal);
}

export function createWorkerService(options: WorkerServiceOptions, state: WorkerState): ServiceImpl<typeof WorkerService> {
  const { engine } = options;
  const canaryTimeoutMs = options.canaryTimeoutMs ?? 5000;

  async function health(): Promise<CanaryResult> {
    if (state.draining) return { healthy: false, latencyMs: 0, message: "draining: shutting down" };
    const result = await runCanary(engine, options.healthPayload, canaryTimeoutMs);
    state.lastCanary = { ...result, atMs: Date.now() };
    return result;
  }

  return {
    async *generate(request, context) {
      if (state.draining) throw new ConnectError("worker is shutting down", Code.Unavailable);
      const engineRequest = toEngineRequest(request, options);
      state.requestStarted();
      // Held KV whose kv_transfer has not left yet: nobody will read it if it never does.
      let undeliveredHold: string | undefined;
      try {
        for await (const output of engine.generate(engineRequest, context.signal)) {
          const response = toWireResponse(output);
          undeliveredHold = attachHeldKv(response, output, engineRequest, options.disaggregation);
          yield response;
          undeliveredHold = undefined;
        }
      } catch (err) {
        throw engineErrorToConnect(err);
      } finally {
        if (undeliveredHold !== undefined) options.disaggregation?.release(undeliveredHold, "undelivered");
        state.requestEnded();
      }
    },

    cancel(request) {
      // A finished prefill's held blocks are the request's too: Cancel frees them.
      const cancelled = engine.abort(request.requestId) || (options.disaggregation?.release(request.requestId, "cancelled") ?? false);
      return create(CancelResponseSchema, { cancelled });
    },

    async health() {
      const result = await health();
      return create(HealthResponseSchema, {
        status: result.healthy ? ServingStatus.SERVING : ServingStatus.NOT_SERVING,
        message: result.message,
        canaryLatencyMs: Math.round(result.latencyMs),
      });
    },

    kvEvents(_request, context) {
      return options.kvEvents.subscribe(context.signal);
    },

    getInfo() {
      const stats = engine.stats();
      return create(GetInfoResponseSchema, {
        workerId: options.workerId,
        model: options.model,
        blockSize: engine.blockSize,
        maxModelLen: engine.maxModelLen,
        disaggregationMode: options.disaggregationMode,
        engine: options.engineName,
        status: state.draining ? ServingStatus.NOT_SERVING : ServingStatus.SERVING,
        load: {
          runningRequests: stats.runningRequests,
          waitingRequests: stats.waitingRequests,
          kvBlocksUsed: stats.kvBlocksUsed,
          kvBlocksTotal: stats.kvBlocksTotal,
        },
      });
    },
  };
}

function toEngineRequest(request: GenerateRequest, options: WorkerServiceOptions): EngineRequest {
  const { engine } = options;
  if (request.model !== "" && request.model !== options.model) {
    throw new ConnectError(`this worker serves '${options.model}', not '${request.model}'`, Code.NotFound);
  }
  if (request.tokenIds.length === 0) throw new ConnectError("token_ids must not be empty", Code.InvalidArgument);
  if (request.tokenIds.length >= engine.maxModelLen) {
    throw new ConnectError(
      `the prompt has ${request.tokenIds.length} tokens; this model's context length is ${engine.maxModelLen}, which leaves no room to generate`,
      Code.InvalidArgument,
    );
  }
  let engineRequest: EngineRequest;
  try {
    engineRequest = {
      requestId: request.requestId || randomUUID(),
      promptTokenIds: request.tokenIds,
      sampling: resolveSampling(request.sampling, engine.maxModelLen - request.tokenIds.length),
    };
  } catch (err) {
    throw engineErrorToConnect(err);
  }
  applyDisaggregation(request.disaggregation, engineRequest, options.disaggregation, options.engineName);
  return engineRequest;
}

/**
 * Puts kv_transfer on the final response of a do_remote_decode request; returns the request
 * id whose blocks stay held for it (none when they were freed at once).
 */
function attachHeldKv(response: GenerateResponse, output: EngineOutput, request: EngineRequest, disaggregation: Disaggregation | undefined): string | undefined {
  if (!output.heldKv || !disaggregation) return undefined;
  response.kvTransfer = disaggregation.holdForDecode(request, output.heldKv, output.finishReason);
  return response.kvTransfer ? request.requestId : undefined;
}

function toWireResponse(output: EngineOutput): GenerateResponse {
  return create(GenerateResponseSchema, {
    tokenIds: output.tokenIds,
    logprobs: output.logprobs?.map((lp) => ({
      tokenId: lp.tokenId,
      logprob: lp.logprob,
      topLogprobs: lp.top.map((t) => ({ tokenId: t.tokenId, logprob: t.logprob })),
    })),
    finishReason: output.finishReason ? FINISH_REASONS[output.finishReason] : WireFinishReason.UNSPECIFIED,
    errorMessage: output.errorMessage ?? "",
    usage: {
      promptTokens: output.usage.promptTokens,
      completionTokens: output.usage.completionTokens,
      cachedTokens: output.usage.cachedTokens,
    },
  });
}
