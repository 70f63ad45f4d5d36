/**
 * Disaggregated prefill/decode through real workers: Connect servers on loopback ports with
 * mocker engines, called as a router calls them (prefill Generate with do_remote_decode, then
 * decode Generate with do_remote_prefill), the KV moving between their transfer agents over
 * TCP. The mocker checks every fetched byte against what computing the prompt writes, so a
 * decode that finishes normally proves the right blocks arrived.
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { Registry } from "prom-client";
import { afterEach, describe, expect, it } from "vitest";
import {
  CancelRequestSchema,
  FinishReason,
  GenerateRequestSchema,
  GetInfoRequestSchema,
  type GenerateResponse,
  type KvTransferParams,
  type SamplingParamsSchema,
} from "../../gen/switchyard/worker/v1/worker_pb.ts";
import { blockHashes } from "../../src/engine/block_hash.ts";
import type { Engine } from "../../src/engine/engine.ts";
import { MockerEngine, type MockerEngineOptions } from "../../src/engine/mocker/mocker_engine.ts";
import { createWorkerClient, type WorkerClient } from "../../src/router/worker_handle.ts";
import type { DisaggregationMode } from "../../src/worker/worker_service.ts";
import type { KvTransferAgentOptions } from "../../src/worker/disagg/transfer_endpoint.ts";
import { registerWorkerMetrics } from "../../src/worker/worker_metrics.ts";
import { startWorker, type RunningWorker } from "../../src/worker/worker_server.ts";
import { freePort, startSwitchyard, stop, type Proc } from "../helpers/processes.ts";
import { StallingProxy } from "../transfer/stalling_proxy.ts";
import { codeOf } from "./helpers.ts";

const BLOCK_SIZE = 4;
/** How long a release or a free may take to show; generous, for a loaded machine. */
const SETTLES = { timeout: 10_000 };
const prompt = (n: number, offset = 0) => Array.from({ length: n }, (_, i) => 2000 + offset + i);
type SamplingInit = MessageInitShape<typeof SamplingParamsSchema>;
const sampling = (maxTokens: number, extra: SamplingInit = {}): SamplingInit => ({ seed: 11n, maxTokens, ignoreEos: true, ...extra });

interface TestWorker {
  worker: RunningWorker;
  client: WorkerClient;
  metrics: Registry;
}

const open: { close(): Promise<void> }[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((x) => x.close()));
});

function mocker(options: MockerEngineOptions = {}): MockerEngine {
  return new MockerEngine({ speedupRatio: 0, blockSize: BLOCK_SIZE, numGpuBlocks: 128, maxModelLen: 512, kvBytesPerBlock: 64, ...options });
}

async function startTestWorker(mode: DisaggregationMode, options: { engine?: Engine; kvTransfer?: KvTransferAgentOptions; workerId?: string } = {}): Promise<TestWorker> {
  const worker = await startWorker({
    engine: options.engine ?? mocker(),
    engineName: "mocker",
    model: "tiny",
    disaggregationMode: mode,
    workerId: options.workerId,
    kvTransfer: options.kvTransfer,
  });
  open.push(worker);
  const metrics = new Registry();
  registerWorkerMetrics(metrics, worker.engine, worker.kvEvents, { worker_id: worker.workerId, model: "tiny" }, worker.disaggregation);
  return { worker, client: createWorkerClient(worker.url), metrics };
}

async function collect(stream: AsyncIterable<GenerateResponse>): Promise<GenerateResponse[]> {
  const out: GenerateResponse[] = [];
  for await (const r of stream) out.push(r);
  return out;
}

const tokensOf = (responses: GenerateResponse[]) => responses.flatMap((r) => r.tokenIds);

/** The router's first call: the prompt on a prefill worker, one token, KV kept for a decode. */
async function prefillOn(w: TestWorker, requestId: string, tokenIds: number[], extra: SamplingInit = {}) {
  const responses = await collect(
    w.client.generate(create(GenerateRequestSchema, { requestId, tokenIds, sampling: sampling(1, extra), disaggregation: { doRemoteDecode: true } })),
  );
  const last = responses.at(-1)!;
  return { firstTokenId: tokensOf(responses)[0], kvTransfer: last.kvTransfer, last };
}

/** The router's second call: the same prompt on a decode worker, with the prefill's answer. */
function decodeOn(w: TestWorker, requestId: string, tokenIds: number[], maxTokens: number, kvTransfer: KvTransferParams | undefined, firstTokenId: number, signal?: AbortSignal) {
  return w.client.generate(
    create(GenerateRequestSchema, {
      requestId,
      tokenIds,
      sampling: sampling(maxTokens),
      disaggregation: { doRemotePrefill: true, kvTransfer, firstTokenId },
    }),
    { signal },
  );
}

async function aggTokens(tokenIds: number[], maxTokens: number): Promise<number[]> {
  const agg = await startTestWorker("agg");
  return tokensOf(await collect(agg.client.generate(create(GenerateRequestSchema, { requestId: "agg", tokenIds, sampling: sampling(maxTokens) }))));
}

/** The value of a counter or gauge (with `labels` among its labels), 0 when it has none yet. */
async function metric(registry: Registry, name: string, labels: Record<string, string> = {}): Promise<number> {
  const found = (await registry.getMetricsAsJSON()).find((m) => m.name === name);
  if (!found) throw new Error(`no metric ${name}`);
  const values = (found.values as { value: number; labels: Record<string, string | number> }[]).filter((v) =>
    Object.entries(labels).every(([k, want]) => v.labels[k] === want),
  );
  return values.reduce((sum, v) => sum + v.value, 0);
}

const blocksUsed = (w: TestWorker) => w.worker.engine.stats().kvBlocksUsed;

describe("disaggregated prefill and decode across two workers", () => {
  it("decodes from the prefill worker's KV the tokens an aggregated run gives after the first, then frees the held blocks", async () => {
    const tokens = prompt(18);
    const agg = await aggTokens(tokens, 8);
    const prefill = await startTestWorker("prefill");
    const decode = await startTestWorker("decode");
    expect((await prefill.client.getInfo(create(GetInfoRequestSchema, {}))).disaggregationMode).toBe("prefill");
    expect((await decode.client.getInfo(create(GetInfoRequestSchema, {}))).disaggregationMode).toBe("decode");
    const baseline = blocksUsed(prefill);

    const { firstTokenId, kvTransfer, last } = await prefillOn(prefill, "r1", tokens);
    expect(firstTokenId).toBe(agg[0]);
    expect(last.finishReason).toBe(FinishReason.LENGTH);
    expect(kvTransfer).toMatchObject({
      engineId: prefill.worker.workerId,
      agentAddress: prefill.worker.disaggregation!.endpoint.address,
      requestId: "r1",
      numTokens: 18,
      blockHashes: blockHashes(tokens, BLOCK_SIZE),
      memoryKind: "host",
      deviceId: 0,
    });
    expect(kvTransfer!.blockIds).toHaveLength(5);
    expect(kvTransfer!.segments).toHaveLength(2);
    expect(kvTransfer!.agentMetadata.length).toBeGreaterThan(0);
    expect(blocksUsed(prefill)).toBe(baseline + 5);

    const responses = await collect(decodeOn(decode, "r1", tokens, 8, kvTransfer, firstTokenId));
    expect(tokensOf(responses)).toEqual(agg.slice(1));
    expect(responses.at(-1)).toMatchObject({ finishReason: FinishReason.LENGTH, errorMessage: "", usage: { promptTokens: 18, completionTokens: 8 } });

    await expect.poll(() => blocksUsed(prefill), SETTLES).toBe(baseline);
    expect(await metric(prefill.metrics, "switchyard_worker_kv_held_releases_total", { reason: "notified" })).toBe(1);
    expect(await metric(prefill.metrics, "switchyard_worker_kv_transfer_served_bytes_total")).toBe(5 * 64);
    expect(await metric(decode.metrics, "switchyard_worker_kv_transfers_total")).toBe(1);
    expect(await metric(decode.metrics, "switchyard_worker_kv_transfer_bytes_total")).toBe(5 * 64);
    expect(await metric(decode.metrics, "switchyard_worker_kv_transfer_local_recomputes_total")).toBe(0);
    expect(decode.worker.engine.stats().kvBlocksUsed).toBe(0);
  });

  it("reads only the blocks the decode worker's prefix cache lacks, and none when it holds the whole prompt", async () => {
    const tokens = prompt(16, 300);
    const prefill = await startTestWorker("prefill");
    const decode = await startTestWorker("decode");
    // The decode worker has computed this very prompt before: all 4 blocks are cached there.
    await collect(decode.client.generate(create(GenerateRequestSchema, { requestId: "warm", tokenIds: tokens, sampling: sampling(1) })));
    const baseline = blocksUsed(prefill);
    const { firstTokenId, kvTransfer } = await prefillOn(prefill, "r2", tokens);
    const responses = await collect(decodeOn(decode, "r2", tokens, 4, kvTransfer, firstTokenId));
    expect(responses.at(-1)).toMatchObject({ finishReason: FinishReason.LENGTH, usage: { cachedTokens: 16, completionTokens: 4 } });
    // Nothing was read, but the prefill worker was still told to free its blocks.
    await expect.poll(() => blocksUsed(prefill), SETTLES).toBe(baseline);
    expect(await metric(decode.metrics, "switchyard_worker_kv_transfers_total")).toBe(0);
    expect(await metric(prefill.metrics, "switchyard_worker_kv_held_releases_total", { reason: "notified" })).toBe(1);
  });

  it("frees held blocks after the KV transfer timeout when no decode worker reads them", async () => {
    const prefill = await startTestWorker("prefill", { kvTransfer: { timeoutMs: 300 } });
    const baseline = blocksUsed(prefill);
    const { kvTransfer } = await prefillOn(prefill, "abandoned", prompt(10));
    expect(kvTransfer).toBeDefined();
    expect(blocksUsed(prefill)).toBe(baseline + 3);
    await expect.poll(() => blocksUsed(prefill), SETTLES).toBe(baseline);
    expect(await metric(prefill.metrics, "switchyard_worker_kv_held_releases_total", { reason: "timeout" })).toBe(1);
    expect(prefill.worker.engine.kvTransfer!.heldRequests()).toEqual([]);
  });

  it("holds nothing when the prefill stopped: no decode follows", async () => {
    const tokens = prompt(9, 50);
    const [first] = await aggTokens(tokens, 1);
    const prefill = await startTestWorker("prefill");
    const baseline = blocksUsed(prefill);
    // max_tokens 2, since a length cap wins over a stop token at the same position.
    const { kvTransfer, last } = await prefillOn(prefill, "stops", tokens, { stopTokenIds: [first], maxTokens: 2 });
    expect(last.finishReason).toBe(FinishReason.STOP);
    expect(kvTransfer).toBeUndefined();
    expect(blocksUsed(prefill)).toBe(baseline);
    expect(await metric(prefill.metrics, "switchyard_worker_kv_held_releases_total", { reason: "stop" })).toBe(1);
  });

  it("frees held blocks when Cancel names the finished prefill", async () => {
    const prefill = await startTestWorker("prefill");
    const baseline = blocksUsed(prefill);
    await prefillOn(prefill, "cancel-me", prompt(12, 80));
    expect(blocksUsed(prefill)).toBe(baseline + 3);
    expect((await prefill.client.cancel(create(CancelRequestSchema, { requestId: "cancel-me" }))).cancelled).toBe(true);
    expect(blocksUsed(prefill)).toBe(baseline);
  });

  it("completes the decode by computing the prompt itself when the prefill worker is gone, and counts the failure", async () => {
    const tokens = prompt(14, 700);
    const agg = await aggTokens(tokens, 6);
    const prefill = await startTestWorker("prefill");
    const decode = await startTestWorker("decode");
    const { firstTokenId, kvTransfer } = await prefillOn(prefill, "orphan", tokens);
    await prefill.worker.close();

    const responses = await collect(decodeOn(decode, "orphan", tokens, 6, kvTransfer, firstTokenId));
    expect(tokensOf(responses)).toEqual(agg.slice(1));
    expect(responses.at(-1)).toMatchObject({ finishReason: FinishReason.LENGTH, usage: { completionTokens: 6 } });
    expect(await metric(decode.metrics, "switchyard_worker_kv_transfer_failures_total")).toBe(1);
    expect(await metric(decode.metrics, "switchyard_worker_kv_transfer_local_recomputes_total")).toBe(1);
    expect(await metric(decode.metrics, "switchyard_worker_kv_transfers_total")).toBe(0);
    expect(decode.worker.engine.stats().kvBlocksUsed).toBe(0);
  });

  it("keeps serving held blocks while draining, and finishes closing once they are read", async () => {
    const tokens = prompt(11, 900);
    const agg = await aggTokens(tokens, 5);
    const prefill = await startTestWorker("prefill");
    const decode = await startTestWorker("decode");
    const { firstTokenId, kvTransfer } = await prefillOn(prefill, "drain", tokens);
    let closed = false;
    const closing = prefill.worker.close(30_000).then(() => (closed = true));
    expect(await codeOf(prefillOn(prefill, "late", tokens))).toBe(Code.Unavailable);
    expect(closed).toBe(false);

    const responses = await collect(decodeOn(decode, "drain", tokens, 5, kvTransfer, firstTokenId));
    expect(tokensOf(responses)).toEqual(agg.slice(1));
    expect(await metric(decode.metrics, "switchyard_worker_kv_transfers_total")).toBe(1);
    await closing;
    expect(closed).toBe(true);
  });

  it("fails the decode with an error, not wrong tokens, when kv_transfer names the wrong blocks", async () => {
    const tokens = prompt(12, 60);
    const prefill = await startTestWorker("prefill");
    const decode = await startTestWorker("decode");
    const { firstTokenId, kvTransfer } = await prefillOn(prefill, "swapped", tokens);
    const [a, b, c] = kvTransfer!.blockIds;
    const responses = await collect(decodeOn(decode, "swapped", tokens, 4, { ...kvTransfer!, blockIds: [b, a, c] }, firstTokenId));
    expect(responses).toEqual([
      expect.objectContaining({ tokenIds: [], finishReason: FinishReason.ERROR, errorMessage: expect.stringMatching(/the KV fetched from the prefill worker is wrong: prompt block 0/) }),
    ]);
    expect(decode.worker.engine.stats().kvBlocksUsed).toBe(0);
  });

  it("rejects a kv_transfer that does not fit this worker's engine with InvalidArgument", async () => {
    const tokens = prompt(10, 40);
    const prefill = await startTestWorker("prefill");
    const { firstTokenId, kvTransfer } = await prefillOn(prefill, "layout", tokens);
    const otherLayout = await startTestWorker("decode", { engine: mocker({ kvBytesPerBlock: 128 }) });
    const decode = await startTestWorker("decode");
    const expectInvalid = async (w: TestWorker, params: KvTransferParams | undefined, message: RegExp, tokenIds = tokens) => {
      const error = await collect(decodeOn(w, "layout", tokenIds, 4, params, firstTokenId)).then(
        () => undefined,
        (err: unknown) => ConnectError.from(err),
      );
      expect(error?.code).toBe(Code.InvalidArgument);
      expect(error?.rawMessage).toMatch(message);
    };
    await expectInvalid(otherLayout, kvTransfer, /segment 0 has blocks of 32 bytes on the prefill worker, 64 here/);
    await expectInvalid(decode, { ...kvTransfer!, segments: kvTransfer!.segments.slice(1) }, /1 segments, this worker's 2/);
    await expectInvalid(decode, { ...kvTransfer!, kvDtype: "bfloat16" }, /the prefill worker caches K and V in bfloat16, this worker in mocker/);
    await expectInvalid(decode, { ...kvTransfer!, blockIds: kvTransfer!.blockIds.slice(1) }, /2 block_ids for a prompt of 10 tokens in blocks of 4; expected 3/);
    await expectInvalid(decode, kvTransfer, /num_tokens is 10, but the prompt has 11 tokens/, prompt(11, 40));
    await expectInvalid(decode, undefined, /do_remote_prefill needs disaggregation.kv_transfer/);
    await expectInvalid(decode, { ...kvTransfer!, memoryKind: "tape" }, /memory_kind must be host or cuda/);
    await expectInvalid(decode, { ...kvTransfer!, agentMetadata: new TextEncoder().encode("not metadata") }, /agent_metadata of .* does not load: .*not a Switchyard transfer agent metadata blob/);
    await expectInvalid(decode, { ...kvTransfer!, engineId: "someone-else" }, /describes agent '.*', but engine_id is 'someone-else'/);
    // Nothing was reserved for the rejected requests.
    expect(decode.worker.engine.stats()).toMatchObject({ runningRequests: 0, kvBlocksUsed: 0 });
  });

  it("answers both disaggregation flags with Unimplemented when its engine cannot move KV", async () => {
    const engine = mocker();
    const withoutKvTransfer: Engine = {
      blockSize: engine.blockSize,
      maxModelLen: engine.maxModelLen,
      generate: (request, signal) => engine.generate(request, signal),
      abort: (requestId) => engine.abort(requestId),
      stats: () => engine.stats(),
      onKvEvents: (listener) => engine.onKvEvents(listener),
      kvSnapshot: () => engine.kvSnapshot(),
      close: () => engine.close(),
    };
    const w = await startTestWorker("agg", { engine: withoutKvTransfer });
    expect(w.worker.disaggregation).toBeUndefined();
    const generate = (disaggregation: object) =>
      collect(w.client.generate(create(GenerateRequestSchema, { requestId: "u", tokenIds: prompt(5), sampling: sampling(2), disaggregation })));
    expect(await codeOf(generate({ doRemoteDecode: true }))).toBe(Code.Unimplemented);
    expect(await codeOf(generate({ doRemotePrefill: true, firstTokenId: 1 }))).toBe(Code.Unimplemented);
    expect(tokensOf(await generate({}))).toHaveLength(2);
  });

  it("frees the decode worker's reserved blocks, and the prefill worker's held ones, when the decode is cancelled during its read", async () => {
    // The prefill worker's agent answers through a proxy that forwards none of its answers: the read hangs.
    let agentPort = 0;
    const proxy = await StallingProxy.start({ targetPort: () => agentPort, forwardBytes: 0 });
    open.push(proxy);
    const prefillEngine = mocker();
    const prefill = await startTestWorker("prefill", { engine: prefillEngine, kvTransfer: { advertisePort: proxy.port } });
    agentPort = prefill.worker.disaggregation!.endpoint.agent.listenPort;
    const decode = await startTestWorker("decode");
    const tokens = prompt(20, 5000);
    const prefillBaseline = blocksUsed(prefill);
    const { firstTokenId, kvTransfer } = await prefillOn(prefill, "stuck", tokens);
    expect(kvTransfer!.agentAddress).toBe(`127.0.0.1:${proxy.port}`);

    const abort = new AbortController();
    const decoding = collect(decodeOn(decode, "stuck", tokens, 4, kvTransfer, firstTokenId, abort.signal)).catch((err: unknown) => err);
    await proxy.stalled;
    expect(decode.worker.engine.stats()).toMatchObject({ runningRequests: 1, kvBlocksUsed: 5 });
    expect((await decode.client.cancel(create(CancelRequestSchema, { requestId: "stuck" }))).cancelled).toBe(true);
    const cancelled = await decoding;
    expect(Array.isArray(cancelled) ? (cancelled as GenerateResponse[]).at(-1)?.finishReason : cancelled).toBe(FinishReason.CANCELLED);
    await expect.poll(() => decode.worker.engine.stats(), SETTLES).toMatchObject({ runningRequests: 0, kvBlocksUsed: 0 });
    expect(await metric(decode.metrics, "switchyard_worker_kv_transfer_failures_total", { reason: "canceled" })).toBe(1);
    expect(await metric(decode.metrics, "switchyard_worker_kv_transfer_local_recomputes_total")).toBe(0);
    // The decode worker told the prefill worker it is done with the blocks.
    await expect.poll(() => blocksUsed(prefill), SETTLES).toBe(prefillBaseline);
  });

  it("serves both halves of one request on a single worker", async () => {
    const tokens = prompt(13, 100);
    const agg = await aggTokens(tokens, 5);
    const w = await startTestWorker("agg");
    const { firstTokenId, kvTransfer } = await prefillOn(w, "self", tokens);
    const responses = await collect(decodeOn(w, "self", tokens, 5, kvTransfer, firstTokenId));
    expect(tokensOf(responses)).toEqual(agg.slice(1));
    await expect.poll(() => blocksUsed(w), SETTLES).toBe(0);
  });
});

describe("switchyard worker processes in prefill and decode modes", () => {
  const procs: Proc[] = [];
  afterEach(async () => {
    await Promise.all(procs.splice(0).map((p) => stop(p, "SIGKILL")));
  });

  const spawnWorker = async (mode: DisaggregationMode, extra: string[] = []) => {
    const proc = await startSwitchyard(["worker", "--port", "0", "--engine", "mocker", "--speedup-ratio", "0", "--block-size", "4", "--kv-bytes-per-block", "128", "--disaggregation-mode", mode, ...extra]);
    procs.push(proc);
    return { proc, client: createWorkerClient(proc.url) };
  };

  it("serve a disaggregated request through the agent ports the flags chose", async () => {
    const agentPort = await freePort();
    const prefill = await spawnWorker("prefill", ["--worker-id", "prefill-p", "--kv-transfer-port", String(agentPort), "--kv-transfer-timeout", "5"]);
    const decode = await spawnWorker("decode", ["--worker-id", "decode-p"]);
    expect((await prefill.client.getInfo(create(GetInfoRequestSchema, {}))).disaggregationMode).toBe("prefill");
    const tokens = prompt(21, 77);
    const prefilled = await collect(
      prefill.client.generate(create(GenerateRequestSchema, { requestId: "p1", tokenIds: tokens, sampling: sampling(1), disaggregation: { doRemoteDecode: true } })),
    );
    const kvTransfer = prefilled.at(-1)!.kvTransfer!;
    expect(kvTransfer).toMatchObject({ engineId: "prefill-p", agentAddress: `127.0.0.1:${agentPort}`, numTokens: 21 });
    expect(kvTransfer.segments.map((s) => s.blockBytes)).toEqual([64, 64]);
    expect(kvTransfer.kvDtype).toBe("mocker");
    const decoded = await collect(
      decode.client.generate(
        create(GenerateRequestSchema, { requestId: "p1", tokenIds: tokens, sampling: sampling(6), disaggregation: { doRemotePrefill: true, kvTransfer, firstTokenId: prefilled[0].tokenIds[0] } }),
      ),
    );
    expect(decoded.at(-1)).toMatchObject({ finishReason: FinishReason.LENGTH, usage: { completionTokens: 6 } });
    expect(tokensOf(decoded)).toHaveLength(5);
    await expect.poll(async () => (await prefill.client.getInfo(create(GetInfoRequestSchema, {}))).load?.kvBlocksUsed, SETTLES).toBe(0);
  });

  it("refuses a --kv-bytes-per-block that is not a multiple of 8", async () => {
    await expect(spawnWorker("decode", ["--kv-bytes-per-block", "12"])).rejects.toThrow(/--kv-bytes-per-block: must be a multiple of 8/);
  });
});
