/**
 * A running worker: one engine behind WorkerService (and grpc.health.v1) on a Connect server,
 * with the lifecycle around it: graceful drain on close. An engine that supports KV transfer
 * gets a transfer agent too (see disagg/disaggregation.ts).
 */
import { randomUUID } from "node:crypto";
import { HealthCheckResponse_ServingStatus as GrpcServingStatus } from "../../gen/grpc/health/v1/health_pb.ts";
import { WorkerService } from "../../gen/switchyard/worker/v1/worker_pb.ts";
import type { Engine } from "../engine/engine.ts";
import { startConnectServer, type RunningServer, type TlsFiles } from "../runtime/connect_server.ts";
import { createLogger } from "../runtime/logger.ts";
import { sleep } from "../util/sleep.ts";
import { Disaggregation } from "./disagg/disaggregation.ts";
import type { KvTransferAgentOptions } from "./disagg/transfer_endpoint.ts";
import { healthCheckPayload, runCanary } from "./health_check.ts";
import { KvEventPublisher } from "./kv_event_publisher.ts";
import { createWorkerService, WorkerState, type DisaggregationMode } from "./worker_service.ts";

/** How long a closing worker lets its open streams finish after the grace period has run out. */
const FLUSH_FLOOR_MS = 500;

export interface WorkerOptions {
  engine: Engine;
  engineName: string;
  model: string;
  host?: string;
  port?: number;
  tls?: TlsFiles;
  workerId?: string;
  /** Routing information for routers (GetInfo, discovery); the worker honours both disaggregation flags whatever it says. */
  disaggregationMode?: DisaggregationMode;
  /**
   * The KV transfer agent, for an engine that supports KV transfer: its listener (default: the
   * worker's host, any port) and the deadline of a read and of a hold (default 30 s).
   */
  kvTransfer?: KvTransferAgentOptions;
}

export interface RunningWorker {
  readonly workerId: string;
  readonly url: string;
  readonly port: number;
  readonly engine: Engine;
  readonly state: WorkerState;
  readonly kvEvents: KvEventPublisher;
  /** Present when the engine supports KV transfer. */
  readonly disaggregation?: Disaggregation;
  /**
   * Refuses new requests, waits up to `gracePeriodMs` for in-flight ones and for held KV blocks
   * to be read, then stops the transfer agent, the server and the engine.
   */
  close(gracePeriodMs?: number): Promise<void>;
}

export async function startWorker(options: WorkerOptions): Promise<RunningWorker> {
  const workerId = options.workerId ?? `worker-${randomUUID().slice(0, 8)}`;
  const host = options.host ?? "127.0.0.1";
  const state = new WorkerState();
  const disaggregation = Disaggregation.start(workerId, options.engine, { ...options.kvTransfer, host: options.kvTransfer?.host ?? host }, createLogger(`worker/${workerId}`));
  const kvEvents = new KvEventPublisher(options.engine, workerId);
  const healthPayload = healthCheckPayload();
  const service = createWorkerService(
    {
      engine: options.engine,
      kvEvents,
      healthPayload,
      workerId,
      model: options.model,
      engineName: options.engineName,
      disaggregationMode: options.disaggregationMode ?? "agg",
      disaggregation,
    },
    state,
  );
  let server: RunningServer;
  try {
    server = await startConnectServer({
      host: options.host ?? "127.0.0.1",
      port: options.port ?? 0,
      tls: options.tls,
      routes: (router) => router.service(WorkerService, service),
      servingStatus: async () => {
        if (state.draining) return GrpcServingStatus.NOT_SERVING;
        const result = await runCanary(options.engine, healthPayload, 5000);
        return result.healthy ? GrpcServingStatus.SERVING : GrpcServingStatus.NOT_SERVING;
      },
    });
  } catch (err) {
    kvEvents.close();
    await disaggregation?.close();
    throw new Error(`worker could not listen on ${host}:${options.port ?? 0}`, { cause: err });
  }
  let closing: Promise<void> | undefined;
  return {
    workerId,
    url: server.url,
    port: server.port,
    engine: options.engine,
    state,
    kvEvents,
    disaggregation,
    close(gracePeriodMs = 0) {
      closing ??= (async () => {
        state.draining = true;
        const deadline = performance.now() + gracePeriodMs;
        await state.whenIdle(gracePeriodMs);
        // Decode workers may still be reading blocks this worker prefilled.
        await disaggregation?.whenNoneHeld(deadline - performance.now());
        // Before the engine: the agent must stop touching the engine's KV memory first.
        await disaggregation?.close();
        kvEvents.close();
        await options.engine.close();
        // The last requests' final messages and trailers may still be on their way out (a
        // handler counts as ended before its trailers are written): close gracefully, so open
        // streams end on their own, for what is left of the grace period (at least
        // FLUSH_FLOOR_MS). Cutting them at once lost a finished request's end now and then (the
        // caller saw "missing status" after all its tokens). What is still open then ends now.
        const flushed = new AbortController();
        await Promise.race([
          server.close().then(() => flushed.abort()),
          sleep(Math.max(FLUSH_FLOOR_MS, deadline - performance.now()), flushed.signal),
        ]);
        flushed.abort();
        server.destroy();
      })();
      return closing;
    },
  };
}
