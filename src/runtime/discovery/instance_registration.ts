/**
 * A worker's registration in the discovery bucket: written on start, renewed every heartbeat,
 * deleted on shutdown. A record not renewed within its TTL counts as gone on every frontend,
 * so a worker that dies without deregistering disappears by itself.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import { Kvm, type KV } from "@nats-io/kv";
import type { Logger } from "../logger.ts";
import { INSTANCES_BUCKET, instanceKey, type InstanceRecord } from "./instance_record.ts";

export interface RegistrationTiming {
  heartbeatMs: number;
  ttlMs: number;
}

export const DEFAULT_REGISTRATION_TIMING: RegistrationTiming = { heartbeatMs: 2000, ttlMs: 6000 };

export async function openInstancesBucket(nc: NatsConnection, ttlMs: number): Promise<KV> {
  // create() opens the bucket when it exists. The stream's max age is a backstop that makes
  // JetStream itself drop records nobody renews; frontends expire them sooner on their own.
  return new Kvm(nc).create(INSTANCES_BUCKET, { history: 1, ttl: ttlMs * 10 });
}

export class InstanceRegistration {
  private timer?: NodeJS.Timeout;
  private stopped = false;
  private kv?: KV;
  private failing = false;

  constructor(
    private readonly nc: NatsConnection,
    private readonly record: Omit<InstanceRecord, "renewedAtMs">,
    private readonly log: Logger,
    private readonly timing: RegistrationTiming = DEFAULT_REGISTRATION_TIMING,
  ) {}

  /** Registers once (throws if NATS refuses), then keeps renewing in the background. */
  async start(): Promise<void> {
    await this.renew();
    this.schedule();
  }

  /** Deletes the record; the worker stops receiving new requests from every frontend. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    try {
      // Bounded: with NATS unreachable, shutdown must not wait for it; the TTL covers us.
      const deregister = (async () => (this.kv ?? (await openInstancesBucket(this.nc, this.timing.ttlMs))).delete(instanceKey(this.record.id)))();
      await Promise.race([
        deregister,
        new Promise((_, reject) => setTimeout(() => reject(new Error("NATS did not answer within 2 s")), 2000).unref()),
      ]);
    } catch (err) {
      this.log.warn(`could not deregister ${this.record.id}; frontends will drop it after ${this.timing.ttlMs} ms`, err);
    }
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(async () => {
      try {
        await this.renew();
        if (this.failing) this.log.info(`re-registered ${this.record.id} in discovery`);
        this.failing = false;
      } catch (err) {
        // After a NATS restart the bucket may be gone: open (re-create) it on the next beat.
        this.kv = undefined;
        if (!this.failing) this.log.warn(`could not renew ${this.record.id} in discovery; retrying`, err);
        this.failing = true;
      }
      this.schedule();
    }, this.timing.heartbeatMs);
  }

  private async renew(): Promise<void> {
    this.kv ??= await openInstancesBucket(this.nc, this.timing.ttlMs);
    const record: InstanceRecord = { ...this.record, renewedAtMs: Date.now() };
    await this.kv.put(instanceKey(record.id), JSON.stringify(record));
  }
}
