/**
 * Follows one worker's KvEvents stream into an event sink (the indexer) until aborted. Each
 * subscription opens with a snapshot of the worker's cache, which replaces the sink's view of
 * that worker. When the sink reports a gap the subscription is reopened at once for a fresh
 * snapshot; when the stream fails or ends, the worker's entries are dropped (its cache is
 * unknown while disconnected) and the subscription is retried with exponential backoff.
 */
import { create } from "@bufbuild/protobuf";
import { KvEventsRequestSchema, type KvEventBatch } from "../../../gen/switchyard/worker/v1/worker_pb.ts";
import type { Logger } from "../../runtime/logger.ts";
import type { WorkerClient } from "../worker_handle.ts";
import type { ApplyOutcome } from "./kv_indexer.ts";
import { sleep } from "../../util/sleep.ts";

export interface KvEventSink {
  applyEvents(workerId: string, batch: KvEventBatch, options?: { snapshot?: boolean }): ApplyOutcome;
  resetWorker(workerId: string): void;
}

export type ResyncCause = "gap" | "reconnect";

export interface KvEventSubscriptionOptions {
  workerId: string;
  client: Pick<WorkerClient, "kvEvents">;
  sink: KvEventSink;
  signal: AbortSignal;
  log?: Logger;
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  onBatch?(batch: KvEventBatch, outcome: ApplyOutcome): void;
  onResync?(cause: ResyncCause): void;
}

export async function followKvEvents(options: KvEventSubscriptionOptions): Promise<void> {
  const { workerId, client, sink, signal, log } = options;
  const initialBackoffMs = options.initialBackoffMs ?? 100;
  const maxBackoffMs = options.maxBackoffMs ?? 5000;
  let backoffMs = initialBackoffMs;
  while (!signal.aborted) {
    let cause: ResyncCause = "reconnect";
    try {
      let snapshot = true;
      for await (const batch of client.kvEvents(create(KvEventsRequestSchema, {}), { signal })) {
        const outcome = sink.applyEvents(workerId, batch, { snapshot });
        options.onBatch?.(batch, outcome);
        if (snapshot) {
          snapshot = false;
          backoffMs = initialBackoffMs;
        }
        if (outcome === "gap") {
          cause = "gap";
          break;
        }
      }
      if (cause === "reconnect" && !signal.aborted) log?.warn(`KV event stream of worker ${workerId} ended; resubscribing`);
    } catch (err) {
      if (signal.aborted) break;
      log?.warn(`KV event stream of worker ${workerId} failed; resubscribing in ${backoffMs} ms`, err);
    }
    if (signal.aborted) break;
    sink.resetWorker(workerId);
    options.onResync?.(cause);
    if (cause === "gap") {
      log?.warn(`KV events of worker ${workerId} skipped a sequence number; resubscribing for a fresh snapshot`);
      continue;
    }
    await sleep(backoffMs, signal);
    backoffMs = Math.min(backoffMs * 2, maxBackoffMs);
  }
}
