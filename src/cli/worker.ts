/** `switchyard worker`: one engine behind a WorkerService on its own Connect port. */
import { resolve } from "node:path";
import { Registry } from "prom-client";
import { z } from "zod";
import { createEngine, type EngineConfig } from "../engine/create_engine.ts";
import type { Engine } from "../engine/engine.ts";
import { InstanceRegistration } from "../runtime/discovery/instance_registration.ts";
import { connectNats } from "../runtime/discovery/nats_client.ts";
import { createLogger } from "../runtime/logger.ts";
import { startMetricsServer } from "../runtime/metrics_server.ts";
import { exitOnSignals } from "../runtime/shutdown.ts";
import { EngineMonitor } from "../worker/engine_monitor.ts";
import { healthCheckPayload } from "../worker/health_check.ts";
import { NatsKvEventBridge } from "../worker/nats_kv_events.ts";
import { registerWorkerMetrics } from "../worker/worker_metrics.ts";
import { startWorker } from "../worker/worker_server.ts";
import { checkEngineFlags, ENGINE_OPTIONS, EngineFlagsSchema, HOST_PORT_OPTIONS, intFlag, parseCommand, UsageError, type EngineFlags } from "./args.ts";
import { resolveModel, type ModelSource } from "./model_source.ts";

export const WORKER_USAGE = `switchyard worker [options]
  --host H                  address to listen on (default 127.0.0.1)
  --port N                  Connect/gRPC port (default 9000; 0 picks a free one)
  --worker-id ID            stable id (default: random); also its KV transfer agent's name
  --disaggregation-mode M   agg, prefill or decode (default agg): what routers use this worker
                            for; any worker whose engine can move KV (mocker, native)
                            serves both prefill and decode halves of disaggregated requests
  --kv-transfer-host H      interface the KV transfer agent listens on (default: --host)
  --kv-transfer-port N      its port (default 0: any free one)
  --kv-transfer-timeout S   seconds a KV read may take, and held KV waits for its decode
                            worker before it is freed (default 30)
  --tls-cert FILE --tls-key FILE   serve TLS instead of plaintext h2c
  --nats URL                register in NATS discovery (default: $SWITCHYARD_NATS_URL)
  --advertise-url URL       the URL frontends should use (default: the listening address)
  --metrics-port N          serve Prometheus metrics at http://HOST:N/metrics
  engine options            see 'switchyard --help'`;

const WorkerFlagsSchema = EngineFlagsSchema.extend({
  host: z.string().default("127.0.0.1"),
  port: intFlag(0, 65535).default(9000),
  "worker-id": z.string().min(1).optional(),
  "disaggregation-mode": z.enum(["agg", "prefill", "decode"]).default("agg"),
  "kv-transfer-host": z.string().min(1).optional(),
  "kv-transfer-port": intFlag(0, 65535).default(0),
  "kv-transfer-timeout": z.coerce.number().gt(0).default(30),
  "tls-cert": z.string().optional(),
  "tls-key": z.string().optional(),
  nats: z.string().min(1).optional(),
  "advertise-url": z.string().url().optional(),
  "metrics-port": intFlag(0, 65535).optional(),
});

/** Closes the engine and refuses the flag when the engine cannot move KV blocks to a peer. */
export async function requireKvTransfer(engine: Engine, engineName: string, flag: string): Promise<void> {
  if (engine.kvTransfer) return;
  await engine.close();
  throw new UsageError(`${flag} needs an engine that can move KV blocks (the mocker or the native engine); this ${engineName} engine cannot`);
}

export function engineConfig(flags: EngineFlags, model: ModelSource): EngineConfig {
  checkEngineFlags(flags);
  return {
    engine: flags.engine,
    model: model.folder.path,
    blockSize: flags["block-size"],
    maxNumSeqs: flags["max-num-seqs"],
    maxNumBatchedTokens: flags["max-num-batched-tokens"],
    maxModelLen: flags["max-model-len"],
    enablePrefixCaching: flags["enable-prefix-caching"],
    numGpuBlocks: flags["num-gpu-blocks"] ?? 16384,
    speedupRatio: flags["speedup-ratio"] ?? 1,
    kvBytesPerBlock: flags["kv-bytes-per-block"],
    kvCacheMemoryBytes: flags["kv-cache-memory"],
    threads: flags.threads,
    device: flags.device,
    gpuMemoryUtilization: flags["gpu-memory-utilization"],
    enforceEager: flags["enforce-eager"],
    dtype: flags.dtype,
  };
}

export async function workerCommand(argv: string[]): Promise<void> {
  const flags = parseCommand(
    argv,
    { ...HOST_PORT_OPTIONS, ...ENGINE_OPTIONS, "worker-id": { type: "string" }, "disaggregation-mode": { type: "string" }, "kv-transfer-host": { type: "string" }, "kv-transfer-port": { type: "string" }, "kv-transfer-timeout": { type: "string" }, "tls-cert": { type: "string" }, "tls-key": { type: "string" }, nats: { type: "string" }, "advertise-url": { type: "string" }, "metrics-port": { type: "string" } },
    WorkerFlagsSchema,
  );
  if (Boolean(flags["tls-cert"]) !== Boolean(flags["tls-key"])) throw new UsageError("--tls-cert and --tls-key go together");
  const log = createLogger("worker");
  const model = resolveModel(flags.model, flags["served-model-name"], log);
  const engine = await createEngine(engineConfig(flags, model));
  const mode = flags["disaggregation-mode"];
  if (mode !== "agg") await requireKvTransfer(engine, flags.engine, `--disaggregation-mode ${mode}`);
  const worker = await startWorker({
    engine,
    engineName: flags.engine,
    model: model.servedName,
    host: flags.host,
    port: flags.port,
    workerId: flags["worker-id"],
    disaggregationMode: mode,
    kvTransfer: {
      host: flags["kv-transfer-host"] ?? flags.host,
      port: flags["kv-transfer-port"],
      // Peers reach the agent by the name frontends reach the worker by.
      advertiseHost: flags["advertise-url"] ? new URL(flags["advertise-url"]).hostname : undefined,
      timeoutMs: flags["kv-transfer-timeout"] * 1000,
    },
    tls: flags["tls-cert"] ? { certFile: flags["tls-cert"], keyFile: flags["tls-key"]! } : undefined,
  });
  log.info(`${worker.workerId} serving '${model.servedName}' with the ${flags.engine} engine at ${worker.url} (${mode})`);
  if (worker.disaggregation) log.info(`KV transfer agent at ${worker.disaggregation.endpoint.address}`);

  const natsUrl = flags.nats ?? process.env.SWITCHYARD_NATS_URL;
  const nc = natsUrl ? await connectNats(natsUrl, `switchyard-worker-${worker.workerId}`, log) : undefined;
  const registration = nc
    ? new InstanceRegistration(
        nc,
        {
          id: worker.workerId,
          address: flags["advertise-url"] ?? worker.url,
          model: model.servedName,
          mode,
          engine: flags.engine,
          card: { path: resolve(model.folder.path), maxModelLen: engine.maxModelLen, blockSize: engine.blockSize },
        },
        log,
      )
    : undefined;
  const kvBridge = nc ? new NatsKvEventBridge(nc, worker.kvEvents, model.servedName, worker.workerId, log) : undefined;
  await registration?.start();
  if (registration) log.info(`registered in NATS discovery at ${natsUrl}`);

  const registry = new Registry();
  registerWorkerMetrics(registry, engine, worker.kvEvents, { worker_id: worker.workerId, model: model.servedName }, worker.disaggregation);
  const metrics = flags["metrics-port"] !== undefined ? await startMetricsServer(registry, flags.host, flags["metrics-port"]) : undefined;
  if (metrics) log.info(`metrics at ${metrics.url}`);

  const stop = async (grace: number) => {
    monitor.stop();
    // Deregister first, so frontends stop sending work while in-flight requests drain.
    await registration?.stop();
    await worker.close(grace);
    await kvBridge?.close();
    await metrics?.close();
    await nc?.close();
  };
  const monitor = new EngineMonitor(engine, healthCheckPayload(), (reason) => {
    log.error(`engine stopped responding (${reason}): taking this worker out of service`);
    worker.state.draining = true;
    stop(0).finally(() => process.exit(3));
  }, log);
  monitor.start();
  console.log(worker.url);
  exitOnSignals(stop, log);
}
