/**
 * `switchyard serve`: frontend, router and --num-workers workers in one process, talking
 * Connect over loopback exactly as separate processes would, with no NATS.
 */
import { Registry } from "prom-client";
import { z } from "zod";
import { createEngine } from "../engine/create_engine.ts";
import { startFrontend } from "../frontend/server.ts";
import { connectWorker } from "../router/worker_handle.ts";
import { WorkerRouter } from "../router/worker_router.ts";
import { createLogger } from "../runtime/logger.ts";
import { exitOnSignals } from "../runtime/shutdown.ts";
import { startWorker, type RunningWorker } from "../worker/worker_server.ts";
import type { DisaggregationMode } from "../worker/worker_service.ts";
import { ENGINE_OPTIONS, EngineFlagsSchema, HOST_PORT_OPTIONS, intFlag, parseCommand, UsageError } from "./args.ts";
import { OPENAI_OPTIONS, OPENAI_USAGE, OpenAIFlagsSchema, ROUTER_OPTIONS, ROUTER_USAGE, RouterFlagsSchema, selectorFromFlags, workerRouterOptions } from "./frontend_options.ts";
import { resolveModel } from "./model_source.ts";
import { engineConfig, requireKvTransfer } from "./worker.ts";

export const SERVE_USAGE = `switchyard serve [options]
  --host H             HTTP address (default 127.0.0.1)
  --port N             HTTP port (default 8000; 0 picks a free one)
  --num-workers N      workers in this process (default 1)
  --num-prefill-workers N  also run N prefill workers: the --num-workers workers then decode,
                       with prompts prefilled on the prefill workers and their KV moved over
                       (disaggregated serving; default 0)
  --kv-transfer-timeout S  with prefill workers: seconds a KV read may take, and held KV waits
                       for its decode worker (default 30)
${OPENAI_USAGE}
${ROUTER_USAGE}
  engine options       see 'switchyard --help'`;

const ServeFlagsSchema = EngineFlagsSchema.extend(RouterFlagsSchema.shape).extend(OpenAIFlagsSchema.shape).extend({
  host: z.string().default("127.0.0.1"),
  port: intFlag(0, 65535).default(8000),
  "num-workers": intFlag(1, 64).default(1),
  "num-prefill-workers": intFlag(0, 64).default(0),
  "kv-transfer-timeout": z.coerce.number().gt(0).default(30),
});

export interface ServeHandle {
  url: string;
  workers: RunningWorker[];
  stop(gracePeriodMs?: number): Promise<void>;
}

/** Starts everything; used by the CLI and by tests that want a whole server in-process. */
export async function serve(argv: string[]): Promise<ServeHandle> {
  const flags = parseCommand(argv, { ...HOST_PORT_OPTIONS, ...ENGINE_OPTIONS, ...ROUTER_OPTIONS, ...OPENAI_OPTIONS, "num-workers": { type: "string" }, "num-prefill-workers": { type: "string" }, "kv-transfer-timeout": { type: "string" } }, ServeFlagsSchema);
  const log = createLogger("serve");
  const model = resolveModel(flags.model, flags["served-model-name"], log);
  const config = engineConfig(flags, model);
  const workers: RunningWorker[] = [];
  const disaggregated = flags["num-prefill-workers"] > 0;
  const roles: { id: string; mode: DisaggregationMode }[] = [
    ...Array.from({ length: flags["num-prefill-workers"] }, (_, i) => ({ id: `prefill-${i}`, mode: "prefill" as const })),
    ...Array.from({ length: flags["num-workers"] }, (_, i) => ({ id: disaggregated ? `decode-${i}` : `worker-${i}`, mode: disaggregated ? ("decode" as const) : ("agg" as const) })),
  ];
  try {
    for (const role of roles) {
      const engine = await createEngine(config);
      if (role.mode !== "agg") await requireKvTransfer(engine, flags.engine, "--num-prefill-workers");
      if (role.mode !== "agg" && engine.kvTransfer?.layout().memory.kind === "cuda") {
        // CUDA IPC maps another process's allocation; within one process it cannot, so every
        // read would fail and each decode worker would recompute every prompt.
        await engine.close();
        throw new UsageError("--num-prefill-workers with the native engine on cuda: serve runs every worker in one process, where CUDA IPC cannot move KV between them; run `switchyard worker --disaggregation-mode prefill` and `decode` as separate processes (launch/disagg.sh), or serve with --device cpu");
      }
      workers.push(
        await startWorker({
          engine,
          engineName: flags.engine,
          model: model.servedName,
          workerId: role.id,
          disaggregationMode: role.mode,
          kvTransfer: { timeoutMs: flags["kv-transfer-timeout"] * 1000 },
        }),
      );
    }
  } catch (err) {
    await Promise.all(workers.map((w) => w.close()));
    throw err;
  }
  // The engine knows the real context length (the native engine caps it at what its KV cache holds).
  const { maxModelLen, blockSize } = workers[0].engine;
  const registry = new Registry();
  const router = new WorkerRouter(
    [{ name: model.servedName, path: model.folder.path, maxModelLen, blockSize }],
    selectorFromFlags(flags, blockSize, registry, log),
    workerRouterOptions(flags, log),
  );
  for (const worker of workers) router.addWorker(await connectWorker(worker.url));
  const frontend = await startFrontend({ host: flags.host, port: flags.port, router, metricsRegistry: registry, toolCallParser: flags["tool-call-parser"], reasoningParser: flags["reasoning-parser"] });
  log.info(`${workers.length} ${flags.engine} worker(s): ${workers.map((w, i) => `${roles[i].id} (${roles[i].mode}) ${w.url}`).join(", ")}`);
  log.info(`OpenAI API at ${frontend.url}/v1 serving '${model.servedName}'`);
  return {
    url: frontend.url,
    workers,
    async stop(gracePeriodMs = 0) {
      await frontend.close(gracePeriodMs);
      await router.close();
      await Promise.all(workers.map((w) => w.close(gracePeriodMs)));
    },
  };
}

export async function serveCommand(argv: string[]): Promise<void> {
  const handle = await serve(argv);
  console.log(`${handle.url}/v1`);
  exitOnSignals((grace) => handle.stop(grace), createLogger("serve"));
}
