/** Test doubles for the KV router: wire batches, fake worker handles with a scripted KvEvents stream. */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  GetInfoResponseSchema,
  KvEventBatchSchema,
  KvEventSchema,
  LoadMetricsSchema,
  type GetInfoResponse,
  type KvEventBatch,
} from "../../gen/switchyard/worker/v1/worker_pb.ts";
import type { WorkerClient, WorkerHandle } from "../../src/router/worker_handle.ts";

type WireEvent = { stored: bigint[]; parent?: bigint } | { removed: bigint[] } | "cleared";

export function batch(sequence: number, events: WireEvent[], workerId = "w"): KvEventBatch {
  return create(KvEventBatchSchema, {
    sequence: BigInt(sequence),
    timestampMs: BigInt(Date.now()),
    workerId,
    events: events.map((e): MessageInitShape<typeof KvEventSchema> => {
      if (e === "cleared") return { event: { case: "allBlocksCleared", value: {} } };
      if ("stored" in e) return { event: { case: "blockStored", value: { blockHashes: e.stored, parentBlockHash: e.parent, blockSize: 16 } } };
      return { event: { case: "blockRemoved", value: { blockHashes: e.removed } } };
    }),
  });
}

/** A pushable async stream: what a test pushes, a consumer's for-await receives. */
export class Channel<T> implements AsyncIterable<T> {
  private readonly items: (T | Error)[] = [];
  private waiter?: () => void;
  private ended = false;

  push(item: T | Error): void {
    this.items.push(item);
    this.waiter?.();
  }

  end(): void {
    this.ended = true;
    this.waiter?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      const item = this.items.shift();
      if (item instanceof Error) throw item;
      if (item !== undefined) {
        yield item;
        continue;
      }
      if (this.ended) return;
      await new Promise<void>((resolve) => (this.waiter = resolve));
      this.waiter = undefined;
    }
  }
}

/**
 * A worker handle whose KvEvents subscriptions are channels the test drives; each new
 * subscription is announced through `subscribed`.
 */
export class FakeWorker {
  readonly subscriptions: Channel<KvEventBatch>[] = [];
  readonly handle: WorkerHandle;
  private onSubscribe: (() => void)[] = [];
  load: MessageInitShape<typeof LoadMetricsSchema> = {};

  constructor(id: string, options: { blockSize?: number; model?: string } = {}) {
    const info: GetInfoResponse = create(GetInfoResponseSchema, {
      workerId: id,
      model: options.model ?? "m",
      blockSize: options.blockSize ?? 4,
      load: {},
    });
    const client = {
      kvEvents: (_request: unknown, callOptions?: { signal?: AbortSignal }) => {
        const channel = new Channel<KvEventBatch>();
        callOptions?.signal?.addEventListener("abort", () => channel.end());
        this.subscriptions.push(channel);
        for (const resolve of this.onSubscribe.splice(0)) resolve();
        return channel;
      },
      getInfo: async () => create(GetInfoResponseSchema, { workerId: info.workerId, model: info.model, blockSize: info.blockSize, load: this.load }),
    } as unknown as WorkerClient;
    this.handle = { id, url: `http://fake/${id}`, client, info, inFlight: 0 };
  }

  /** Resolves once there are at least `count` subscriptions. */
  async subscribed(count: number): Promise<Channel<KvEventBatch>> {
    while (this.subscriptions.length < count) await new Promise<void>((resolve) => this.onSubscribe.push(resolve));
    return this.subscriptions[count - 1];
  }

  setLoad(load: MessageInitShape<typeof LoadMetricsSchema>): void {
    this.load = load;
    this.handle.info.load = create(LoadMetricsSchema, load);
  }
}

/** Resolves when `predicate` holds, checking after each macrotask (no fixed sleeps). */
export async function until(predicate: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setImmediate(resolve));
  }
}

export const tokens = (n: number, offset = 0) => Array.from({ length: n }, (_, i) => 1000 + offset + i);
