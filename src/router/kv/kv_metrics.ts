/** Prometheus metrics of the KV router (`switchyard_router_*`), on the registry it is given. */
import { Counter, Gauge, Histogram, type Registry } from "prom-client";

export type DecisionReason = "kv_overlap" | "load" | "all_busy";

export interface KvRouterMetrics {
  overlapBlocks: Histogram<"worker">;
  decisions: Counter<"reason">;
  kvEvents: Counter<"worker">;
  eventLagSeconds: Histogram;
  resyncs: Counter<"worker" | "cause">;
  /** Per-worker label values to drop when a worker leaves. */
  forgetWorker(workerId: string): void;
}

export function createKvRouterMetrics(registry: Registry, indexerBlocks: () => Map<string, number>): KvRouterMetrics {
  const registers = [registry];
  const overlapBlocks = new Histogram({
    name: "switchyard_router_overlap_blocks",
    help: "Prompt blocks already cached on the chosen worker, per routed request",
    labelNames: ["worker"] as const,
    buckets: [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
    registers,
  });
  const decisions = new Counter({
    name: "switchyard_router_decisions_total",
    help: "Routing decisions by reason: kv_overlap (chosen worker had cached blocks), load (no overlap anywhere; least loaded), all_busy (refused)",
    labelNames: ["reason"] as const,
    registers,
  });
  new Gauge({
    name: "switchyard_router_indexer_blocks",
    help: "KV blocks the router believes each worker caches",
    labelNames: ["worker"] as const,
    registers,
    collect() {
      this.reset();
      for (const [worker, blocks] of indexerBlocks()) this.set({ worker }, blocks);
    },
  });
  const kvEvents = new Counter({
    name: "switchyard_router_kv_events_total",
    help: "KV events applied to the indexer",
    labelNames: ["worker"] as const,
    registers,
  });
  const eventLagSeconds = new Histogram({
    name: "switchyard_router_kv_event_lag_seconds",
    help: "Time from a worker publishing a KV event batch to the router applying it",
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers,
  });
  const resyncs = new Counter({
    name: "switchyard_router_kv_resyncs_total",
    help: "Times a worker's entries were dropped and its KV events resubscribed, by cause (gap, reconnect)",
    labelNames: ["worker", "cause"] as const,
    registers,
  });
  return {
    overlapBlocks,
    decisions,
    kvEvents,
    eventLagSeconds,
    resyncs,
    forgetWorker(workerId) {
      overlapBlocks.remove({ worker: workerId });
      kvEvents.remove({ worker: workerId });
      for (const cause of ["gap", "reconnect"]) resyncs.remove({ worker: workerId, cause });
    },
  };
}
