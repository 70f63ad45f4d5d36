import { describe, expect, it } from "vitest";
import { KvSelector } from "../../src/router/kv/kv_selector.ts";
import { FakeWorker, tokens } from "./helpers.ts";

function setup(ttlMs: number) {
  let nowMs = 1_000_000;
  const selector = new KvSelector({ useKvEvents: false, predictionTtlMs: ttlMs, loadPollIntervalMs: 0, now: () => nowMs, random: () => 0 });
  const workers = ["a", "b", "c"].map((id) => new FakeWorker(id, { blockSize: 4 }));
  for (const w of workers) selector.workerAdded(w.handle);
  const handles = workers.map((w) => w.handle);
  const route = (id: string, prompt: number[]) => {
    const selection = selector.select({ requestId: id, tokenIds: prompt }, handles);
    selector.requestFinished(id, selection.worker);
    return selection;
  };
  return { selector, workers, handles, route, advance: (ms: number) => (nowMs += ms) };
}

describe("KvSelector without KV events", () => {
  it("does not subscribe to KV events", () => {
    const { workers } = setup(1000);
    expect(workers.every((w) => w.subscriptions.length === 0)).toBe(true);
  });

  it("predicts that a worker caches the prompts it routed there", () => {
    const { route } = setup(60_000);
    const system = tokens(64);
    const first = route("1", [...system, 1, 2, 3, 4]);
    const second = route("2", [...system, 9, 9, 9, 9]);
    expect(second.worker.id).toBe(first.worker.id);
    expect(second.overlapBlocks).toBe(16);
  });

  it("forgets a prediction once its TTL has passed", () => {
    const { route, advance, selector } = setup(10_000);
    const prompt = tokens(32);
    const first = route("1", prompt);
    advance(9_999);
    expect(route("2", prompt)).toMatchObject({ worker: first.worker, overlapBlocks: 8 });
    // Routing renewed the expiry: 10 s from the second request.
    advance(9_999);
    expect(route("3", prompt)).toMatchObject({ overlapBlocks: 8 });
    advance(10_000);
    expect(route("4", prompt).overlapBlocks).toBe(0);
    // The prediction for request 4 is the only one left.
    expect(selector.indexer.workerIds().reduce((n, id) => n + selector.indexer.blockCount(id), 0)).toBe(8);
  });

  it("expires only the blocks not renewed", () => {
    const { route, advance } = setup(10_000);
    const system = tokens(16);
    const first = route("1", [...system, ...tokens(16, 500)]);
    advance(6_000);
    route("2", [...system, ...tokens(16, 900)]);
    advance(6_000);
    // The shared system prompt was renewed by request 2; request 1's own tail expired.
    const third = route("3", [...system, ...tokens(16, 500)]);
    expect(third).toMatchObject({ worker: first.worker, overlapBlocks: 4 });
  });
});
