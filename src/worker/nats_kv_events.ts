/**
 * KV events on NATS, for setups where several routers follow the same workers: every batch is
 * published (protobuf-encoded KvEventBatch) on `switchyard.kv_events.<worker id>`, and a
 * router that joins late, or saw a sequence gap, asks `switchyard.kv_snapshot.<worker id>` for
 * a snapshot batch (request/reply) and continues from its sequence number.
 */
import { toBinary } from "@bufbuild/protobuf";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { KvEventBatchSchema } from "../../gen/switchyard/worker/v1/worker_pb.ts";
import type { Logger } from "../runtime/logger.ts";
import type { KvEventPublisher } from "./kv_event_publisher.ts";

export const kvEventsSubject = (workerId: string) => `switchyard.kv_events.${natsToken(workerId)}`;
export const kvSnapshotSubject = (workerId: string) => `switchyard.kv_snapshot.${natsToken(workerId)}`;

/** Subject tokens may not contain '.', '*', '>' or whitespace. */
function natsToken(id: string): string {
  return id.replace(/[.*>\s]/g, "_");
}

export class NatsKvEventBridge {
  private readonly abort = new AbortController();
  private readonly done: Promise<void>;
  private readonly snapshots: Subscription;

  constructor(nc: NatsConnection, publisher: KvEventPublisher, workerId: string, log: Logger) {
    const subject = kvEventsSubject(workerId);
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
    this.snapshots = nc.subscribe(kvSnapshotSubject(workerId), {
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
