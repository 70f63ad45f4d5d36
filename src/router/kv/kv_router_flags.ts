/**
 * The KV router's command-line flags (for `frontend`, `serve` and `router`), named as Dynamo
 * names them, and their mapping onto KvSelectorOptions. `--no-kv-events` turns event
 * following off (parseArgs' allowNegative).
 */
import { z } from "zod";
import type { KvSelectorOptions } from "./kv_selector.ts";

export const KV_ROUTER_OPTIONS = {
  "kv-overlap-score-weight": { type: "string" },
  "router-temperature": { type: "string" },
  "kv-events": { type: "boolean" },
  "busy-threshold": { type: "string" },
  "router-max-waiting-requests": { type: "string" },
  "router-prediction-ttl-secs": { type: "string" },
} as const;

export const KvRouterFlagsSchema = z.object({
  "kv-overlap-score-weight": z.coerce.number().min(0).default(1.0),
  "router-temperature": z.coerce.number().min(0).default(0),
  "kv-events": z.boolean().default(true),
  "busy-threshold": z.coerce.number().gt(0).max(1).optional(),
  "router-max-waiting-requests": z.coerce.number().int().min(0).optional(),
  "router-prediction-ttl-secs": z.coerce.number().gt(0).default(120),
});

export type KvRouterFlags = z.infer<typeof KvRouterFlagsSchema>;

export function kvSelectorOptions(flags: KvRouterFlags, blockSize?: number): KvSelectorOptions {
  return {
    blockSize,
    kvOverlapScoreWeight: flags["kv-overlap-score-weight"],
    routerTemperature: flags["router-temperature"],
    useKvEvents: flags["kv-events"],
    busyThreshold: flags["busy-threshold"],
    maxWaitingRequests: flags["router-max-waiting-requests"],
    predictionTtlMs: flags["router-prediction-ttl-secs"] * 1000,
  };
}
