import { create } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  CancelRequestSchema,
  FinishReason,
  GenerateRequestSchema,
  GetInfoRequestSchema,
  KvEventsRequestSchema,
  type KvEventBatch,
} from "../../gen/switchyard/worker/v1/worker_pb.ts";
import { blockHashes } from "../../src/engine/block_hash.ts";
import { MockerEngine } from "../../src/engine/mocker/mocker_engine.ts";
import { createWorkerClient, type WorkerClient } from "../../src/router/worker_handle.ts";
import { startWorker, type RunningWorker } from "../../src/worker/worker_server.ts";
import { codeOf } from "./helpers.ts";

const prompt = (n: number, offset = 0) => Array.from({ length: n }, (_, i) => 1000 + offset + i);

async function drain(stream: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of stream);
}

describe("WorkerService over a real HTTP/2 connection", () => {
  let worker: RunningWorker;
  let client: WorkerClient;
  beforeAll(async () => {
    // Slow enough simulated decode that a request is still running when we cancel it.
    worker = await startWorker({
      engine: new MockerEngine({ speedupRatio: 1, blockSize: 4, numGpuBlocks: 256, maxModelLen: 512 }),
      engineName: "mocker",
      model: "tiny",
      port: 0,
    });
    client = createWorkerClient(worker.url);
  });
  afterAll(() => worker.close());

  it("describes itself through GetInfo", async () => {
    const info = await client.getInfo(create(GetInfoRequestSchema, {}));
    expect(info).toMatchObject({ workerId: worker.workerId, model: "tiny", blockSize: 4, maxModelLen: 512, engine: "mocker", disaggregationMode: "agg" });
    expect(info.load?.kvBlocksTotal).toBe(256);
  });

  it("rejects bad requests with precise codes", async () => {
    const generate = (fields: Parameters<typeof create<typeof GenerateRequestSchema>>[1]) =>
      drain(client.generate(create(GenerateRequestSchema, fields)));
    expect(await codeOf(generate({ requestId: "e1", tokenIds: [] }))).toBe(Code.InvalidArgument);
    expect(await codeOf(generate({ requestId: "e2", tokenIds: prompt(600) }))).toBe(Code.InvalidArgument);
    expect(await codeOf(generate({ requestId: "e3", tokenIds: prompt(4), model: "other" }))).toBe(Code.NotFound);
    expect(await codeOf(generate({ requestId: "e4", tokenIds: prompt(4), sampling: { temperature: -1 } }))).toBe(Code.InvalidArgument);
    expect(await codeOf(generate({ requestId: "e5", tokenIds: prompt(4), sampling: { topP: 0 } }))).toBe(Code.InvalidArgument);
    expect(await codeOf(generate({ requestId: "e6", tokenIds: prompt(4), disaggregation: { doRemotePrefill: true } }))).toBe(Code.InvalidArgument);
    expect(await codeOf(generate({ requestId: "e7", tokenIds: prompt(4), disaggregation: { doRemotePrefill: true, doRemoteDecode: true } }))).toBe(Code.InvalidArgument);
  });

  it("frees every block when Cancel names a running request", async () => {
    const before = worker.engine.stats().kvBlocksUsed;
    const stream = client.generate(create(GenerateRequestSchema, { requestId: "to-cancel", tokenIds: prompt(40), sampling: { maxTokens: 10_000, ignoreEos: true } }));
    const iterator = stream[Symbol.asyncIterator]();
    await iterator.next(); // the request is running once its first token arrived
    expect(worker.engine.stats().runningRequests).toBe(1);
    const { cancelled } = await client.cancel(create(CancelRequestSchema, { requestId: "to-cancel" }));
    expect(cancelled).toBe(true);
    let last;
    for (let r = await iterator.next(); !r.done; r = await iterator.next()) last = r.value;
    expect(last?.finishReason).toBe(FinishReason.CANCELLED);
    expect(worker.engine.stats().runningRequests).toBe(0);
    expect(worker.engine.stats().kvBlocksUsed).toBe(before);
    expect((await client.cancel(create(CancelRequestSchema, { requestId: "to-cancel" }))).cancelled).toBe(false);
  });

  it("aborts the request in the engine when the client drops the stream", async () => {
    const before = worker.engine.stats().kvBlocksUsed;
    const abort = new AbortController();
    const stream = client.generate(create(GenerateRequestSchema, { requestId: "to-drop", tokenIds: prompt(40, 7), sampling: { maxTokens: 10_000, ignoreEos: true } }), { signal: abort.signal });
    for await (const _ of stream) {
      abort.abort();
      break;
    }
    await expect.poll(() => worker.engine.stats().runningRequests).toBe(0);
    expect(worker.engine.stats().kvBlocksUsed).toBe(before);
  });

  it("opens KvEvents with a snapshot, then streams what new requests store", async () => {
    const tokens = prompt(12, 5000);
    await drain(client.generate(create(GenerateRequestSchema, { requestId: "kv-1", tokenIds: tokens, sampling: { maxTokens: 1 } })));
    const abort = new AbortController();
    const stream = client.kvEvents(create(KvEventsRequestSchema, {}), { signal: abort.signal })[Symbol.asyncIterator]();
    const snapshot = (await stream.next()).value as KvEventBatch;
    expect(snapshot.events[0].event.case).toBe("allBlocksCleared");
    const snapshotHashes = snapshot.events.flatMap((e) => (e.event.case === "blockStored" ? e.event.value.blockHashes : []));
    expect(snapshotHashes).toEqual(expect.arrayContaining(blockHashes(tokens, 4)));

    const next = prompt(8, 9000);
    await drain(client.generate(create(GenerateRequestSchema, { requestId: "kv-2", tokenIds: next, sampling: { maxTokens: 1 } })));
    const live = (await stream.next()).value as KvEventBatch;
    expect(live.sequence).toBe(snapshot.sequence + 1n);
    const stored = live.events.flatMap((e) => (e.event.case === "blockStored" ? e.event.value.blockHashes : []));
    expect(stored).toEqual(blockHashes(next, 4));
    abort.abort();
  });
});
