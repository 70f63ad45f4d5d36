/**
 * Numbers an engine's KV events into batches and fans them out to subscribers (KvEvents
 * streams now; NATS subjects later). Each subscriber starts from a snapshot of the cache, so
 * joining late or rejoining after a gap rebuilds the subscriber's view exactly.
 */
import { create } from "@bufbuild/protobuf";
import {
  KvEventBatchSchema,
  KvEventSchema,
  type KvEvent as WireKvEvent,
  type KvEventBatch,
} from "../../gen/switchyard/worker/v1/worker_pb.ts";
import type { Engine, KvEvent } from "../engine/engine.ts";

/** A subscriber this far behind is cut off; it resubscribes and gets a fresh snapshot. */
const MAX_QUEUED_BATCHES = 4096;

export class SubscriberTooSlowError extends Error {
  constructor() {
    super(`KV event subscriber fell more than ${MAX_QUEUED_BATCHES} batches behind; resubscribe for a fresh snapshot`);
    this.name = "SubscriberTooSlowError";
  }
}

type Subscriber = (batch: KvEventBatch | SubscriberTooSlowError) => void;

export class KvEventPublisher {
  private sequence = 0n;
  private readonly subscribers = new Set<Subscriber>();
  private readonly unsubscribeEngine: () => void;
  private publishedEvents = 0;

  constructor(
    private readonly engine: Engine,
    private readonly workerId: string,
  ) {
    this.unsubscribeEngine = engine.onKvEvents((events) => this.publish(events));
  }

  /** KV events published so far (for metrics). */
  get eventsPublished(): number {
    return this.publishedEvents;
  }

  /** A batch that rebuilds the cache contents, numbered with the last published sequence. */
  snapshot(): KvEventBatch {
    return this.batch(this.engine.kvSnapshot(), this.sequence);
  }

  /** The snapshot batch, then every live batch, until `signal` aborts. */
  async *subscribe(signal: AbortSignal): AsyncGenerator<KvEventBatch> {
    const queue: (KvEventBatch | SubscriberTooSlowError)[] = [];
    let wake: (() => void) | undefined;
    const subscriber: Subscriber = (item) => {
      if (queue.length >= MAX_QUEUED_BATCHES) {
        queue.length = 0;
        queue.push(new SubscriberTooSlowError());
        this.subscribers.delete(subscriber);
      } else {
        queue.push(item);
      }
      wake?.();
    };
    // Snapshot and registration happen in the same tick, so no event falls between them.
    const snapshot = this.snapshot();
    this.subscribers.add(subscriber);
    const onAbort = () => wake?.();
    signal.addEventListener("abort", onAbort);
    try {
      yield snapshot;
      while (!signal.aborted) {
        const item = queue.shift();
        if (item === undefined) {
          await new Promise<void>((resolve) => (wake = resolve));
          wake = undefined;
          continue;
        }
        if (item instanceof SubscriberTooSlowError) throw item;
        yield item;
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
      this.subscribers.delete(subscriber);
    }
  }

  close(): void {
    this.unsubscribeEngine();
    this.subscribers.clear();
  }

  private publish(events: KvEvent[]): void {
    if (events.length === 0) return;
    this.sequence++;
    this.publishedEvents += events.length;
    if (this.subscribers.size === 0) return;
    const batch = this.batch(events, this.sequence);
    for (const subscriber of this.subscribers) subscriber(batch);
  }

  private batch(events: KvEvent[], sequence: bigint): KvEventBatch {
    return create(KvEventBatchSchema, {
      sequence,
      timestampMs: BigInt(Date.now()),
      workerId: this.workerId,
      events: events.map(toWireEvent),
    });
  }
}

export function toWireEvent(event: KvEvent): WireKvEvent {
  switch (event.type) {
    case "stored":
      return create(KvEventSchema, {
        event: {
          case: "blockStored",
          value: {
            blockHashes: event.blockHashes,
            parentBlockHash: event.parentBlockHash,
            tokenIds: event.tokenIds,
            blockSize: event.blockSize,
          },
        },
      });
    case "removed":
      return create(KvEventSchema, { event: { case: "blockRemoved", value: { blockHashes: event.blockHashes } } });
    case "cleared":
      return create(KvEventSchema, { event: { case: "allBlocksCleared", value: {} } });
  }
}
