/** `switchyard frontend`: the OpenAI HTTP gateway with the router inside, over --worker URLs. */
import { z } from "zod";
import { startFrontend } from "../frontend/server.ts";
import { createSelector } from "../router/create_selector.ts";
import { StaticWorkers } from "../router/static_workers.ts";
import { WorkerRouter } from "../router/worker_router.ts";
import { createLogger } from "../runtime/logger.ts";
import { exitOnSignals } from "../runtime/shutdown.ts";
import { HOST_PORT_OPTIONS, intFlag, parseCommand, UsageError } from "./args.ts";
import { ROUTER_OPTIONS, RouterFlagsSchema } from "./frontend_options.ts";
import { resolveModel } from "./model_source.ts";

export const FRONTEND_USAGE = `switchyard frontend --worker URL [--worker URL ...] [options]
  --host H              HTTP address (default 127.0.0.1)
  --port N              HTTP port (default 8000; 0 picks a free one)
  --worker URL          a worker's Connect URL, e.g. http://127.0.0.1:9000 (repeatable)
  --model DIR           model folder for the tokenizer and chat template (default: the tiny model)
  --served-model-name N the name workers serve the model under (default: --model as given)
  --max-model-len N     context length (default: config.json's max_position_embeddings)
  --router-mode M       round-robin | random (default round-robin)`;

const FrontendFlagsSchema = RouterFlagsSchema.extend({
  host: z.string().default("127.0.0.1"),
  port: intFlag(0, 65535).default(8000),
  worker: z.array(z.string().url()).default([]),
  model: z.string().optional(),
  "served-model-name": z.string().min(1).optional(),
  "max-model-len": intFlag(2).optional(),
  "block-size": intFlag(1, 1024).default(16),
});

export async function frontendCommand(argv: string[]): Promise<void> {
  const flags = parseCommand(
    argv,
    {
      ...HOST_PORT_OPTIONS,
      ...ROUTER_OPTIONS,
      worker: { type: "string", multiple: true },
      model: { type: "string" },
      "served-model-name": { type: "string" },
      "max-model-len": { type: "string" },
      "block-size": { type: "string" },
    },
    FrontendFlagsSchema,
  );
  if (flags.worker.length === 0) throw new UsageError("give at least one --worker URL (NATS discovery is not available yet)");
  const log = createLogger("frontend");
  const model = resolveModel(flags.model, flags["served-model-name"], log);
  const router = new WorkerRouter(
    new Map([[model.servedName, { name: model.servedName, path: model.folder.path, maxModelLen: flags["max-model-len"] ?? model.folder.maxPositionEmbeddings, blockSize: flags["block-size"] }]]),
    createSelector(flags["router-mode"]),
  );
  const discovery = new StaticWorkers(flags.worker, router, log);
  const frontend = await startFrontend({ host: flags.host, port: flags.port, router });
  log.info(`OpenAI API at ${frontend.url}/v1 serving '${model.servedName}' over ${flags.worker.length} worker URL(s)`);
  console.log(`${frontend.url}/v1`);
  exitOnSignals(async (grace) => {
    await frontend.close(grace);
    await discovery.close();
    await router.close();
  }, log);
}
