/** The sampler through the engine: seeds, filters, penalties and logprobs. */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NativeEngine } from "../../src/engine/native/native_engine.ts";
import { collect, sampling } from "./helpers.ts";
import { promptTokens, testLlamaDir } from "./models.ts";

let engine: NativeEngine;
beforeAll(async () => {
  engine = await NativeEngine.load({ model: testLlamaDir(), device: "cpu", kvCacheMemoryBytes: 8 << 20 });
});
afterAll(async () => {
  await engine.close();
});

const prompt = promptTokens(23, 77);

describe("sampler", () => {
  it("samples the same tokens for the same seed and prompt, whatever shares the batch", async () => {
    const params = sampling({ temperature: 1.2, topP: 0.95, topK: 200, minP: 0.01, seed: 1234n, maxTokens: 16 });
    const alone = await collect(engine, "seed-alone", prompt, params);
    const others = Array.from({ length: 6 }, (_, i) =>
      collect(engine, `noise-${i}`, promptTokens(5 + i * 9, i), sampling({ temperature: 1, maxTokens: 20 })),
    );
    const batched = await collect(engine, "seed-batch", prompt, params);
    await Promise.all(others);
    expect(batched.tokenIds).toEqual(alone.tokenIds);
    const other = await collect(engine, "seed-other", prompt, { ...params, seed: 99n });
    expect(other.tokenIds).not.toEqual(alone.tokenIds);
  });

  it("with top_k = 1 (or tiny top_p) picks the greedy token at any temperature", async () => {
    const greedy = await collect(engine, "g", prompt, sampling({ maxTokens: 10 }));
    const k1 = await collect(engine, "k1", prompt, sampling({ temperature: 5, topK: 1, maxTokens: 10 }));
    const p0 = await collect(engine, "p0", prompt, sampling({ temperature: 5, topP: 1e-6, maxTokens: 10 }));
    const m1 = await collect(engine, "m1", prompt, sampling({ temperature: 5, minP: 1, maxTokens: 10 }));
    expect(k1.tokenIds).toEqual(greedy.tokenIds);
    expect(p0.tokenIds).toEqual(greedy.tokenIds);
    expect(m1.tokenIds).toEqual(greedy.tokenIds);
  });

  it("draws only from the top k tokens", async () => {
    const lp = await collect(engine, "topk-ref", prompt, sampling({ maxTokens: 1, logprobs: 3 }));
    const allowed = new Set(lp.logprobs[0].top.map((t) => t.tokenId));
    for (let s = 0; s < 20; s++) {
      const out = await collect(engine, `topk-${s}`, prompt, sampling({ temperature: 10, topK: 3, seed: BigInt(s), maxTokens: 1 }));
      expect(allowed.has(out.tokenIds[0])).toBe(true);
    }
  });

  it("returns the chosen token's logprob and the top alternatives in descending order", async () => {
    const out = await collect(engine, "lp", prompt, sampling({ maxTokens: 5, logprobs: 4 }));
    for (const [i, lp] of out.logprobs.entries()) {
      expect(lp.tokenId).toBe(out.tokenIds[i]);
      expect(lp.top).toHaveLength(4);
      expect(lp.top[0]).toEqual({ tokenId: lp.tokenId, logprob: lp.logprob });
      for (let k = 1; k < 4; k++) expect(lp.top[k].logprob).toBeLessThanOrEqual(lp.top[k - 1].logprob);
      expect(lp.logprob).toBeLessThan(0);
    }
    const none = await collect(engine, "nolp", prompt, sampling({ maxTokens: 2 }));
    expect(none.outputs.every((o) => o.logprobs === undefined)).toBe(true);
    const zero = await collect(engine, "lp0", prompt, sampling({ maxTokens: 2, logprobs: 0 }));
    expect(zero.logprobs.every((l) => l.top.length === 0)).toBe(true);
  });

  it("never repeats a prompt or output token under a strong repetition penalty", async () => {
    const out = await collect(engine, "rep", prompt, sampling({ maxTokens: 30, repetitionPenalty: 50 }));
    const seen = new Set(prompt);
    for (const t of out.tokenIds) {
      expect(seen.has(t)).toBe(false);
      seen.add(t);
    }
  });

  it("never repeats an output token under strong presence and frequency penalties", async () => {
    const plain = await collect(engine, "pf-plain", [5, 5, 5, 5], sampling({ maxTokens: 30 }));
    expect(new Set(plain.tokenIds).size).toBeLessThan(30); // the greedy output does repeat
    const out = await collect(engine, "pf", [5, 5, 5, 5], sampling({ maxTokens: 30, presencePenalty: 2, frequencyPenalty: 2 }));
    // Penalties shift logits by at most 4 per repeat; the model's logit spread here is smaller.
    expect(new Set(out.tokenIds).size).toBeGreaterThan(new Set(plain.tokenIds).size);
  });
});
