/** Flags shared by `switchyard frontend`, `serve` and `router` for routing. */
import type { NatsConnection } from "@nats-io/transport-node";
import type { Registry } from "prom-client";
import { z } from "zod";
import { KV_ROUTER_OPTIONS, KvRouterFlagsSchema, kvSelectorOptions, type KvRouterFlags } from "../router/kv/kv_router_flags.ts";
import { KvSelector } from "../router/kv/kv_selector.ts";
import { NatsFedKvSelector } from "../router/kv/nats_kv_event_source.ts";
import { createSelector } from "../router/create_selector.ts";
import type { SyncWorkerSelector, WorkerSelector } from "../router/worker_selector.ts";
import type { WorkerRouterOptions } from "../router/worker_router.ts";
import type { Logger } from "../runtime/logger.ts";
import { intFlag, UsageError } from "./args.ts";
import { REASONING_PARSERS } from "../frontend/reasoning.ts";
import { TOOL_CALL_PARSERS } from "../frontend/tool_calls.ts";

/** Flags of the OpenAI frontend itself, shared by `switchyard frontend` and `serve`. */
export const OPENAI_OPTIONS = {
  "tool-call-parser": { type: "string" },
  "reasoning-parser": { type: "string" },
} as const;

export const OpenAIFlagsSchema = z.object({
  "tool-call-parser": z.enum(TOOL_CALL_PARSERS).optional(),
  "reasoning-parser": z.enum(REASONING_PARSERS).optional(),
});

export const OPENAI_USAGE = `  --tool-call-parser P  read tool calls out of chat output, so tools with tool_choice "auto" work:
                        hermes (Qwen2.5, Qwen3, Hermes models); default: none (such requests get a 400)
  --reasoning-parser P  give a thinking model's reasoning as reasoning_content, apart from the
                        answer: qwen3 (<think>...</think>); default: none (it stays in the content)`;

export const ROUTER_OPTIONS = {
  "router-mode": { type: "string" },
  "migration-limit": { type: "string" },
  "max-local-prefill-length": { type: "string" },
  "max-prefill-queue-size": { type: "string" },
  ...KV_ROUTER_OPTIONS,
  "kv-events-transport": { type: "string" },
} as const;

export const RouterFlagsSchema = KvRouterFlagsSchema.extend({
  "router-mode": z.enum(["round-robin", "random", "kv"]).default("round-robin"),
  "migration-limit": intFlag(0, 100).default(0),
  "max-local-prefill-length": intFlag(0, 10_000_000).default(0),
  "max-prefill-queue-size": intFlag(0, 1_000_000).default(0),
  "kv-events-transport": z.enum(["stream", "nats"]).optional(),
});

export type RouterFlags = z.infer<typeof RouterFlagsSchema>;

export const ROUTER_USAGE = `  --router-mode M       round-robin | random | kv (default round-robin)
  --migration-limit N   move a request to another worker up to N times when its worker fails (default 0)
  disaggregated serving (when workers run with --disaggregation-mode prefill / decode):
  --max-local-prefill-length N    prefill on the decode worker when fewer than N prompt tokens are
                                  not in its prefix cache (default 0: always on a prefill worker)
  --max-prefill-queue-size N      prefill on the decode worker when every prefill worker has N or
                                  more requests in flight (default 0: no limit)
  kv mode:
  --kv-overlap-score-weight W     weight of the prefill saved by cached blocks (default 1.0)
  --router-temperature T          0 picks the cheapest worker; above 0, softmax sampling (default 0)
  --no-kv-events                  predict caches from routing decisions instead of KV events
  --busy-threshold F              skip workers whose KV usage is over F (0..1]; 503 when all are
  --router-max-waiting-requests N skip workers with more waiting requests than N
  --router-prediction-ttl-secs S  with --no-kv-events: how long routed blocks count as cached (120)
  --kv-events-transport T         stream (a KvEvents stream per worker) | nats (default with --nats)`;

/** The WorkerRouter's options that come from flags. */
export function workerRouterOptions(flags: RouterFlags, log: Logger): WorkerRouterOptions {
  return {
    migrationLimit: flags["migration-limit"],
    prefillPolicy: {
      maxLocalPrefillLength: flags["max-local-prefill-length"],
      maxPrefillQueueSize: flags["max-prefill-queue-size"],
    },
    log,
  };
}

export function selectorFromFlags(flags: RouterFlags, blockSize: number | undefined, registry: Registry, log: Logger, nc?: NatsConnection): WorkerSelector {
  if (flags["router-mode"] === "kv") return kvSelectorFromFlags(flags, blockSize, registry, log, nc);
  return createSelector(flags["router-mode"]);
}

/** The KV selector, fed by KV events over NATS when there is a connection, else by streams. */
export function kvSelectorFromFlags(
  flags: KvRouterFlags & { "kv-events-transport"?: "stream" | "nats" },
  blockSize: number | undefined,
  registry: Registry,
  log: Logger,
  nc?: NatsConnection,
): SyncWorkerSelector {
  const transport = flags["kv-events-transport"] ?? (nc ? "nats" : "stream");
  if (transport === "nats" && !nc) throw new UsageError("--kv-events-transport nats needs --nats");
  const kvLog = log.child("kv-router");
  const options = { ...kvSelectorOptions(flags, blockSize), registry, log: kvLog };
  if (transport === "stream") return new KvSelector(options);
  return new NatsFedKvSelector(new KvSelector({ ...options, kvEventSource: "external" }), nc!, kvLog);
}
