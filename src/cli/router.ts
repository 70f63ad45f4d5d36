/**
 * `switchyard router`: the KV-aware router as its own service (switchyard.router.v1.RouterService
 * over Connect/gRPC), so several frontends share one view of the workers' caches and load.
 * Frontends use it with `switchyard frontend --router-url URL`.
 */
import { Registry } from "prom-client";
import { z } from "zod";
import { HealthCheckResponse_ServingStatus as GrpcServingStatus } from "../../gen/grpc/health/v1/health_pb.ts";
import { RouterService } from "../../gen/switchyard/router/v1/router_pb.ts";
import { createRouterService } from "../router/kv/router_service.ts";
import { SharedRouter } from "../router/kv/shared_router.ts";
import { NatsWorkers } from "../router/nats_workers.ts";
import { StaticWorkers } from "../router/static_workers.ts";
import { startConnectServer } from "../runtime/connect_server.ts";
import { DEFAULT_REGISTRATION_TIMING } from "../runtime/discovery/instance_registration.ts";
import { connectNats } from "../runtime/discovery/nats_client.ts";
import { createLogger } from "../runtime/logger.ts";
import { startMetricsServer } from "../runtime/metrics_server.ts";
import { exitOnSignals } from "../runtime/shutdown.ts";
import { HOST_PORT_OPTIONS, intFlag, parseCommand, UsageError } from "./args.ts";
import { kvSelectorFromFlags } from "./frontend_options.ts";
import { KV_ROUTER_OPTIONS, KvRouterFlagsSchema } from "../router/kv/kv_router_flags.ts";

export const ROUTER_COMMAND_USAGE = `switchyard router (--worker URL ... | --nats URL) [options]
  --host H              address (default 127.0.0.1)
  --port N              Connect/gRPC port (default 7000; 0 picks a free one)
  --worker URL          a worker's Connect URL (repeatable)
  --nats URL            discover workers over NATS (default: $SWITCHYARD_NATS_URL)
  --block-size N        KV block size for workers that do not report one (default 16)
  --metrics-port N      serve Prometheus metrics at http://HOST:N/metrics
  the kv-mode flags of 'switchyard frontend'`;

const RouterCommandFlagsSchema = KvRouterFlagsSchema.extend({
  "kv-events-transport": z.enum(["stream", "nats"]).optional(),
  host: z.string().default("127.0.0.1"),
  port: intFlag(0, 65535).default(7000),
  worker: z.array(z.string().url()).default([]),
  nats: z.string().min(1).optional(),
  "block-size": intFlag(1, 1024).default(16),
  "metrics-port": intFlag(0, 65535).optional(),
});

export async function routerCommand(argv: string[]): Promise<void> {
  const flags = parseCommand(
    argv,
    { ...HOST_PORT_OPTIONS, ...KV_ROUTER_OPTIONS, "kv-events-transport": { type: "string" }, worker: { type: "string", multiple: true }, nats: { type: "string" }, "block-size": { type: "string" }, "metrics-port": { type: "string" } },
    RouterCommandFlagsSchema,
  );
  const natsUrl = flags.nats ?? process.env.SWITCHYARD_NATS_URL;
  if (flags.worker.length === 0 && !natsUrl) throw new UsageError("give --worker URL (repeatable) or --nats URL");
  const log = createLogger("router");
  const registry = new Registry();
  const nc = natsUrl ? await connectNats(natsUrl, "switchyard-router", log) : undefined;
  const shared = new SharedRouter(kvSelectorFromFlags(flags, flags["block-size"], registry, log, nc));
  const discoveries: { close(): Promise<void> }[] = [];
  if (flags.worker.length > 0) {
    const workers = new StaticWorkers(flags.worker, shared, log);
    discoveries.push(workers);
    await workers.firstContact();
  }
  if (nc) discoveries.push(new NatsWorkers(nc, shared, log, DEFAULT_REGISTRATION_TIMING.ttlMs));
  const server = await startConnectServer({
    host: flags.host,
    port: flags.port,
    routes: (router) => router.service(RouterService, createRouterService(shared)),
    servingStatus: async () => (shared.liveWorkers().length > 0 ? GrpcServingStatus.SERVING : GrpcServingStatus.NOT_SERVING),
  });
  const metrics = flags["metrics-port"] !== undefined ? await startMetricsServer(registry, flags.host, flags["metrics-port"]) : undefined;
  log.info(`RouterService at ${server.url}${metrics ? `, metrics at ${metrics.url}` : ""}`);
  console.log(server.url);
  exitOnSignals(async () => {
    await Promise.all(discoveries.map((d) => d.close()));
    await shared.selector.close?.();
    await server.close();
    await metrics?.close();
    await nc?.close();
  }, log);
}
