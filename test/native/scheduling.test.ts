/**
 * The engine's batching and caching must not change what a request generates: the same greedy
 * tokens (and logprobs, bit for bit) alone or in a batch, with or without a prefix-cache hit,
 * with or without chunked prefill, with or without preemption. Also the KV events and the
 * block pool's bookkeeping.
 */
import { afterAll, describe, expect, it } from "vitest";
import { blockHashes } from "../../src/engine/block_hash.ts";
import type { KvEvent } from "../../src/engine/engine.ts";
import { NativeEngine, type NativeEngineOptions } from "../../src/engine/native/native_engine.ts";
import { collect, sampling, type Collected } from "./helpers.ts";
import { promptTokens, testLlamaDir, testQwen3Dir } from "./models.ts";

const engines: NativeEngine[] = [];
afterAll(async () => {
  await Promise.all(engines.map((e) => e.close()));
});
async function load(options: Partial<NativeEngineOptions> = {}): Promise<NativeEngine> {
  const e = await NativeEngine.load({ model: testLlamaDir(), device: "cpu", kvCacheMemoryBytes: 8 << 20, ...options });
  engines.push(e);
  return e;
}

const LENGTHS = [3, 70, 16, 17, 33, 5, 48, 1, 64, 9, 31, 12, 40, 2, 25, 57];
const prompts = LENGTHS.map((n, i) => promptTokens(n, 100 + i));
const params = sampling({ maxTokens: 12, logprobs: 3 });

async function alone(engine: NativeEngine): Promise<Collected[]> {
  const out: Collected[] = [];
  for (const [i, p] of prompts.entries()) out.push(await collect(engine, `alone-${i}`, p, params));
  return out;
}
async function together(engine: NativeEngine, tag: string): Promise<Collected[]> {
  return Promise.all(prompts.map((p, i) => collect(engine, `${tag}-${i}`, p, params)));
}
const strip = (c: Collected[]) => c.map((x) => ({ tokenIds: x.tokenIds, logprobs: x.logprobs }));

describe("invariance", () => {
  let baseline: Collected[];

  it("gives each request the same output alone and in a batch of 16 mixed lengths", async () => {
    const engine = await load({ enablePrefixCaching: false });
    baseline = await alone(engine);
    const batched = await together(engine, "batch");
    expect(strip(batched)).toEqual(strip(baseline));
    expect(baseline.every((c) => c.finishReason === "length" && c.tokenIds.length === 12)).toBe(true);
  });

  it("gives the same output with chunked prefill (8 tokens per step)", async () => {
    const engine = await load({ maxNumBatchedTokens: 8, enablePrefixCaching: false });
    expect(strip(await together(engine, "chunk"))).toEqual(strip(baseline));
  });

  it("gives the same output on a prefix-cache hit, and reports the cached tokens", async () => {
    const engine = await load();
    const first = await collect(engine, "cold", prompts[1], params);
    const second = await collect(engine, "warm", prompts[1], params);
    expect(first.usage!.cachedTokens).toBe(0);
    expect(second.usage!.cachedTokens).toBe(64); // 4 full blocks of the 70-token prompt
    expect(second.tokenIds).toEqual(first.tokenIds);
    expect(second.logprobs).toEqual(first.logprobs);
    expect(first.tokenIds).toEqual(baseline[1].tokenIds);
    // A prompt that is a whole number of blocks still computes its last block.
    const exact = promptTokens(32, 7);
    await collect(engine, "exact-1", exact, params);
    const exact2 = await collect(engine, "exact-2", exact, params);
    expect(exact2.usage!.cachedTokens).toBe(16);
    const stats = engine.stats();
    expect(stats.prefixCacheHits).toBe(64 + 16);
  });

  it("gives the same output when the KV cache is too small and requests are preempted", async () => {
    // 10 blocks of 16 tokens for 16 requests of up to 82 tokens each.
    const engine = await load({ kvCacheMemoryBytes: 10 * 2 * 2 * 16 * 2 * 16 * 4 });
    expect(engine.info.numKvBlocks).toBe(10);
    const out = await together(engine, "tight");
    expect(strip(out)).toEqual(strip(baseline));
    expect(engine.stats().preemptions).toBeGreaterThan(0);
    expect(engine.checkInvariants()).toBe("");
    expect(engine.stats().kvBlocksUsed).toBe(0);
  });

  it("gives the same output in a batch on the bf16 Qwen3 model", async () => {
    const engine = await load({ model: testQwen3Dir(), enablePrefixCaching: false });
    const few = prompts.slice(0, 6);
    const single: Collected[] = [];
    for (const [i, p] of few.entries()) single.push(await collect(engine, `q-${i}`, p, params));
    const batched = await Promise.all(few.map((p, i) => collect(engine, `qb-${i}`, p, params)));
    expect(strip(batched)).toEqual(strip(single));
  });
});

/** Replays events into a map hash → {parent, tokens}. */
function replay(events: KvEvent[], into = new Map<bigint, { parent?: bigint; tokenIds: number[] }>()) {
  for (const e of events) {
    if (e.type === "stored") {
      e.blockHashes.forEach((h, i) => {
        into.set(h, { parent: i === 0 ? e.parentBlockHash : e.blockHashes[i - 1], tokenIds: e.tokenIds.slice(i * e.blockSize, (i + 1) * e.blockSize) });
      });
    } else if (e.type === "removed") {
      for (const h of e.blockHashes) {
        expect(into.has(h), `removed ${h} was never stored`).toBe(true);
        into.delete(h);
      }
    } else {
      into.clear();
    }
  }
  return into;
}

describe("KV events and the block pool", () => {
  it("stores a prompt's full blocks under the shared chained hash", async () => {
    const engine = await load();
    const events: KvEvent[] = [];
    engine.onKvEvents((e) => events.push(...e));
    const prompt = promptTokens(40, 55);
    await collect(engine, "ev", prompt, sampling({ maxTokens: 9 }));
    const hashes = blockHashes(prompt, 16);
    const stored = events.filter((e) => e.type === "stored");
    expect(stored[0]).toEqual({ type: "stored", blockHashes: hashes, tokenIds: prompt.slice(0, 32), blockSize: 16 });
    // The block completed during decode continues the chain from the prompt's last block.
    expect(stored[1]).toMatchObject({ type: "stored", parentBlockHash: hashes[1] });
    expect((stored[1] as { blockHashes: bigint[] }).blockHashes).toHaveLength(1);
    expect(engine.kvSnapshot()).toEqual(engine.nativeKvSnapshot());
    expect(engine.kvSnapshot()).toHaveLength(3);
  });

  it("keeps events, snapshot and pool consistent under random load with evictions and aborts", async () => {
    const engine = await load({ kvCacheMemoryBytes: 12 * 2 * 2 * 16 * 2 * 16 * 4, maxNumBatchedTokens: 48 });
    const events: KvEvent[] = [];
    engine.onKvEvents((e) => events.push(...e));
    let x = 2024;
    const rand = (n: number) => (x = (x * 1103515245 + 12345) >>> 0) % n;
    const prefixes = [promptTokens(40, 1), promptTokens(24, 2), promptTokens(70, 3)];
    for (let round = 0; round < 4; round++) {
      const runs = Array.from({ length: 8 }, (_, i) => {
        const prompt = [...prefixes[rand(3)].slice(0, 8 + rand(60)), ...promptTokens(rand(20), rand(1000))];
        const controller = new AbortController();
        const maxTokens = 1 + rand(20);
        const run = (async () => {
          let n = 0;
          for await (const out of engine.generate({ requestId: `r${round}-${i}`, promptTokenIds: prompt, sampling: sampling({ maxTokens }) }, controller.signal)) {
            if (++n === 3 && rand(4) === 0) controller.abort();
            if (out.finishReason) return out.finishReason;
          }
        })();
        return run;
      });
      const reasons = await Promise.all(runs);
      expect(reasons.every((r) => r === "length" || r === "cancelled")).toBe(true);
      expect(engine.checkInvariants()).toBe("");
      expect(engine.stats().kvBlocksUsed).toBe(0);
    }
    expect(events.some((e) => e.type === "removed")).toBe(true);
    const rebuilt = replay(events);
    const snapshot = replay(engine.nativeKvSnapshot());
    expect(rebuilt).toEqual(snapshot);
    expect(replay(engine.kvSnapshot())).toEqual(snapshot);
    // Every cached block's hash is the chained hash of its tokens under its parent.
    for (const [hash, block] of snapshot) expect(blockHashes(block.tokenIds, 16, block.parent ?? 0n)[0]).toBe(hash);
  });
});
