/**
 * KV events from NATS instead of one KvEvents stream per worker: several routers (frontends,
 * standalone routers) follow the same workers without each holding a stream to every worker.
 *
 * Per worker: subscribe to its event subject, then ask for a snapshot (request/reply). Live
 * batches that arrive before the snapshot are held and applied after it when newer than it; a
 * sequence gap triggers a new snapshot request. See src/worker/nats_kv_events.ts for the
 * publishing side.
 */
import { fromBinary } from "@bufbuild/protobuf";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { KvEventBatchSchema, type KvEventBatch } from "../../../gen/switchyard/worker/v1/worker_pb.ts";
import type { Logger } from "../../runtime/logger.ts";
import { kvEventsSubject, kvSnapshotSubject } from "../../worker/nats_kv_events.ts";
import type { WorkerHandle } from "../worker_handle.ts";
import type { Selection, SelectionRequest, SyncWorkerSelector } from "../worker_selector.ts";
import type { KvIndexer } from "./kv_indexer.ts";
import type { KvSelector } from "./kv_selector.ts";

const SNAPSHOT_TIMEOUT_MS = 2000;

class WorkerFollow {
  private readonly subscription: Subscription;
  /** Live batches received while a snapshot is on its way. */
  private held: KvEventBatch[] | undefined = [];
  private closed = false;

  constructor(
    private readonly nc: NatsConnection,
    private readonly indexer: KvIndexer,
    private readonly model: string,
    private readonly workerId: string,
    private readonly log: Logger,
  ) {
    this.subscription = nc.subscribe(kvEventsSubject(model, workerId), {
      callback: (err, msg) => {
        if (err || this.closed) return;
        let batch: KvEventBatch;
        try {
          batch = fromBinary(KvEventBatchSchema, msg.data);
        } catch (cause) {
          this.log.warn(`undecodable KV event batch from ${workerId}`, cause);
          return;
        }
        this.onLive(batch);
      },
    });
    void this.resync();
  }

  close(): void {
    this.closed = true;
    this.subscription.unsubscribe();
  }

  private onLive(batch: KvEventBatch): void {
    if (this.held) {
      this.held.push(batch);
      return;
    }
    const outcome = this.indexer.applyEvents(this.workerId, batch);
    if (outcome === "gap" || outcome === "awaiting_snapshot") void this.resync();
  }

  private async resync(): Promise<void> {
    this.held ??= [];
    for (let attempt = 0; !this.closed; attempt++) {
      try {
        // The subscription is registered with the server before the request goes out.
        await this.nc.flush();
        const reply = await this.nc.request(kvSnapshotSubject(this.model, this.workerId), new Uint8Array(), { timeout: SNAPSHOT_TIMEOUT_MS });
        const snapshot = fromBinary(KvEventBatchSchema, reply.data);
        this.indexer.applyEvents(this.workerId, snapshot, { snapshot: true });
        const held = this.held ?? [];
        this.held = undefined;
        for (const batch of held) if (batch.sequence > snapshot.sequence) this.onLive(batch);
        return;
      } catch (err) {
        if (attempt === 0) this.log.warn(`no KV snapshot from ${this.workerId} over NATS yet; retrying`, err);
        await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 100 * 2 ** attempt)));
      }
    }
  }
}

/** The KV selector, fed from NATS subjects; it must be built with kvEventSource "external". */
export class NatsFedKvSelector implements SyncWorkerSelector {
  private readonly follows = new Map<string, WorkerFollow>();

  constructor(
    readonly inner: KvSelector,
    private readonly nc: NatsConnection,
    private readonly log: Logger,
  ) {}

  select(request: SelectionRequest, candidates: readonly WorkerHandle[]): Selection {
    return this.inner.select(request, candidates);
  }

  workerAdded(worker: WorkerHandle): void {
    this.inner.workerAdded(worker);
    this.follows.get(worker.id)?.close();
    this.follows.set(worker.id, new WorkerFollow(this.nc, this.inner.indexer, worker.info.model, worker.id, this.log));
  }

  workerRemoved(workerId: string): void {
    this.follows.get(workerId)?.close();
    this.follows.delete(workerId);
    this.inner.workerRemoved(workerId);
  }

  requestFinished(requestId: string, worker: WorkerHandle): void {
    this.inner.requestFinished(requestId, worker);
  }

  async close(): Promise<void> {
    for (const follow of this.follows.values()) follow.close();
    this.follows.clear();
    await this.inner.close();
  }
}
