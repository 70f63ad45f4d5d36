/**
 * The native engine on the CUDA backend. Skipped, with the reason, where the addon was built
 * without CUDA or sees no GPU (CI). On a GPU machine bench/native_cuda.sh runs it after writing
 * the transformers reference (bench/native_cuda_hf.py reference) to SWITCHYARD_CUDA_REFERENCE:
 * same top-1 wherever the reference's margin exceeds 0.1, logprobs within 0.05, for every model
 * in its own dtype and for the bf16 ones served in float16 too (--dtype float16). The
 * invariances the CPU tests check (batch, prefix cache, chunked prefill) hold on the GPU too,
 * with CUDA graphs and without.
 */
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { loadNativeAddon, NativeEngine, type NativeDtype, type NativeEngineOptions } from "../../src/engine/native/native_engine.ts";
import type { SamplingParams } from "../../src/engine/engine.ts";
import { collect, sampling, type Collected } from "./helpers.ts";
import { promptTokens, testLlamaDir, testQwen3Dir, testQwen3Hd128Dir, testQwen3Hd64Gqa4Dir } from "./models.ts";

const cuda = (() => {
  try {
    return loadNativeAddon().cudaInfo();
  } catch (err) {
    return { built: false, deviceCount: 0, name: "", totalMemoryBytes: 0, error: (err as Error).message };
  }
})();
const usable = cuda.built && cuda.deviceCount > 0;
if (!usable) console.warn(`skipping the CUDA tests: ${cuda.error ?? "no CUDA device"}`);

const REFERENCE = process.env.SWITCHYARD_CUDA_REFERENCE ?? ".cache/cuda-reference.json";
/** The Qwen3-0.6B-shaped random model bench/native_cuda_hf.py make-model writes; optional. */
const QWEN3_06B_DIR = process.env.SWITCHYARD_QWEN3_06B;
const MARGIN = 0.1;
const LOGPROB_TOLERANCE = 0.05;

const open: NativeEngine[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((e) => e.close()));
});

async function gpuEngine(model: string, options: Partial<NativeEngineOptions> = {}): Promise<NativeEngine> {
  const engine = await NativeEngine.load({ model, device: "cuda", kvCacheMemoryBytes: 256 << 20, ...options });
  open.push(engine);
  return engine;
}

/**
 * Two greedy runs agree: same tokens up to the first step where the first run's top-2 margin
 * is within MARGIN (a near-tie that bf16 rounding may break either way); logprobs of the
 * agreed tokens within the tolerance.
 */
function expectSameGreedy(a: Collected, b: Collected, what: string): void {
  expect(a.errorMessage ?? "", `${what}: first run`).toBe("");
  expect(b.errorMessage ?? "", `${what}: second run`).toBe("");
  for (let s = 0; s < a.tokenIds.length; s++) {
    const top = a.logprobs[s]?.top ?? [];
    const nearTie = top.length > 1 && top[0].logprob - top[1].logprob <= MARGIN;
    if (a.tokenIds[s] !== b.tokenIds[s]) {
      expect(nearTie, `${what}: step ${s} differs (${a.tokenIds[s]} vs ${b.tokenIds[s]}) without a near-tie`).toBe(true);
      return;
    }
    expect(Math.abs(a.logprobs[s].logprob - b.logprobs[s].logprob), `${what}: step ${s} logprob`).toBeLessThan(LOGPROB_TOLERANCE);
    if (nearTie) return;
  }
}

/** Runs fn with the environment variable set (engines read their switches when they load). */
async function withEnv<R>(name: string, value: string, fn: () => Promise<R>): Promise<R> {
  const saved = process.env[name];
  process.env[name] = value;
  try {
    return await fn();
  } finally {
    if (saved === undefined) delete process.env[name];
    else process.env[name] = saved;
  }
}

const greedy = (maxTokens: number): SamplingParams => sampling({ maxTokens, logprobs: 2 });

const tmp = mkdtempSync(join(tmpdir(), "sy-cuda-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** A copy of a bf16 model whose tensor `name` starts with `value` (rounded to bf16). */
function modelWithWeight(dir: string, name: string, value: number): string {
  const copy = mkdtempSync(join(tmp, "model-"));
  cpSync(dir, copy, { recursive: true });
  const file = join(copy, "model.safetensors");
  const bytes = readFileSync(file);
  const headerLength = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString("utf8")) as Record<string, { dtype: string; data_offsets: [number, number] }>;
  const tensor = header[name];
  if (tensor?.dtype !== "BF16") throw new Error(`${name} is not a bf16 tensor of ${file}`);
  const f32 = Buffer.alloc(4);
  f32.writeFloatLE(value);
  bytes.writeUInt16LE(f32.readUInt32LE(0) >>> 16, 8 + headerLength + tensor.data_offsets[0]);
  writeFileSync(file, bytes);
  return copy;
}

describe.skipIf(!usable)(`CUDA backend (${cuda.name || "no GPU"})`, { timeout: 120_000 }, () => {
  interface ReferenceStep {
    token: number;
    top_ids: number[];
    top_logprobs: number[];
  }
  const reference = existsSync(REFERENCE)
    ? (JSON.parse(readFileSync(REFERENCE, "utf8")) as { models: { folder: string; cases: { prompt: number[]; steps: ReferenceStep[] }[] }[] })
    : undefined;
  const models: [string, () => string][] = [
    ["tiny Qwen3 (bf16)", testQwen3Dir],
    ["tiny Llama (fp16)", testLlamaDir],
  ];
  if (QWEN3_06B_DIR) models.push(["Qwen3-0.6B-shaped (bf16)", () => QWEN3_06B_DIR]);
  // The bf16 checkpoints also served in fp16 (dtype float16): against the same reference.
  const comparisons: [string, () => string, NativeDtype, string][] = [
    ...models.map(([name, dirOf]): [string, () => string, NativeDtype, string] => [name, dirOf, "auto", name.includes("fp16") ? "float16" : "bfloat16"]),
    ...models
      .filter(([name]) => name.includes("bf16"))
      .map(([name, dirOf]): [string, () => string, NativeDtype, string] => [`${name} as float16`, dirOf, "float16", "float16"]),
  ];

  it.each(comparisons)("matches transformers on the same GPU: %s", async (_name, dirOf, dtype, runsIn) => {
    const dir = dirOf();
    const ref = reference?.models.find((m) => m.folder === dir);
    if (!ref) {
      console.warn(`no GPU reference for ${dir} in ${REFERENCE}: run bench/native_cuda_hf.py reference`);
      return;
    }
    const engine = await gpuEngine(dir, { dtype });
    expect(engine.info.backend).toBe("cuda");
    expect(engine.info.dtype).toBe(runsIn);
    let compared = 0;
    for (const [i, c] of ref.cases.entries()) {
      const out = await collect(engine, `ref-${i}`, c.prompt, sampling({ maxTokens: c.steps.length, logprobs: 5 }));
      expect(out.errorMessage ?? "", `case ${i}`).toBe("");
      for (const [s, step] of c.steps.entries()) {
        const got = out.logprobs[s];
        const margin = step.top_logprobs[0] - step.top_logprobs[1];
        for (const [k, id] of step.top_ids.entries()) {
          const mine = got.top.find((t) => t.tokenId === id);
          if (!mine) continue;  // a near-tie at the edge of the top 5
          expect(Math.abs(mine.logprob - step.top_logprobs[k]), `case ${i} step ${s} token ${id}`).toBeLessThan(LOGPROB_TOLERANCE);
        }
        compared++;
        if (margin > MARGIN) expect(got.tokenId, `case ${i} step ${s} (margin ${margin.toFixed(3)})`).toBe(step.token);
        if (got.tokenId !== step.token) break;
      }
    }
    expect(compared).toBeGreaterThanOrEqual(ref.cases.length);
  });

  it.each([
    ["Qwen3 (bf16, group 2)", testQwen3Dir],
    ["Llama (fp16, group 3)", testLlamaDir],
  ])("gives the same greedy output alone and in a batch, with and without CUDA graphs: %s", async (_n, dirOf) => {
    const dir = dirOf();
    const graphs = await gpuEngine(dir);
    const prompts = Array.from({ length: 9 }, (_, i) => promptTokens(5 + 23 * i, 40 + i));
    const alone = await collect(graphs, "alone", prompts[0], greedy(24));
    const batch = await Promise.all(prompts.map((p, i) => collect(graphs, `b${i}`, p, greedy(24))));
    expectSameGreedy(alone, batch[0], "alone vs batch");
    await graphs.close();
    const eager = await gpuEngine(dir, { enforceEager: true });
    const eagerBatch = await Promise.all(prompts.map((p, i) => collect(eager, `e${i}`, p, greedy(24))));
    for (let i = 0; i < prompts.length; i++) expectSameGreedy(batch[i], eagerBatch[i], `graphs vs eager, request ${i}`);
  });

  it.each(models)(
    "gives the same prefill alone and in a step large enough for the two-row-group attention kernel: %s",
    async (_name, dirOf) => {
      const dir = dirOf();
      // A prefill launch of more than two blocks an SM runs v5 (prefill_attention.cu), a smaller
      // one v4 (head_dim 128 on an H100/H200 runs v6 either way): enough 300-token prompts in one
      // step for 320 blocks (two for each SM of a GPU with up to 160), each prompt taking
      // ceil(300 / (128 / group)) tiles times the KV heads.
      const config = JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as {
        num_attention_heads: number;
        num_key_value_heads: number;
      };
      const tileTokens = Math.floor(128 / (config.num_attention_heads / config.num_key_value_heads));
      const blocksPerPrompt = Math.ceil(300 / tileTokens) * config.num_key_value_heads;
      const count = Math.floor(320 / blocksPerPrompt) + 1;
      const engine = await gpuEngine(dir, { maxNumBatchedTokens: 300 * count, maxNumSeqs: count, enablePrefixCaching: false });
      const prompts = Array.from({ length: count }, (_, i) => promptTokens(300, 70 + i));
      const alone: Collected[] = [];
      for (const [i, p] of prompts.entries()) alone.push(await collect(engine, `a${i}`, p, greedy(8)));
      const together = await Promise.all(prompts.map((p, i) => collect(engine, `t${i}`, p, greedy(8))));
      for (let i = 0; i < count; i++) expectSameGreedy(alone[i], together[i], `prompt ${i}: alone vs with ${count - 1} others`);
    },
  );

  it.each(models)(
    "runs a batch-1 decode step as one persistent kernel, with the same bits as kernel per op: %s",
    async (_name, dirOf) => {
      const dir = dirOf();
      // Contexts of one 64-key tile (written by one block) and of several splits (merged), and a
      // seeded random draw; one request at a time, so every decode step is batch 1.
      const requests: [number[], SamplingParams][] = [
        [promptTokens(5, 61), sampling({ maxTokens: 24, logprobs: 5 })],
        [promptTokens(700, 62), sampling({ maxTokens: 24, logprobs: 5 })],
        [promptTokens(40, 63), sampling({ temperature: 0.9, topP: 0.95, seed: 7n, maxTokens: 24, logprobs: 5 })],
      ];
      const run = async (engine: NativeEngine, tag: string): Promise<Collected[]> => {
        const outs: Collected[] = [];
        for (const [i, [prompt, params]] of requests.entries()) outs.push(await collect(engine, `${tag}${i}`, prompt, params));
        return outs;
      };
      // SWITCHYARD_CUDA_PERSISTENT (on | off) is read when an engine loads. Kernel per op here
      // means the attention sublayer's three kernels too, whatever that switch's default: the
      // one-kernel sublayer sums in another order (the next test).
      // And the block decode attention kernel, whose block the persistent step runs.
      const withPersistent = (mode: "on" | "off", detail: RegExp, tag: string): Promise<Collected[]> =>
        withEnv("SWITCHYARD_CUDA_DECODE_WARPS", "off", () =>
          withEnv("SWITCHYARD_CUDA_ATTENTION_SUBLAYER", "off", () =>
            withEnv("SWITCHYARD_CUDA_PERSISTENT", mode, async () => {
              const engine = await gpuEngine(dir);
              expect(engine.info.backendDetail).toMatch(detail);
              const outs = await run(engine, tag);
              await engine.close();
              return outs;
            }),
          ),
        );
      const a = await withPersistent("on", /one persistent kernel/, "p");
      const b = await withPersistent("off", /kernel per op \(SWITCHYARD_CUDA_PERSISTENT is off\)/, "k");
      for (let i = 0; i < requests.length; i++) {
        expect(a[i].errorMessage ?? "", `request ${i}`).toBe("");
        expect(a[i].tokenIds, `request ${i}: tokens`).toEqual(b[i].tokenIds);
        expect(a[i].logprobs, `request ${i}: logprobs`).toEqual(b[i].logprobs);
      }
    },
  );

  it.each(models)(
    "runs a batch-1 decode layer's qkv, attention and o as one cluster kernel, with kernel per op's output: %s",
    async (_name, dirOf) => {
      const dir = dirOf();
      // Contexts shorter than a cluster (blocks without keys), of one 64-key tile a block, and of
      // several (1500 keys over at most 16 blocks); one request at a time: batch-1 steps.
      const requests: [number[], SamplingParams][] = [
        [promptTokens(5, 91), greedy(24)],
        [promptTokens(700, 92), greedy(24)],
        [promptTokens(1500, 93), greedy(24)],
      ];
      const run = (mode: "on" | "off"): Promise<{ detail: string; outs: Collected[] }> =>
        withEnv("SWITCHYARD_CUDA_ATTENTION_SUBLAYER", mode, async () => {
          const engine = await gpuEngine(dir);
          const outs: Collected[] = [];
          for (const [i, [prompt, params]] of requests.entries()) outs.push(await collect(engine, `s-${mode}-${i}`, prompt, params));
          const detail = engine.info.backendDetail ?? "";
          await engine.close();
          return { detail, outs };
        });
      const on = await run("on");
      const off = await run("off");
      expect(off.detail).toMatch(/attention sublayer: kernel per op \(SWITCHYARD_CUDA_ATTENTION_SUBLAYER is off\)/);
      if (/attention sublayer: kernel per op \(needs Hopper/.test(on.detail)) {
        console.warn(`the one-kernel attention sublayer needs Hopper: ${on.detail}`);
        return;
      }
      expect(on.detail).toMatch(/attention sublayer: one kernel, clusters of \d+/);
      for (let i = 0; i < requests.length; i++) expectSameGreedy(on.outs[i], off.outs[i], `request ${i}: one kernel vs kernel per op`);
    },
  );

  // Contexts of one 64-key tile (written by its block), of several splits (merged), and long
  // enough for several 16-key steps a warp; decode rows beside prefill rows (q from the q/k pass)
  // and in pure decode steps (q and the new K/V made by the kernel itself).
  const decodeAttentionPrompts = [
    promptTokens(5, 101),
    promptTokens(60, 102),
    promptTokens(300, 103),
    promptTokens(1500, 104),
    ...Array.from({ length: 5 }, (_, i) => promptTokens(20 + 37 * i, 105 + i)),
  ];
  /** Greedy outputs of those prompts, all in one batch, by an engine loaded with switch `env` set. */
  const decodeAttentionRun = (
    dir: string,
    env: [string, string],
    detail: RegExp,
    tag: string,
    options: Partial<NativeEngineOptions> = {},
  ): Promise<Collected[]> =>
    withEnv(env[0], env[1], async () => {
      const engine = await gpuEngine(dir, options);
      expect(engine.info.backendDetail).toMatch(detail);
      const outs = await Promise.all(decodeAttentionPrompts.map((p, i) => collect(engine, `${tag}-${i}`, p, greedy(24))));
      await engine.close();
      return outs;
    });

  it.each(models)(
    "runs decode attention with warps that step on their own, with the block kernel's output: %s",
    async (_name, dirOf) => {
      const dir = dirOf();
      const on = await decodeAttentionRun(
        dir,
        ["SWITCHYARD_CUDA_DECODE_MMA", "off"],
        /decode attention warp-stepped \(SWITCHYARD_CUDA_DECODE_MMA is off\);/,
        "w-on",
      );
      const off = await decodeAttentionRun(
        dir,
        ["SWITCHYARD_CUDA_DECODE_WARPS", "off"],
        /decode attention block kernel \(SWITCHYARD_CUDA_DECODE_WARPS is off\)/,
        "w-off",
      );
      for (let i = 0; i < decodeAttentionPrompts.length; i++) {
        expectSameGreedy(off[i], on[i], `prompt ${i}: warp-stepped vs block kernel`);
      }
    },
  );

  // The tensor-core kernel is built for head_dim 64 and 128 (the tiny models above have 16).
  const tensorCoreModels: [string, () => string][] = [
    ["tiny Qwen3, head_dim 128, GQA 2 (bf16)", testQwen3Hd128Dir],
    ["tiny Qwen3, head_dim 64, GQA 4 (bf16)", testQwen3Hd64Gqa4Dir],
  ];
  if (QWEN3_06B_DIR) tensorCoreModels.push(["Qwen3-0.6B-shaped (bf16)", () => QWEN3_06B_DIR]);
  it.each(tensorCoreModels)(
    "runs decode attention on tensor cores, with the warp-stepped kernel's output: %s",
    async (_name, dirOf) => {
      const dir = dirOf();
      for (const dtype of ["bfloat16", "float16"] as const) {
        const mma = await decodeAttentionRun(dir, ["SWITCHYARD_CUDA_DECODE_MMA", "on"], /decode attention tensor-core;/, `mma-${dtype}`, {
          dtype,
        });
        const warps = await decodeAttentionRun(
          dir,
          ["SWITCHYARD_CUDA_DECODE_MMA", "off"],
          /decode attention warp-stepped \(SWITCHYARD_CUDA_DECODE_MMA is off\);/,
          `warps-${dtype}`,
          { dtype },
        );
        for (let i = 0; i < decodeAttentionPrompts.length; i++) {
          expectSameGreedy(warps[i], mma[i], `${dtype}, prompt ${i}: tensor cores vs warp-stepped`);
        }
      }
    },
  );

  it.each(models)(
    "runs prefill GEMMs on the cuBLASLt algorithms timed at load, with the output of cuBLAS's default: %s",
    async (_name, dirOf) => {
      const dir = dirOf();
      // A prefill step of 700+ rows (tuned algorithms: gemm.h, from 512 rows), then decode steps
      // of 10 rows (a graph of 16: cublasGemmEx or small_gemm, the same in both engines).
      const prompts = [promptTokens(700, 81), ...Array.from({ length: 9 }, (_, i) => promptTokens(20 + i, 82 + i))];
      const withTuning = (mode: "on" | "off"): Promise<Collected[]> =>
        withEnv("SWITCHYARD_CUDA_GEMM_TUNE", mode, async () => {
          const engine = await gpuEngine(dir);
          if (mode === "on") expect(engine.info.backendDetail).toMatch(/prefill GEMMs tuned by timing/);
          else expect(engine.info.backendDetail).not.toMatch(/tuned/);
          const outs = await Promise.all(prompts.map((p, i) => collect(engine, `tune-${mode}-${i}`, p, greedy(16))));
          await engine.close();
          return outs;
        });
      const [off, on] = [await withTuning("off"), await withTuning("on")];
      for (let i = 0; i < prompts.length; i++) expectSameGreedy(off[i], on[i], `prompt ${i}: tuned vs cuBLAS's default GEMMs`);
    },
  );

  it.each(models)(
    "runs products of a few rows on its own tensor-core kernel, with cuBLAS's output: %s",
    async (_name, dirOf) => {
      const dir = dirOf();
      // Seven requests: decode steps of 7 rows in the graph of 8 (bf16 stacks hi and lo: 16 rows,
      // fp16 8), past the gemv's 2 and within small_gemm's 16.
      const prompts = Array.from({ length: 7 }, (_, i) => promptTokens(30 + 11 * i, 121 + i));
      const run = (mode: "on" | "off"): Promise<Collected[]> =>
        withEnv("SWITCHYARD_CUDA_SMALL_GEMM", mode, async () => {
          const engine = await gpuEngine(dir);
          if (mode === "on") expect(engine.info.backendDetail).toMatch(/products of up to 16 rows on tensor cores/);
          else expect(engine.info.backendDetail).not.toMatch(/products of up to/);
          const outs = await Promise.all(prompts.map((p, i) => collect(engine, `small-${mode}-${i}`, p, greedy(24))));
          await engine.close();
          return outs;
        });
      const [off, on] = [await run("off"), await run("on")];
      for (let i = 0; i < prompts.length; i++) expectSameGreedy(off[i], on[i], `prompt ${i}: small_gemm vs cuBLAS`);
    },
  );

  it.each(models)(
    "makes SiLU·up in the small gate_up product itself, with the bits of a pass of its own: %s",
    async (_name, dirOf) => {
      const dir = dirOf();
      // Prefill steps of 3-16 rows run small_gemm (bf16 stacks hi and lo rows: up to 8 tokens),
      // with and without the fused SiLU·up: the same products and the same arithmetic after
      // them, so every later token (batch-1 decode, on gemv, over that KV cache) is the same too.
      // One request at a time, so that both engines run the same steps.
      const prompts = [3, 5, 8, 12, 16].map((length, i) => promptTokens(length, 161 + i));
      const run = async (mode: "on" | "off"): Promise<Collected[]> =>
        withEnv("SWITCHYARD_CUDA_SMALL_GEMM_SILU", mode, async () => {
          const engine = await gpuEngine(dir);
          if (mode === "on") expect(engine.info.backendDetail).toMatch(/SiLU·up in their gate_up product/);
          else expect(engine.info.backendDetail).not.toMatch(/SiLU·up in/);
          const outs: Collected[] = [];
          for (const [i, prompt] of prompts.entries()) outs.push(await collect(engine, `silu-${mode}-${i}`, prompt, greedy(8)));
          await engine.close();
          return outs;
        });
      const [own, fused] = [await run("off"), await run("on")];
      for (let i = 0; i < prompts.length; i++) {
        expect(fused[i].errorMessage ?? "", `prompt ${i}`).toBe("");
        expect(fused[i].tokenIds, `prompt ${i}: tokens`).toEqual(own[i].tokenIds);
        expect(fused[i].logprobs, `prompt ${i}: logprobs`).toEqual(own[i].logprobs);
      }
    },
  );

  it.each(models.filter(([name]) => name.includes("bf16")))(
    "runs the split lm_head as one product over the stacked hi and lo rows, with two products' output: %s",
    async (_name, dirOf) => {
      const dir = dirOf();
      // Decode steps of 7 rows in the graph of 8: past the gemv's 2 rows, within the stacked
      // lm_head's hidden / 8 rows (8 for the tiny Qwen3, 128 for the 0.6B shape).
      const prompts = Array.from({ length: 7 }, (_, i) => promptTokens(40 + 9 * i, 141 + i));
      const run = (rows: "0" | "auto"): Promise<Collected[]> =>
        withEnv("SWITCHYARD_CUDA_LM_HEAD_STACKED_ROWS", rows === "0" ? "0" : "", async () => {
          const engine = await gpuEngine(dir);
          if (rows === "auto") expect(engine.info.backendDetail).toMatch(/lm_head on stacked hi \+ lo rows for up to \d+ rows/);
          else expect(engine.info.backendDetail).not.toMatch(/lm_head on stacked/);
          const outs = await Promise.all(prompts.map((p, i) => collect(engine, `lm-head-${rows}-${i}`, p, greedy(24))));
          await engine.close();
          return outs;
        });
      const [two, stacked] = [await run("0"), await run("auto")];
      for (let i = 0; i < prompts.length; i++) expectSameGreedy(two[i], stacked[i], `prompt ${i}: stacked vs two lm_head products`);
    },
  );

  it("gives the same output with a prefix-cache hit and with chunked prefill", async () => {
    const dir = testQwen3Dir();
    const prompt = promptTokens(300, 5);
    const whole = await gpuEngine(dir, { enablePrefixCaching: false });
    const base = await collect(whole, "base", prompt, greedy(16));
    await whole.close();
    const cached = await gpuEngine(dir);
    await collect(cached, "warm", prompt.slice(0, 200), greedy(1));
    const hit = await collect(cached, "hit", prompt, greedy(16));
    expect(hit.usage!.cachedTokens).toBeGreaterThanOrEqual(192);
    expectSameGreedy(base, hit, "prefix-cache hit");
    await cached.close();
    const chunked = await gpuEngine(dir, { maxNumBatchedTokens: 64, enablePrefixCaching: false });
    expectSameGreedy(base, await collect(chunked, "chunked", prompt, greedy(16)), "chunked prefill");
  });

  it("samples on the GPU reproducibly by seed, whatever shares the batch", async () => {
    const engine = await gpuEngine(testQwen3Dir());
    const params = sampling({ temperature: 0.8, topK: 50, topP: 0.9, minP: 0.01, seed: 1234n, maxTokens: 16 });
    const a = await collect(engine, "s1", promptTokens(20, 1), params);
    const [b] = await Promise.all([
      collect(engine, "s2", promptTokens(20, 1), params),
      ...Array.from({ length: 5 }, (_, i) => collect(engine, `o${i}`, promptTokens(30, 9 + i), { ...params, seed: BigInt(i) })),
    ]);
    expect(b.tokenIds).toEqual(a.tokenIds);
    const c = await collect(engine, "s3", promptTokens(20, 1), { ...params, seed: 99n });
    expect(c.tokenIds).not.toEqual(a.tokenIds);
    // top-k 1 is greedy, whatever the temperature.
    const k1 = await collect(engine, "k1", promptTokens(20, 1), sampling({ temperature: 1.5, topK: 1, seed: 5n, maxTokens: 8 }));
    const g = await collect(engine, "g", promptTokens(20, 1), sampling({ maxTokens: 8 }));
    expect(k1.tokenIds).toEqual(g.tokenIds);
  });

  it("frees its GPU memory on close: a second engine as large, in the same process, gets as many KV blocks", async () => {
    // 60% of the GPU each: were the first still holding its memory, the second would find
    // only what is left and size its cache to that (or fail).
    const options = { model: testQwen3Dir(), device: "cuda" as const, gpuMemoryUtilization: 0.6 };
    const first = await NativeEngine.load(options);
    const blocks = first.info.numKvBlocks;
    await first.close();
    const second = await NativeEngine.load(options);
    open.push(second);
    // Other test files' engines may take a few GiB meanwhile.
    expect(second.info.numKvBlocks).toBeGreaterThan(0.95 * blocks);
    expect(await collect(second, "after", promptTokens(40, 3), greedy(4))).toMatchObject({ finishReason: "length" });
  });

  it("takes vLLM's default step size for this GPU: 8192 tokens from 70 GiB (A100s aside), else 2048", async () => {
    const engine = await gpuEngine(testQwen3Dir());
    const large = cuda.totalMemoryBytes >= 70 * 2 ** 30 && !cuda.name.includes("A100");
    expect(engine.info.maxNumBatchedTokens).toBe(large ? 8192 : 2048);
    expect((await collect(engine, "steps", promptTokens(300, 9), greedy(3))).finishReason).toBe("length");
  });

  it("refuses float16 for a bf16 checkpoint with a weight past fp16's range, and serves it in bfloat16", async () => {
    const dir = modelWithWeight(testQwen3Dir(), "model.layers.0.mlp.down_proj.weight", 1e5);
    await expect(gpuEngine(dir, { dtype: "float16" })).rejects.toThrow(
      /1 weight of this checkpoint lies beyond float16's range \(\+-65504\): serve it with dtype bfloat16/,
    );
    const engine = await gpuEngine(dir);
    expect(engine.info.dtype).toBe("bfloat16");
    expect(await collect(engine, "big", promptTokens(20, 3), greedy(4))).toMatchObject({ finishReason: "length" });
  });

  it("rejects a KV cache that does not fit with an error, not an abort", async () => {
    await expect(NativeEngine.load({ model: testQwen3Dir(), device: "cuda", gpuMemoryUtilization: 0.001 })).rejects.toThrow(/KV cache/);
  });
});

describe.skipIf(usable)("CUDA backend absent", () => {
  it("is reported by cudaInfo, and device cuda fails with its reason", async () => {
    expect(cuda.error).toBeTruthy();
    if (!cuda.built) {
      await expect(NativeEngine.load({ model: testQwen3Dir(), device: "cuda" })).rejects.toThrow(/without the CUDA backend|no usable CUDA device|no CUDA device/);
    }
  });
});
