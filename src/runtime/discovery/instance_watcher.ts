/**
 * A frontend's view of the discovery bucket: reports instances as they come up and go down.
 * "Down" means deleted (a clean deregistration) or not renewed within the TTL (a worker that
 * died, or lost NATS). The watch is reopened after any NATS outage, and stale records replayed
 * from the bucket are ignored, so the view converges to the live workers.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import type { Logger } from "../logger.ts";
import { InstanceRecordSchema, type InstanceRecord } from "./instance_record.ts";
import { openInstancesBucket } from "./instance_registration.ts";

export interface InstanceListener {
  up(record: InstanceRecord): void;
  down(id: string, reason: "deregistered" | "expired"): void;
}

export class InstanceWatcher {
  /** KV key → the instance's id and the local time (ms) its record was last renewed. */
  private readonly live = new Map<string, { id: string; seenMs: number }>();
  private readonly abort = new AbortController();
  private expiryTimer?: NodeJS.Timeout;
  private loop?: Promise<void>;

  constructor(
    private readonly nc: NatsConnection,
    private readonly listener: InstanceListener,
    private readonly log: Logger,
    private readonly ttlMs: number,
  ) {}

  start(): void {
    this.loop = this.watchForever();
    this.expiryTimer = setInterval(() => this.expire(), Math.max(100, this.ttlMs / 4));
  }

  async close(): Promise<void> {
    this.abort.abort();
    clearInterval(this.expiryTimer);
    await this.loop;
  }

  private expire(): void {
    const now = Date.now();
    for (const [key, { id, seenMs }] of this.live) {
      if (now - seenMs > this.ttlMs) {
        this.live.delete(key);
        this.log.warn(`instance ${id} not renewed for ${this.ttlMs} ms: dropping it`);
        this.listener.down(id, "expired");
      }
    }
  }

  private async watchForever(): Promise<void> {
    let failures = 0;
    while (!this.abort.signal.aborted) {
      try {
        const kv = await openInstancesBucket(this.nc, this.ttlMs);
        const watch = await kv.watch();
        const stop = () => watch.stop();
        this.abort.signal.addEventListener("abort", stop, { once: true });
        // The watcher ends when its consumer breaks (e.g. the NATS server restarted without
        // its JetStream state); a NATS reconnect also restarts it to be safe.
        const statusWatch = (async () => {
          for await (const s of this.nc.status()) if (s.type === "reconnect") return watch.stop();
        })();
        failures = 0;
        for await (const entry of watch) {
          if (entry.operation === "PUT") this.onPut(entry.key, entry.value, entry.created.getTime());
          else this.onDelete(entry.key);
        }
        this.abort.signal.removeEventListener("abort", stop);
        void statusWatch;
      } catch (err) {
        if (this.abort.signal.aborted) return;
        if (failures++ === 0) this.log.warn("discovery watch failed; retrying", err);
      }
      await new Promise((resolve) => setTimeout(resolve, Math.min(2000, 100 * 2 ** failures)));
    }
  }

  private onPut(key: string, value: Uint8Array, createdMs: number): void {
    let record: InstanceRecord;
    try {
      record = InstanceRecordSchema.parse(JSON.parse(new TextDecoder().decode(value)));
    } catch (err) {
      this.log.warn("ignoring a malformed instance record", err);
      return;
    }
    // A record replayed from the bucket that nobody renewed lately belongs to a dead worker.
    if (Date.now() - createdMs > this.ttlMs) return;
    const known = this.live.has(key);
    this.live.set(key, { id: record.id, seenMs: Date.now() });
    if (!known) this.listener.up(record);
  }

  private onDelete(key: string): void {
    const instance = this.live.get(key);
    if (!instance) return;
    this.live.delete(key);
    this.listener.down(instance.id, "deregistered");
  }
}
