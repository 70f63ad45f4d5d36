/**
 * Discovery over NATS: follows every instance registered in the discovery bucket, learns model
 * cards from the records, and stops routing to an instance as soon as it deregisters or its
 * record expires.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import type { InstanceRecord } from "../runtime/discovery/instance_record.ts";
import { InstanceWatcher } from "../runtime/discovery/instance_watcher.ts";
import type { Logger } from "../runtime/logger.ts";
import { followWorker, type FollowOptions } from "./worker_follower.ts";
import type { WorkerSink } from "./worker_selector.ts";

export class NatsWorkers {
  private readonly followed = new Map<string, { abort: AbortController; done: Promise<void> }>();
  private readonly watcher: InstanceWatcher;

  constructor(
    nc: NatsConnection,
    private readonly router: WorkerSink,
    private readonly log: Logger,
    ttlMs: number,
    private readonly options: FollowOptions = {},
  ) {
    this.watcher = new InstanceWatcher(nc, { up: (r) => this.up(r), down: (id) => this.down(id) }, log, ttlMs);
    this.watcher.start();
  }

  async close(): Promise<void> {
    await this.watcher.close();
    await Promise.all([...this.followed.keys()].map((id) => this.down(id)));
  }

  private up(record: InstanceRecord): void {
    this.router.addModelCard?.({ name: record.model, ...record.card });
    const abort = new AbortController();
    const done = followWorker(record.address, this.router, this.log, abort.signal, this.options);
    this.followed.set(record.id, { abort, done });
  }

  private async down(id: string): Promise<void> {
    const followed = this.followed.get(id);
    if (!followed) return;
    this.followed.delete(id);
    followed.abort.abort();
    this.router.removeWorker(id);
    await followed.done;
  }
}
