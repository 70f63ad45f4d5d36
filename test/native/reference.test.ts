/**
 * The engine against Hugging Face transformers (float32), from test/fixtures/native_reference.json
 * made by test/fixtures/make_reference.py on the same model files; and the fast CPU kernels
 * against the plain reference kernels.
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { NativeEngine } from "../../src/engine/native/native_engine.ts";
import { collect, sampling } from "./helpers.ts";
import { promptTokens, testLlamaDir, testQwen3Dir } from "./models.ts";

interface ReferenceStep {
  token: number;
  top_ids: number[];
  top_logprobs: number[];
}
interface ReferenceModel {
  folder_name: string;
  architecture: string;
  safetensors_sha256: string;
  cases: { prompt: number[]; steps: ReferenceStep[] }[];
}

const fixture = JSON.parse(readFileSync(new URL("../fixtures/native_reference.json", import.meta.url), "utf8")) as {
  models: ReferenceModel[];
};
const TOLERANCE = 1e-3;
const engines: NativeEngine[] = [];
afterAll(async () => {
  await Promise.all(engines.map((e) => e.close()));
});

async function load(dir: string, referenceKernels = false): Promise<NativeEngine> {
  const engine = await NativeEngine.load({ model: dir, device: "cpu", kvCacheMemoryBytes: 8 << 20, referenceKernels });
  engines.push(engine);
  return engine;
}

describe.each([
  ["Qwen3", testQwen3Dir],
  ["Llama", testLlamaDir],
])("%s against transformers", (arch, dirOf) => {
  const dir = dirOf();
  const ref = fixture.models.find((m) => dir.endsWith(m.folder_name));

  it("has a fixture made from byte-identical weights", () => {
    expect(ref, `no fixture for ${dir}; rerun test/fixtures/make_reference.py`).toBeDefined();
    const sha = createHash("sha256").update(readFileSync(join(dir, "model.safetensors"))).digest("hex");
    expect(sha).toBe(ref!.safetensors_sha256);
  });

  it("matches the reference's greedy tokens and top-5 logprobs within 1e-3", async () => {
    const engine = await load(dir);
    let compared = 0;
    for (const [i, c] of ref!.cases.entries()) {
      const out = await collect(engine, `ref-${i}`, c.prompt, sampling({ maxTokens: c.steps.length, logprobs: 5 }));
      for (const [s, step] of c.steps.entries()) {
        const got = out.logprobs[s];
        const margin = step.top_logprobs[0] - step.top_logprobs[1];
        // Every reference top-5 token the engine also ranks in its top 5 has the same logprob.
        for (const [k, id] of step.top_ids.entries()) {
          const mine = got.top.find((t) => t.tokenId === id);
          if (!mine) {
            // Only the fifth may fall out of the engine's top 5 (a near-tie with the sixth).
            expect(k, `case ${i} step ${s}: reference token ${id} missing`).toBe(4);
            continue;
          }
          expect(Math.abs(mine.logprob - step.top_logprobs[k]), `case ${i} step ${s} token ${id}`).toBeLessThan(TOLERANCE);
        }
        compared++;
        if (got.tokenId !== step.token) {
          // Only a near-tie may pick differently; the sequences differ from here on.
          expect(margin, `case ${i} step ${s}`).toBeLessThanOrEqual(TOLERANCE);
          break;
        }
      }
    }
    expect(compared).toBeGreaterThan(ref!.cases.length * 5);
  });
});

describe("fast CPU kernels", () => {
  it.each([
    ["Qwen3 (bf16, tied)", testQwen3Dir],
    ["Llama (f16, untied)", testLlamaDir],
  ])("agree with the reference kernels on %s", async (_name, dirOf) => {
    const fast = await load(dirOf());
    const slow = await load(dirOf(), true);
    expect(slow.info.backend).toBe("cpu-reference");
    const prompt = promptTokens(37, 99);
    const params = sampling({ maxTokens: 6, logprobs: 5 });
    const a = await collect(fast, "k", prompt, params);
    const b = await collect(slow, "k", prompt, params);
    expect(a.tokenIds).toEqual(b.tokenIds);
    for (const [s, lp] of a.logprobs.entries()) {
      for (const [k, t] of lp.top.entries()) {
        expect(t.tokenId).toBe(b.logprobs[s].top[k].tokenId);
        expect(Math.abs(t.logprob - b.logprobs[s].top[k].logprob)).toBeLessThan(1e-4);
      }
    }
  });
});
