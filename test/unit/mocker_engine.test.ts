import { describe, expect, it } from "vitest";
import { blockHashes } from "../../src/engine/block_hash.ts";
import { EngineError, type EngineOutput, type EngineRequest, type KvEvent, type SamplingParams } from "../../src/engine/engine.ts";
import { TimingModel } from "../../src/engine/mocker/timing.ts";
import { seededRandom } from "../../src/util/seeded_random.ts";
import { collect, mockers, range, replay, request as runToMaxTokens, tokensOf } from "./mocker_helpers.ts";

const rng = seededRandom;

/** Requests here stop at an eos id unless a case sets ignoreEos, as an API request does. */
const request = (requestId: string, promptTokenIds: number[], s: Partial<SamplingParams> = {}): EngineRequest =>
  runToMaxTokens(requestId, promptTokenIds, { ignoreEos: false, ...s });

const mocker = mockers();

async function errorOf(f: () => unknown): Promise<EngineError> {
  try {
    await f();
  } catch (err) {
    if (err instanceof EngineError) return err;
    throw err;
  }
  throw new Error("expected an EngineError");
}

describe("MockerEngine", () => {
  it("generates max_tokens ids in the vocabulary, one per step, and finishes with length", async () => {
    const engine = mocker({ vocabSize: 1000 });
    const outputs = await collect(engine.generate(request("r", range(5), { maxTokens: 6 })));
    expect(outputs).toHaveLength(6);
    for (const o of outputs) expect(o.tokenIds).toHaveLength(1);
    for (const t of tokensOf(outputs)) expect(t >= 0 && t < 1000 && Number.isInteger(t)).toBe(true);
    expect(outputs.slice(0, -1).every((o) => o.finishReason === undefined)).toBe(true);
    expect(outputs.at(-1)).toMatchObject({ finishReason: "length", usage: { promptTokens: 5, completionTokens: 6, cachedTokens: 0 } });
    expect(outputs.map((o) => o.usage.completionTokens)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(engine.stats()).toMatchObject({ runningRequests: 0, waitingRequests: 0, kvBlocksUsed: 0 });
  });

  it("gives the same tokens for the same seed and prompt whatever else is batched or preempted", async () => {
    const prompt = range(30, 77);
    const alone = tokensOf(await collect(mocker().generate(request("x", prompt, { seed: 42n, maxTokens: 20 }))));
    // A tiny pool and many neighbours: batches differ and requests get preempted.
    const busy = mocker({ blockSize: 4, numGpuBlocks: 24, maxNumBatchedTokens: 16 });
    const random = rng(3);
    const neighbours = range(12).map((i) =>
      collect(busy.generate(request(`n${i}`, range(5 + Math.floor(random() * 30), 1000 * i), { maxTokens: 1 + Math.floor(random() * 20) }))),
    );
    const inCrowd = collect(busy.generate(request("x", prompt, { seed: 42n, maxTokens: 20 })));
    await Promise.all(neighbours);
    expect(tokensOf(await inCrowd)).toEqual(alone);
    expect(busy.stats().preemptions).toBeGreaterThan(0);

    const otherSeed = tokensOf(await collect(mocker().generate(request("y", prompt, { seed: 43n, maxTokens: 20 }))));
    expect(otherSeed).not.toEqual(alone);
  });

  it("derives the tokens from the prompt when there is no seed", async () => {
    const engine = mocker();
    const a = tokensOf(await collect(engine.generate(request("a", range(9), { maxTokens: 10 }))));
    const b = tokensOf(await collect(engine.generate(request("b", range(9), { maxTokens: 10 }))));
    const c = tokensOf(await collect(engine.generate(request("c", range(9, 1), { maxTokens: 10 }))));
    expect(b).toEqual(a);
    expect(c).not.toEqual(a);
  });

  it("stops at a stop token id, but not before min_tokens", async () => {
    const engine = mocker({ vocabSize: 5 });
    const free = tokensOf(await collect(engine.generate(request("free", range(4), { seed: 1n, maxTokens: 40 }))));
    const stopId = free[1];
    const firstStop = free.indexOf(stopId);
    const outputs = await collect(engine.generate(request("s", range(4), { seed: 1n, maxTokens: 40, stopTokenIds: [stopId] })));
    expect(tokensOf(outputs)).toEqual(free.slice(0, firstStop + 1));
    expect(outputs.at(-1)!.finishReason).toBe("stop");

    const minTokens = firstStop + 2;
    const held = tokensOf(await collect(engine.generate(request("m", range(4), { seed: 1n, maxTokens: 40, stopTokenIds: [stopId], minTokens }))));
    const expectedEnd = free.findIndex((t, i) => t === stopId && i + 1 >= minTokens);
    expect(held).toEqual(free.slice(0, expectedEnd + 1));
  });

  it("stops at an eos id unless ignore_eos is set", async () => {
    const engine = mocker({ vocabSize: 5, eosTokenIds: [3] });
    const ignoring = tokensOf(await collect(engine.generate(request("i", range(4), { seed: 9n, maxTokens: 40, ignoreEos: true }))));
    expect(ignoring).toHaveLength(40);
    const stopping = await collect(engine.generate(request("e", range(4), { seed: 9n, maxTokens: 40 })));
    expect(tokensOf(stopping)).toEqual(ignoring.slice(0, ignoring.indexOf(3) + 1));
    expect(stopping.at(-1)!.finishReason).toBe("stop");
  });

  it("returns well-formed logprobs: the chosen token first, sorted, all <= 0", async () => {
    const engine = mocker({ vocabSize: 50 });
    const outputs = await collect(engine.generate(request("lp", range(4), { maxTokens: 10, logprobs: 5 })));
    for (const o of outputs) {
      expect(o.logprobs).toHaveLength(1);
      const [lp] = o.logprobs!;
      expect(lp.tokenId).toBe(o.tokenIds[0]);
      expect(lp.top).toHaveLength(5);
      expect(lp.top[0]).toEqual({ tokenId: lp.tokenId, logprob: lp.logprob });
      expect(new Set(lp.top.map((t) => t.tokenId)).size).toBe(5);
      const values = lp.top.map((t) => t.logprob);
      expect(values).toEqual([...values].sort((x, y) => y - x));
      for (const v of values) expect(v).toBeLessThanOrEqual(0);
      expect(values.reduce((sum, v) => sum + Math.exp(v), 0)).toBeLessThanOrEqual(1);
    }
    const none = await collect(engine.generate(request("none", range(4), { maxTokens: 2 })));
    expect(none.every((o) => o.logprobs === undefined)).toBe(true);
    const own = await collect(engine.generate(request("own", range(4), { maxTokens: 2, logprobs: 0 })));
    expect(own[0].logprobs![0].top).toEqual([]);
  });

  it("reports the prompt tokens served by the prefix cache", async () => {
    const engine = mocker({ blockSize: 4 });
    const system = range(16, 500);
    await collect(engine.generate(request("a", [...system, 1, 2], { maxTokens: 1 })));
    const outputs = await collect(engine.generate(request("b", [...system, 3, 4, 5], { maxTokens: 2 })));
    expect(outputs.map((o) => o.usage.cachedTokens)).toEqual([16, 16]);
    expect(engine.stats()).toMatchObject({ prefixCacheQueries: 18 + 19, prefixCacheHits: 16 });
  });

  it("rejects a prompt that fills max_model_len with invalid_argument before any output", async () => {
    const engine = mocker({ maxModelLen: 64 });
    const err = await errorOf(() => engine.generate(request("long", range(64))));
    expect(err.code).toBe("invalid_argument");
    expect(err.message).toMatch(/64 tokens/);
    expect((await errorOf(() => engine.generate(request("empty", [])))).code).toBe("invalid_argument");
    expect(engine.stats().waitingRequests).toBe(0);
  });

  it("rejects a duplicate request id while the first one runs", async () => {
    const engine = mocker();
    const first = collect(engine.generate(request("dup", range(4), { maxTokens: 3 })));
    expect((await errorOf(() => engine.generate(request("dup", range(4))))).code).toBe("invalid_argument");
    await first;
    // Once finished, the id is free again.
    expect(tokensOf(await collect(engine.generate(request("dup", range(4), { maxTokens: 3 }))))).toHaveLength(3);
  });

  it("rejects with resource_exhausted a request that could never fit in the whole pool", async () => {
    const engine = mocker({ blockSize: 4, numGpuBlocks: 4 });
    // 10 + 7 tokens: 16 need KV (the last sampled one never does), exactly 4 blocks.
    expect(tokensOf(await collect(engine.generate(request("fits", range(10), { maxTokens: 7 }))))).toHaveLength(7);
    expect((await errorOf(() => engine.generate(request("too-big", range(10), { maxTokens: 8 })))).code).toBe("resource_exhausted");
  });

  it("ends the stream with cancelled and frees the blocks when the signal aborts", async () => {
    const engine = mocker({ blockSize: 4 });
    const abort = new AbortController();
    const outputs: EngineOutput[] = [];
    for await (const o of engine.generate(request("s", range(20), { maxTokens: 1000 }), abort.signal)) {
      outputs.push(o);
      if (outputs.length === 3) abort.abort();
    }
    expect(outputs.at(-1)).toMatchObject({ tokenIds: [], finishReason: "cancelled" });
    expect(engine.stats()).toMatchObject({ runningRequests: 0, kvBlocksUsed: 0 });
    expect(engine.abort("s")).toBe(false);
  });

  it("ends the stream with cancelled when abort(requestId) names it, even while it waits", async () => {
    const engine = mocker({ blockSize: 4, maxNumSeqs: 1 });
    const running = engine.generate(request("running", range(8), { maxTokens: 1000 }))[Symbol.asyncIterator]();
    const waiting = collect(engine.generate(request("waiting", range(8, 100), { maxTokens: 1000 })));
    await running.next();
    expect(engine.stats()).toMatchObject({ runningRequests: 1, waitingRequests: 1 });
    const usedByOne = engine.stats().kvBlocksUsed;
    expect(engine.abort("waiting")).toBe(true);
    expect((await waiting).at(-1)!.finishReason).toBe("cancelled");
    expect(engine.stats().kvBlocksUsed).toBe(usedByOne);
    expect(engine.abort("running")).toBe(true);
    let last = await running.next();
    while (!last.done && last.value.finishReason === undefined) last = await running.next();
    expect(last.value?.finishReason).toBe("cancelled");
    expect(engine.stats()).toMatchObject({ runningRequests: 0, waitingRequests: 0, kvBlocksUsed: 0 });
  });

  it("aborts the request and frees its blocks when the consumer breaks out of the loop", async () => {
    const engine = mocker({ blockSize: 4 });
    const before = engine.stats().kvBlocksUsed;
    for await (const _ of engine.generate(request("b", range(30), { maxTokens: 1000 }))) break;
    expect(engine.stats()).toMatchObject({ runningRequests: 0, waitingRequests: 0, kvBlocksUsed: before });
    expect(engine.abort("b")).toBe(false);
  });

  it("stores a block filled during decode, with its hash chained to the prompt's", async () => {
    const engine = mocker({ blockSize: 4 });
    const events: KvEvent[] = [];
    engine.onKvEvents((batch) => events.push(...batch));
    const prompt = range(6, 300);
    const outputs = await collect(engine.generate(request("d", prompt, { maxTokens: 9 })));
    // 15 tokens, of which 14 have KV (the last sampled one never ran): 3 full blocks.
    const all = [...prompt, ...tokensOf(outputs)];
    const expected = blockHashes(all, 4).slice(0, 3);
    const stored = events.filter((e) => e.type === "stored");
    expect(stored.flatMap((e) => e.blockHashes)).toEqual(expected);
    expect(stored[0]).toEqual({ type: "stored", blockHashes: [expected[0]], tokenIds: all.slice(0, 4), blockSize: 4 });
    expect(stored[1]).toEqual({ type: "stored", blockHashes: [expected[1]], parentBlockHash: expected[0], tokenIds: all.slice(4, 8), blockSize: 4 });
    expect(engine.kvSnapshot()).toEqual([
      { type: "cleared" },
      { type: "stored", blockHashes: expected, tokenIds: all.slice(0, 12), blockSize: 4 },
    ]);
  });

  it("emits events that, replayed, always match the cache it snapshots, under evictions and preemptions", async () => {
    const engine = mocker({ blockSize: 4, numGpuBlocks: 40, maxNumSeqs: 6, maxNumBatchedTokens: 32 });
    const replayed = new Set<bigint>();
    const checks: Promise<void>[] = [];
    let batches = 0;
    let mismatches = 0;
    let evictions = 0;
    const sameSet = (a: Set<bigint>, b: Set<bigint>) => a.size === b.size && [...a].every((h) => b.has(h));
    engine.onKvEvents((batch) => {
      batches++;
      evictions += batch.filter((e) => e.type === "removed").length;
      replay(batch, replayed);
      if (!sameSet(replayed, replay(engine.kvSnapshot()))) mismatches++;
    });
    const random = rng(11);
    const systems = range(3).map((s) => range(8 + Math.floor(random() * 20), 10_000 * (s + 1)));
    for (let wave = 0; wave < 5; wave++) {
      const requests = range(15).map((i) => {
        const system = systems[Math.floor(random() * systems.length)];
        const prompt = [...system.slice(0, Math.floor(random() * system.length)), ...range(1 + Math.floor(random() * 20), 100 * (wave * 20 + i))];
        const abort = new AbortController();
        const stream = engine.generate(request(`w${wave}-${i}`, prompt, { maxTokens: 1 + Math.floor(random() * 30) }), abort.signal);
        const abortAfter = random() < 0.2 ? Math.floor(random() * 5) : -1;
        return (async () => {
          let n = 0;
          for await (const o of stream) if (n++ === abortAfter && o.finishReason === undefined) abort.abort();
        })();
      });
      checks.push(...requests);
      await Promise.all(requests);
      expect(engine.stats().kvBlocksUsed).toBe(0);
    }
    await Promise.all(checks);
    expect(mismatches).toBe(0);
    expect(batches).toBeGreaterThan(10);
    expect(replayed).toEqual(replay(engine.kvSnapshot()));
    expect(replayed.size).toBeGreaterThan(0);
    expect(evictions).toBeGreaterThan(0);
    expect(engine.stats().preemptions).toBeGreaterThan(0);
  });

  it("completes every request under a pool too small to run them together, by preempting", async () => {
    const engine = mocker({ blockSize: 4, numGpuBlocks: 16, maxNumBatchedTokens: 64 });
    const random = rng(5);
    const specs = range(20).map((i) => ({ prompt: range(4 + Math.floor(random() * 20), 1000 * i), maxTokens: 5 + Math.floor(random() * 20) }));
    const results = await Promise.all(specs.map((s, i) => collect(engine.generate(request(`p${i}`, s.prompt, { maxTokens: s.maxTokens, ignoreEos: true })))));
    results.forEach((outputs, i) => {
      expect(tokensOf(outputs)).toHaveLength(specs[i].maxTokens);
      expect(outputs.at(-1)!.finishReason).toBe("length");
    });
    expect(engine.stats().preemptions).toBeGreaterThan(0);
    expect(engine.stats()).toMatchObject({ runningRequests: 0, waitingRequests: 0, kvBlocksUsed: 0 });
  });

  it("runs a prompt longer than the step budget in chunks", async () => {
    const engine = mocker({ blockSize: 4, maxNumBatchedTokens: 16 });
    const events: KvEvent[][] = [];
    engine.onKvEvents((batch) => events.push(batch));
    const prompt = range(50);
    const outputs = await collect(engine.generate(request("c", prompt, { maxTokens: 1 })));
    expect(tokensOf(outputs)).toHaveLength(1);
    // 12 full blocks, stored 4 per 16-token chunk over three steps.
    expect(events.map((b) => b.flatMap((e) => (e.type === "stored" ? e.blockHashes : [])).length)).toEqual([4, 4, 4]);
  });

  it("clears the cache on resetPrefixCache with AllBlocksCleared", async () => {
    const engine = mocker({ blockSize: 4 });
    const events: KvEvent[] = [];
    engine.onKvEvents((batch) => events.push(...batch));
    await collect(engine.generate(request("a", range(9), { maxTokens: 1 })));
    expect(engine.resetPrefixCache()).toBe(true);
    expect(events.at(-1)).toEqual({ type: "cleared" });
    expect(engine.kvSnapshot()).toEqual([{ type: "cleared" }]);
  });

  it("waits the simulated step time, divided by the speedup ratio", async () => {
    // 10 steps of at least 5 ms each at ratio 1; at ratio 1e9 the same run is near instant.
    const engine = mocker({ speedupRatio: 1 });
    const started = performance.now();
    await collect(engine.generate(request("t", range(4), { maxTokens: 10 })));
    expect(performance.now() - started).toBeGreaterThanOrEqual(45);
    expect(new TimingModel({}, 1).stepMs({ prefillTokens: 1000, decodeSeqs: 0, decodeContextTokens: 0 })).toBeCloseTo(55);
    expect(new TimingModel({}, 10).simulatedMs({ prefillTokens: 0, decodeSeqs: 10, decodeContextTokens: 10_000 })).toBeCloseTo(0.55);
    expect(new TimingModel({}, 0).simulatedMs({ prefillTokens: 1000, decodeSeqs: 1, decodeContextTokens: 1 })).toBe(0);
  });

  it("cancels everything on close and refuses new requests", async () => {
    const engine = mocker();
    const pending = collect(engine.generate(request("c", range(4), { maxTokens: 100_000 })));
    await engine.close();
    expect((await pending).at(-1)!.finishReason).toBe("cancelled");
    expect((await errorOf(() => engine.generate(request("after", range(4))))).code).toBe("unavailable");
  });
});
