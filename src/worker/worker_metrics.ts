/**
 * The worker's Prometheus metrics (switchyard_worker_*). Engine figures are read from
 * engine.stats() at scrape time, so the step loop never pays for metrics.
 */
import { Counter, Gauge, Registry } from "prom-client";
import type { Engine } from "../engine/engine.ts";
import type { KvEventPublisher } from "./kv_event_publisher.ts";

export function registerWorkerMetrics(registry: Registry, engine: Engine, kvEvents: KvEventPublisher, labels: { worker_id: string; model: string }): void {
  const labelNames = ["worker_id", "model"] as const;
  const gauge = (name: string, help: string, read: () => number) =>
    new Gauge({ name, help, labelNames, registers: [registry], collect() { this.set(labels, read()); } });
  // Monotonic engine counters are exposed as counters by setting the running total on scrape.
  const counter = (name: string, help: string, read: () => number) =>
    new Counter({
      name, help, labelNames, registers: [registry],
      collect() {
        this.reset();
        this.inc(labels, read());
      },
    });
  gauge("switchyard_worker_running_requests", "Requests running in the engine.", () => engine.stats().runningRequests);
  gauge("switchyard_worker_waiting_requests", "Requests waiting for the engine.", () => engine.stats().waitingRequests);
  gauge("switchyard_worker_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use by requests.", () => {
    const s = engine.stats();
    return s.kvBlocksTotal === 0 ? 0 : s.kvBlocksUsed / s.kvBlocksTotal;
  });
  gauge("switchyard_worker_kv_blocks", "KV-cache blocks in the pool.", () => engine.stats().kvBlocksTotal);
  counter("switchyard_worker_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.", () => engine.stats().prefixCacheQueries);
  counter("switchyard_worker_prefix_cache_hits_total", "Prompt tokens found in the prefix cache.", () => engine.stats().prefixCacheHits);
  counter("switchyard_worker_preemptions_total", "Requests preempted for lack of KV blocks.", () => engine.stats().preemptions);
  counter("switchyard_worker_kv_events_published_total", "KV events published.", () => kvEvents.eventsPublished);
}
