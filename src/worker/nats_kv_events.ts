/**
 * KV events on NATS, for setups where several routers follow the same workers: every batch is
 * published (protobuf-encoded KvEventBatch) on `switchyard.kv_events.<model>.<worker id>`, and
 * a router that joins late, or saw a sequence gap, asks `switchyard.kv_snapshot.<model>.<worker
 * id>` for a snapshot batch (request/reply) and continues from its sequence number. A router
 * for one model can follow all its workers with `switchyard.kv_events.<model>.*`.
 */
import { toBinary } from "@bufbuild/protobuf";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { KvEventBatchSchema } from "../../gen/switchyard/worker/v1/worker_pb.ts";
import type { Logger } from "../runtime/logger.ts";
import type { KvEventPublisher } from "./kv_event_publisher.ts";

export const kvEventsSubject = (model: string, workerId: string) => `switchyard.kv_events.${natsToken(model)}.${natsToken(workerId)}`;
export const kvSnapshotSubject = (model: string, workerId: string) => `switchyard.kv_snapshot.${natsToken(model)}.${natsToken(workerId)}`;

/** Subject tokens may not contain '.', '*', '>' or whitespace. */
function natsToken(id: string): string {
  return id.replace(/[.*>\s]/g, "_");
}

export class NatsKvEventBridge {
  private readonly abort = new AbortController();
  private readonly done: Promise<void>;
  private readonly snapshots: Subscription;

  constructor(nc: NatsConnection, publisher: KvEventPublisher, model: string, workerId: string, log: Logger) {
    const subject = kvEventsSubject(model, workerId);
    this.done = (async () => {
      let first = true;
      try {
        for await (const batch of publisher.subscribe(this.abort.signal)) {
          // The opening snapshot is for stream subscribers; NATS subscribers ask for theirs.
          if (first) {
            first = false;
            continue;
          }
          nc.publish(subject, toBinary(KvEventBatchSchema, batch));
        }
      } catch (err) {
        if (!this.abort.signal.aborted) log.error("KV events stopped flowing to NATS", err);
      }
    })();
    this.snapshots = nc.subscribe(kvSnapshotSubject(model, workerId), {
      callback: (err, msg) => {
        if (err) return;
        msg.respond(toBinary(KvEventBatchSchema, publisher.snapshot()));
      },
    });
  }

  async close(): Promise<void> {
    this.abort.abort();
    this.snapshots.unsubscribe();
    await this.done;
  }
}
