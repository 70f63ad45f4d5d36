import { parseArgs } from "node:util";
import { Registry } from "prom-client";
import { afterEach, describe, expect, it } from "vitest";
import { blockHashes } from "../../src/engine/block_hash.ts";
import { RouterError } from "../../src/router/router.ts";
import { KV_ROUTER_OPTIONS, KvRouterFlagsSchema, kvSelectorOptions } from "../../src/router/kv/kv_router_flags.ts";
import { KvSelector, type KvSelectorOptions } from "../../src/router/kv/kv_selector.ts";
import { batch, FakeWorker, tokens, until } from "./helpers.ts";

const BLOCK = 4;
const selectors: KvSelector[] = [];
afterEach(async () => {
  await Promise.all(selectors.splice(0).map((s) => s.close()));
});

function setup(count: number, options: KvSelectorOptions = {}) {
  const selector = new KvSelector({ loadPollIntervalMs: 0, random: () => 0, ...options });
  selectors.push(selector);
  const workers = Array.from({ length: count }, (_, i) => new FakeWorker(`w${i}`, { blockSize: BLOCK }));
  for (const w of workers) selector.workerAdded(w.handle);
  const handles = workers.map((w) => w.handle);
  return { selector, workers, handles };
}

/** Makes `worker` hold the first `blocks` blocks of `prompt`, through its event stream. */
async function cache(selector: KvSelector, worker: FakeWorker, prompt: number[], blocks: number, sequence = 0) {
  const stream = await worker.subscribed(1);
  stream.push(batch(sequence, ["cleared", { stored: blockHashes(prompt, BLOCK).slice(0, blocks) }], worker.handle.id));
  await until(() => selector.indexer.blockCount(worker.handle.id) === blocks);
}

describe("KvSelector", () => {
  it("routes to the worker that holds the longest prefix of the prompt", async () => {
    const { selector, workers, handles } = setup(3);
    const prompt = tokens(40); // 10 blocks
    await cache(selector, workers[0], prompt, 3);
    await cache(selector, workers[2], prompt, 8);
    const selection = selector.select({ requestId: "r1", tokenIds: prompt }, handles);
    expect(selection).toMatchObject({ worker: handles[2], reason: "kv_overlap", overlapBlocks: 8 });
  });

  it("prefers a less loaded worker when its decode load outweighs the cached prefix", async () => {
    const { selector, workers, handles } = setup(2, { kvOverlapScoreWeight: 1 });
    const prompt = tokens(40); // 10 blocks
    await cache(selector, workers[0], prompt, 4);
    // 6 unrelated 8-block requests on w0: decode load 48 blocks against 4 blocks saved.
    for (let i = 0; i < 6; i++) selector.active.add(`busy${i}`, "w0", blockHashes(tokens(32, 1000 * (i + 1)), BLOCK), 8);
    const [w0, w1] = selector.score(prompt, handles);
    // prefill + (active + request blocks)
    expect(w0).toMatchObject({ overlapBlocks: 4, activeBlocks: 48, cost: 6 + 48 + 10 });
    expect(w1).toMatchObject({ overlapBlocks: 0, activeBlocks: 0, cost: 10 + 10 });
    expect(selector.select({ requestId: "r", tokenIds: prompt }, handles)).toMatchObject({ worker: handles[1], reason: "load" });
    // A heavy enough weight on prefill flips the choice back to the cache.
    const cacheFirst = setup(2, { kvOverlapScoreWeight: 20 });
    await cache(cacheFirst.selector, cacheFirst.workers[0], prompt, 4);
    for (let i = 0; i < 6; i++) cacheFirst.selector.active.add(`busy${i}`, "w0", blockHashes(tokens(32, 1000 * (i + 1)), BLOCK), 8);
    expect(cacheFirst.selector.select({ requestId: "r", tokenIds: prompt }, cacheFirst.handles).worker.id).toBe("w0");
  });

  it("counts the blocks of requests it routed as cached before their events arrive, and their load until they finish", () => {
    const { selector, handles } = setup(3);
    const prompt = tokens(41); // 10 full blocks + 1 partial
    const first = selector.select({ requestId: "a", tokenIds: prompt }, handles);
    expect(first.overlapBlocks).toBe(0);
    const again = selector.select({ requestId: "b", tokenIds: [...prompt, 7, 7, 7] }, handles);
    expect(again).toMatchObject({ worker: first.worker, overlapBlocks: 10 });
    // Shared full blocks count once, the partial blocks once per request.
    expect(selector.active.activeBlocks(first.worker.id)).toBe(10 + 1 + 1);
    selector.requestFinished("a", first.worker);
    selector.requestFinished("b", first.worker);
    expect(selector.active.activeBlocks(first.worker.id)).toBe(0);
    expect(selector.active.activeRequests(first.worker.id)).toBe(0);
  });

  it("spreads prompts with no cached prefix over idle workers, breaking ties at random", () => {
    let r = 0;
    const draws = [0.1, 0.5, 0.9];
    const { selector, handles } = setup(3, { random: () => draws[r++ % 3] });
    const chosen = [0, 1, 2].map((i) => selector.select({ requestId: `r${i}`, tokenIds: tokens(8, 100 * i) }, handles).worker.id);
    // Each request adds load to its worker, so the next one goes elsewhere.
    expect(new Set(chosen).size).toBe(3);
  });

  it("samples workers by softmax above temperature 0", async () => {
    const { selector, workers, handles } = setup(2, { routerTemperature: 1, random: () => 0.9 });
    const prompt = tokens(40);
    await cache(selector, workers[0], prompt, 10);
    // w0 is cheaper (cost 0 vs 10) but a high draw lands on w1: p(w0) = 1/(1+e^-1) = 0.73.
    expect(selector.select({ requestId: "hot", tokenIds: prompt }, handles).worker.id).toBe("w1");
    const greedy = setup(2, { routerTemperature: 0, random: () => 0.9 });
    await cache(greedy.selector, greedy.workers[0], prompt, 10);
    expect(greedy.selector.select({ requestId: "cold", tokenIds: prompt }, greedy.handles).worker.id).toBe("w0");
  });

  it("never chooses a worker over the busy threshold and refuses when all are busy", async () => {
    const { selector, workers, handles } = setup(2, { busyThreshold: 0.8 });
    const prompt = tokens(40);
    await cache(selector, workers[0], prompt, 10);
    workers[0].setLoad({ kvBlocksUsed: 90, kvBlocksTotal: 100 });
    workers[1].setLoad({ kvBlocksUsed: 10, kvBlocksTotal: 100 });
    expect(selector.select({ requestId: "a", tokenIds: prompt }, handles).worker.id).toBe("w1");
    workers[1].setLoad({ kvBlocksUsed: 81, kvBlocksTotal: 100 });
    let error: unknown;
    try {
      selector.select({ requestId: "b", tokenIds: prompt }, handles);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(RouterError);
    expect(error).toMatchObject({ code: "all_busy", retryAfterSeconds: 1 });
  });

  it("counts its own routed blocks toward KV usage between load polls", () => {
    const { selector, workers, handles } = setup(1, { busyThreshold: 0.5 });
    workers[0].setLoad({ kvBlocksUsed: 0, kvBlocksTotal: 20 });
    selector.select({ requestId: "a", tokenIds: tokens(44) }, handles); // 11 blocks > 10
    expect(() => selector.select({ requestId: "b", tokenIds: tokens(4, 999) }, handles)).toThrow(RouterError);
    selector.requestFinished("a", handles[0]);
    expect(selector.select({ requestId: "b", tokenIds: tokens(4, 999) }, handles).worker.id).toBe("w0");
  });

  it("treats a worker with too many waiting requests as busy", () => {
    const { selector, workers, handles } = setup(2, { maxWaitingRequests: 2 });
    workers[0].setLoad({ waitingRequests: 3, kvBlocksTotal: 100 });
    workers[1].setLoad({ waitingRequests: 2, kvBlocksTotal: 100 });
    for (let i = 0; i < 5; i++) expect(selector.select({ requestId: `r${i}`, tokenIds: tokens(8) }, handles).worker.id).toBe("w1");
  });

  it("uses polled GetInfo load when polling is on", async () => {
    const selector = new KvSelector({ loadPollIntervalMs: 10, busyThreshold: 0.5, useKvEvents: false });
    selectors.push(selector);
    const busy = new FakeWorker("busy");
    const idle = new FakeWorker("idle");
    busy.load = { kvBlocksUsed: 9, kvBlocksTotal: 10 };
    idle.load = { kvBlocksUsed: 1, kvBlocksTotal: 10 };
    selector.workerAdded(busy.handle);
    selector.workerAdded(idle.handle);
    await until(() => {
      try {
        return selector.score(tokens(4), [busy.handle, idle.handle]).filter((s) => s.busy).length === 1;
      } catch {
        return false;
      }
    });
    expect(selector.select({ requestId: "a", tokenIds: tokens(4) }, [busy.handle, idle.handle]).worker.id).toBe("idle");
  });

  it("drops a worker's entries on a gap and rebuilds them from the resubscription's snapshot", async () => {
    const { selector, workers } = setup(1);
    const w = workers[0];
    const stream = await w.subscribed(1);
    stream.push(batch(0, ["cleared", { stored: [1n, 2n] }]));
    stream.push(batch(1, [{ stored: [3n] }]));
    await until(() => selector.indexer.blockCount("w0") === 3);
    stream.push(batch(3, [{ stored: [4n] }])); // 2 is missing
    const resubscribed = await w.subscribed(2);
    expect(selector.indexer.blockCount("w0")).toBe(0);
    resubscribed.push(batch(3, [{ stored: [1n, 2n, 3n, 4n] }]));
    await until(() => selector.indexer.blockCount("w0") === 4);
    expect(selector.indexer.findMatches([1n, 2n, 3n, 4n]).get("w0")).toBe(4);
  });

  it("resubscribes after the stream fails, with the worker's entries dropped meanwhile", async () => {
    const { selector, workers } = setup(1);
    const stream = await workers[0].subscribed(1);
    stream.push(batch(0, ["cleared", { stored: [1n, 2n] }]));
    await until(() => selector.indexer.blockCount("w0") === 2);
    stream.push(new Error("connection reset"));
    await until(() => selector.indexer.blockCount("w0") === 0);
    const again = await workers[0].subscribed(2);
    again.push(batch(0, ["cleared", { stored: [5n] }]));
    await until(() => selector.indexer.blockCount("w0") === 1);
  });

  it("stops following a worker that leaves and forgets what it cached", async () => {
    const { selector, workers, handles } = setup(2);
    await cache(selector, workers[0], tokens(16), 4);
    selector.workerRemoved("w0");
    await until(() => workers[0].subscriptions.length === 1);
    expect(selector.indexer.workerIds()).not.toContain("w0");
    expect(selector.select({ requestId: "r", tokenIds: tokens(16) }, [handles[1]])).toMatchObject({ overlapBlocks: 0 });
  });

  it("exports switchyard_router_* metrics on the given registry", async () => {
    const registry = new Registry();
    const { selector, workers, handles } = setup(2, { registry, busyThreshold: 0.5 });
    await cache(selector, workers[0], tokens(16), 4);
    selector.select({ requestId: "a", tokenIds: tokens(16) }, handles);
    selector.select({ requestId: "b", tokenIds: tokens(16, 500) }, handles);
    workers[0].setLoad({ kvBlocksUsed: 9, kvBlocksTotal: 10 });
    workers[1].setLoad({ kvBlocksUsed: 9, kvBlocksTotal: 10 });
    expect(() => selector.select({ requestId: "c", tokenIds: tokens(16) }, handles)).toThrow();
    const text = await registry.metrics();
    expect(text).toContain('switchyard_router_decisions_total{reason="kv_overlap"} 1');
    expect(text).toContain('switchyard_router_decisions_total{reason="load"} 1');
    expect(text).toContain('switchyard_router_decisions_total{reason="all_busy"} 1');
    expect(text).toContain('switchyard_router_indexer_blocks{worker="w0"} 4');
    expect(text).toContain('switchyard_router_overlap_blocks_sum{worker="w0"} 4');
    expect(text).toContain('switchyard_router_kv_events_total{worker="w0"} 2');
    expect(text).toContain("switchyard_router_kv_event_lag_seconds_count 1");
  });

  it("rejects options no router can work with", () => {
    expect(() => new KvSelector({ busyThreshold: 1.5 })).toThrow(/busyThreshold/);
    expect(() => new KvSelector({ routerTemperature: -1 })).toThrow(/routerTemperature/);
    expect(() => new KvSelector({ blockSize: 0 })).toThrow(/blockSize/);
  });
});

describe("KV router flags", () => {
  it("maps --no-kv-events and the tuning flags onto KvSelector options", () => {
    const { values } = parseArgs({
      args: ["--no-kv-events", "--kv-overlap-score-weight", "2", "--busy-threshold", "0.9", "--router-prediction-ttl-secs", "30"],
      options: KV_ROUTER_OPTIONS,
      allowNegative: true,
    });
    const options = kvSelectorOptions(KvRouterFlagsSchema.parse(values), 16);
    expect(options).toMatchObject({ useKvEvents: false, kvOverlapScoreWeight: 2, busyThreshold: 0.9, predictionTtlMs: 30_000, routerTemperature: 0, blockSize: 16 });
    expect(KvRouterFlagsSchema.safeParse({ "busy-threshold": "1.5" }).success).toBe(false);
    expect(new KvSelector({ ...options, loadPollIntervalMs: 0 })).toBeInstanceOf(KvSelector);
  });
});
