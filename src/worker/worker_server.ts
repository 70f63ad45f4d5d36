/**
 * A running worker: one engine behind WorkerService (and grpc.health.v1) on a Connect server,
 * with the lifecycle around it: graceful drain on close.
 */
import { randomUUID } from "node:crypto";
import { HealthCheckResponse_ServingStatus as GrpcServingStatus } from "../../gen/grpc/health/v1/health_pb.ts";
import { WorkerService } from "../../gen/switchyard/worker/v1/worker_pb.ts";
import type { Engine } from "../engine/engine.ts";
import { startConnectServer, type RunningServer, type TlsFiles } from "../runtime/connect_server.ts";
import { healthCheckPayload, runCanary } from "./health_check.ts";
import { KvEventPublisher } from "./kv_event_publisher.ts";
import { createWorkerService, WorkerState, type DisaggregationMode } from "./worker_service.ts";

export interface WorkerOptions {
  engine: Engine;
  engineName: string;
  model: string;
  host?: string;
  port?: number;
  tls?: TlsFiles;
  workerId?: string;
  disaggregationMode?: DisaggregationMode;
}

export interface RunningWorker {
  readonly workerId: string;
  readonly url: string;
  readonly port: number;
  readonly engine: Engine;
  readonly state: WorkerState;
  readonly kvEvents: KvEventPublisher;
  /**
   * Refuses new requests, waits up to `gracePeriodMs` for in-flight ones, then stops the server
   * and the engine.
   */
  close(gracePeriodMs?: number): Promise<void>;
}

export async function startWorker(options: WorkerOptions): Promise<RunningWorker> {
  const workerId = options.workerId ?? `worker-${randomUUID().slice(0, 8)}`;
  const state = new WorkerState();
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
    throw new Error(`worker could not listen on ${options.host ?? "127.0.0.1"}:${options.port ?? 0}`, { cause: err });
  }
  let closing: Promise<void> | undefined;
  return {
    workerId,
    url: server.url,
    port: server.port,
    engine: options.engine,
    state,
    kvEvents,
    close(gracePeriodMs = 0) {
      closing ??= (async () => {
        state.draining = true;
        await state.whenIdle(gracePeriodMs);
        kvEvents.close();
        await options.engine.close();
        // Streams still open (KvEvents subscribers, requests past the grace period) end now.
        server.destroy();
      })();
      return closing;
    },
  };
}
