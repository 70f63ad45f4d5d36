import { fromBinary } from "@bufbuild/protobuf";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KvEventBatchSchema } from "../../gen/switchyard/worker/v1/worker_pb.ts";
import { blockHashes } from "../../src/engine/block_hash.ts";
import { MockerEngine } from "../../src/engine/mocker/mocker_engine.ts";
import { createLogger } from "../../src/runtime/logger.ts";
import { kvEventsSubject, kvSnapshotSubject, NatsKvEventBridge } from "../../src/worker/nats_kv_events.ts";
import { KvEventPublisher } from "../../src/worker/kv_event_publisher.ts";
import { startNatsServer, type NatsServer } from "../helpers/processes.ts";

const sampling = { temperature: 0, topP: 1, topK: 0, minP: 0, maxTokens: 1, minTokens: 0, stopTokenIds: [], ignoreEos: true, presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1 };

describe("KV events over NATS", () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  beforeAll(async () => {
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url });
  });
  afterAll(async () => {
    await nc.close();
    await nats.stop();
  });

  it("publishes each batch on the worker's subject and answers snapshot requests", async () => {
    const engine = new MockerEngine({ blockSize: 4, speedupRatio: 0 });
    const publisher = new KvEventPublisher(engine, "w.1");
    const bridge = new NatsKvEventBridge(nc, publisher, "tiny/model", "w.1", createLogger("test"));
    const sub = nc.subscribe(kvEventsSubject("tiny/model", "w.1"), { max: 1 });
    await nc.flush();

    const prompt = Array.from({ length: 9 }, (_, i) => 40 + i);
    for await (const _ of engine.generate({ requestId: "r", promptTokenIds: prompt, sampling }));
    let live;
    for await (const msg of sub) live = fromBinary(KvEventBatchSchema, msg.data);
    expect(live!.workerId).toBe("w.1");
    expect(live!.events.flatMap((e) => (e.event.case === "blockStored" ? e.event.value.blockHashes : []))).toEqual(blockHashes(prompt, 4));

    const reply = await nc.request(kvSnapshotSubject("tiny/model", "w.1"), new Uint8Array(), { timeout: 2000 });
    const snapshot = fromBinary(KvEventBatchSchema, reply.data);
    expect(snapshot.sequence).toBe(live!.sequence);
    expect(snapshot.events[0].event.case).toBe("allBlocksCleared");
    expect(snapshot.events.flatMap((e) => (e.event.case === "blockStored" ? e.event.value.blockHashes : []))).toEqual(blockHashes(prompt, 4));

    await bridge.close();
    publisher.close();
    await engine.close();
  });
});
