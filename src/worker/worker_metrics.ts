/**
 * The worker's Prometheus metrics (switchyard_worker_*). Engine figures are read from
 * engine.stats() at scrape time, so the step loop never pays for metrics.
 */
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { Engine } from "../engine/engine.ts";
import type { Disaggregation } from "./disagg/disaggregation.ts";
import type { KvEventPublisher } from "./kv_event_publisher.ts";

type WorkerLabels = { worker_id: string; model: string };

export function registerWorkerMetrics(
  registry: Registry,
  engine: Engine,
  kvEvents: KvEventPublisher,
  labels: WorkerLabels,
  disaggregation?: Disaggregation,
): void {
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
  if (disaggregation) registerKvTransferMetrics(registry, disaggregation, labels);
}

/**
 * Disaggregated serving: reads of remote prefills' blocks (decode side) and blocks held for
 * remote decodes (prefill side). Counted as transfers happen, not at scrape time.
 */
function registerKvTransferMetrics(registry: Registry, disaggregation: Disaggregation, labels: WorkerLabels): void {
  const labelNames = ["worker_id", "model"] as const;
  const registers = [registry];
  const transfers = new Counter({ name: "switchyard_worker_kv_transfers_total", help: "Reads of a remote prefill's KV blocks that completed.", labelNames, registers });
  const bytes = new Counter({ name: "switchyard_worker_kv_transfer_bytes_total", help: "KV bytes read from prefill workers.", labelNames, registers });
  const seconds = new Histogram({
    name: "switchyard_worker_kv_transfer_seconds",
    help: "Time to read a remote prefill's KV blocks, from posting the read to its last byte.",
    labelNames,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers,
  });
  const failures = new Counter({
    name: "switchyard_worker_kv_transfer_failures_total",
    help: "Reads of a remote prefill's KV blocks that failed, by reason (closed, timeout, rejected, canceled, metadata, ...).",
    labelNames: [...labelNames, "reason"],
    registers,
  });
  const recomputes = new Counter({
    name: "switchyard_worker_kv_transfer_local_recomputes_total",
    help: "Remote prefills whose KV could not be read, so that this worker computed the prompt itself.",
    labelNames,
    registers,
  });
  const releases = new Counter({
    name: "switchyard_worker_kv_held_releases_total",
    help: "Requests whose KV blocks, held for a remote decode, were freed, by reason (notified, timeout, stop, cancelled, undelivered, shutdown).",
    labelNames: [...labelNames, "reason"],
    registers,
  });
  new Gauge({
    name: "switchyard_worker_kv_held_requests",
    help: "Requests whose KV blocks are held for a remote decode.",
    labelNames,
    registers,
    collect() {
      this.set(labels, disaggregation.numHeld);
    },
  });
  new Counter({
    name: "switchyard_worker_kv_transfer_served_bytes_total",
    help: "KV bytes decode workers read from this worker.",
    labelNames,
    registers,
    collect() {
      this.reset();
      this.inc(labels, disaggregation.bytesServed);
    },
  });
  disaggregation.events.subscribe((event) => {
    switch (event.type) {
      case "fetched":
        transfers.inc(labels);
        bytes.inc(labels, event.bytes);
        seconds.observe(labels, event.seconds);
        break;
      case "fetch_failed":
        failures.inc({ ...labels, reason: event.reason });
        if (event.recomputed) recomputes.inc(labels);
        break;
      case "released":
        releases.inc({ ...labels, reason: event.reason });
        break;
    }
  });
}
