/**
 * `switchyard frontend`: the OpenAI HTTP gateway with the router inside. Workers come from
 * --worker URLs, or from NATS discovery with --nats (which also brings the model cards).
 */
import { Registry } from "prom-client";
import { z } from "zod";
import { startFrontend } from "../frontend/server.ts";
import { NatsWorkers } from "../router/nats_workers.ts";
import { RemoteSelector } from "../router/remote_selector.ts";
import type { ModelCard } from "../router/router.ts";
import { StaticWorkers } from "../router/static_workers.ts";
import { WorkerRouter } from "../router/worker_router.ts";
import { connectNats } from "../runtime/discovery/nats_client.ts";
import { DEFAULT_REGISTRATION_TIMING } from "../runtime/discovery/instance_registration.ts";
import { createLogger } from "../runtime/logger.ts";
import { exitOnSignals } from "../runtime/shutdown.ts";
import { HOST_PORT_OPTIONS, intFlag, parseCommand, UsageError } from "./args.ts";
import { OPENAI_OPTIONS, OPENAI_USAGE, OpenAIFlagsSchema, ROUTER_OPTIONS, ROUTER_USAGE, RouterFlagsSchema, selectorFromFlags, workerRouterOptions } from "./frontend_options.ts";
import { resolveModel } from "./model_source.ts";

export const FRONTEND_USAGE = `switchyard frontend (--worker URL ... | --nats URL) [options]
  --host H              HTTP address (default 127.0.0.1)
  --port N              HTTP port (default 8000; 0 picks a free one)
  --worker URL          a worker's Connect URL, e.g. http://127.0.0.1:9000 (repeatable)
  --nats URL            discover workers and models over NATS (default: $SWITCHYARD_NATS_URL)
  --model DIR           model folder for the tokenizer and chat template (default with --worker:
                        the tiny model; with --nats: what workers announce)
  --served-model-name N the name workers serve the model under (default: --model as given)
  --router-url URL      route with a standalone 'switchyard router' instead of in-process
  --max-model-len N     context length (default: config.json's max_position_embeddings)
${OPENAI_USAGE}
${ROUTER_USAGE}`;

const FrontendFlagsSchema = RouterFlagsSchema.extend(OpenAIFlagsSchema.shape).extend({
  host: z.string().default("127.0.0.1"),
  port: intFlag(0, 65535).default(8000),
  worker: z.array(z.string().url()).default([]),
  nats: z.string().min(1).optional(),
  "router-url": z.string().url().optional(),
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
      ...OPENAI_OPTIONS,
      worker: { type: "string", multiple: true },
      nats: { type: "string" },
      "router-url": { type: "string" },
      model: { type: "string" },
      "served-model-name": { type: "string" },
      "max-model-len": { type: "string" },
      "block-size": { type: "string" },
    },
    FrontendFlagsSchema,
  );
  const natsUrl = flags.nats ?? process.env.SWITCHYARD_NATS_URL;
  if (flags.worker.length === 0 && !natsUrl) throw new UsageError("give --worker URL (repeatable) or --nats URL");
  const log = createLogger("frontend");
  const cards: ModelCard[] = [];
  if (flags.model || !natsUrl) {
    const model = resolveModel(flags.model, flags["served-model-name"], log);
    cards.push({ name: model.servedName, path: model.folder.path, maxModelLen: flags["max-model-len"] ?? model.folder.maxPositionEmbeddings, blockSize: flags["block-size"] });
  }
  const registry = new Registry();
  const nc = natsUrl ? await connectNats(natsUrl, "switchyard-frontend", log) : undefined;
  const selector = flags["router-url"] ? new RemoteSelector(flags["router-url"], log) : selectorFromFlags(flags, cards[0]?.blockSize, registry, log, nc);
  const router = new WorkerRouter(cards, selector, workerRouterOptions(flags, log));
  const discoveries: { close(): Promise<void> }[] = [];
  if (flags.worker.length > 0) {
    const workers = new StaticWorkers(flags.worker, router, log);
    discoveries.push(workers);
    await workers.firstContact();
  }
  if (nc) discoveries.push(new NatsWorkers(nc, router, log, DEFAULT_REGISTRATION_TIMING.ttlMs));
  const frontend = await startFrontend({ host: flags.host, port: flags.port, router, metricsRegistry: registry, toolCallParser: flags["tool-call-parser"], reasoningParser: flags["reasoning-parser"] });
  log.info(`OpenAI API at ${frontend.url}/v1${natsUrl ? `, discovering workers over NATS at ${natsUrl}` : ""}`);
  console.log(`${frontend.url}/v1`);
  exitOnSignals(async (grace) => {
    await frontend.close(grace);
    await Promise.all(discoveries.map((d) => d.close()));
    await router.close();
    await nc?.close();
  }, log);
}
