/** `switchyard worker`: one engine behind a WorkerService on its own Connect port. */
import { z } from "zod";
import { createEngine, type EngineConfig } from "../engine/create_engine.ts";
import { createLogger } from "../runtime/logger.ts";
import { exitOnSignals } from "../runtime/shutdown.ts";
import { startWorker } from "../worker/worker_server.ts";
import { ENGINE_OPTIONS, EngineFlagsSchema, HOST_PORT_OPTIONS, intFlag, parseCommand, UsageError, type EngineFlags } from "./args.ts";
import { resolveModel, type ModelSource } from "./model_source.ts";

export const WORKER_USAGE = `switchyard worker [options]
  --host H                  address to listen on (default 127.0.0.1)
  --port N                  Connect/gRPC port (default 9000; 0 picks a free one)
  --worker-id ID            stable id (default: random)
  --disaggregation-mode M   agg (only agg is implemented so far)
  --tls-cert FILE --tls-key FILE   serve TLS instead of plaintext h2c
  engine options            see 'switchyard --help'`;

const WorkerFlagsSchema = EngineFlagsSchema.extend({
  host: z.string().default("127.0.0.1"),
  port: intFlag(0, 65535).default(9000),
  "worker-id": z.string().min(1).optional(),
  "disaggregation-mode": z.enum(["agg", "prefill", "decode"]).default("agg"),
  "tls-cert": z.string().optional(),
  "tls-key": z.string().optional(),
});

export function engineConfig(flags: EngineFlags, model: ModelSource): EngineConfig {
  return {
    engine: flags.engine,
    model: model.folder.path,
    blockSize: flags["block-size"],
    maxNumSeqs: flags["max-num-seqs"],
    maxNumBatchedTokens: flags["max-num-batched-tokens"],
    maxModelLen: flags["max-model-len"],
    enablePrefixCaching: flags["enable-prefix-caching"],
    numGpuBlocks: flags["num-gpu-blocks"],
    speedupRatio: flags["speedup-ratio"],
    kvCacheMemoryBytes: flags["kv-cache-memory"],
  };
}

export async function workerCommand(argv: string[]): Promise<void> {
  const flags = parseCommand(
    argv,
    { ...HOST_PORT_OPTIONS, ...ENGINE_OPTIONS, "worker-id": { type: "string" }, "disaggregation-mode": { type: "string" }, "tls-cert": { type: "string" }, "tls-key": { type: "string" } },
    WorkerFlagsSchema,
  );
  if (flags["disaggregation-mode"] !== "agg") {
    throw new UsageError(`--disaggregation-mode ${flags["disaggregation-mode"]} is not implemented yet; only agg works`);
  }
  if (Boolean(flags["tls-cert"]) !== Boolean(flags["tls-key"])) throw new UsageError("--tls-cert and --tls-key go together");
  const log = createLogger("worker");
  const model = resolveModel(flags.model, flags["served-model-name"], log);
  const engine = await createEngine(engineConfig(flags, model));
  const worker = await startWorker({
    engine,
    engineName: flags.engine,
    model: model.servedName,
    host: flags.host,
    port: flags.port,
    workerId: flags["worker-id"],
    tls: flags["tls-cert"] ? { certFile: flags["tls-cert"], keyFile: flags["tls-key"]! } : undefined,
  });
  log.info(`${worker.workerId} serving '${model.servedName}' with the ${flags.engine} engine at ${worker.url}`);
  console.log(worker.url);
  exitOnSignals((grace) => worker.close(grace), log);
}
