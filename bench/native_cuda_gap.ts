/**
 * Which GEMM inputs to split into hi + lo (SWITCHYARD_CUDA_SPLIT_GEMM, qwen3_cuda.cpp): for
 * each setting, the largest logprob gap to the transformers fp32 reference over the cases and
 * tokens test/native/cuda.test.ts compares (same rules: top 5 of each reference step, up to the
 * first differing token), and the prefill throughput it costs on the Qwen3-0.6B-shaped model
 * (4 prompts of 2048 tokens in 8192-token steps). Run on the GPU machine by bench/native_cuda.sh
 * after the reference is written:
 *
 *   npx tsx bench/native_cuda_gap.ts REFERENCE.json QWEN3_06B_DIR [--out gap.md]
 */
import { readFileSync, writeFileSync } from "node:fs";
import { NativeEngine } from "../src/engine/native/native_engine.ts";
import { collect, sampling } from "../test/native/helpers.ts";
import { promptTokens, testLlamaDir, testQwen3Dir } from "../test/native/models.ts";

const [referencePath, qwen06bDir] = process.argv.slice(2);
const SETTINGS = (process.env.SPLIT_SETTINGS ?? "none;all;qkv,gate_up,o").split(";");

interface ReferenceStep {
  token: number;
  top_ids: number[];
  top_logprobs: number[];
}
const reference = JSON.parse(readFileSync(referencePath, "utf8")) as { models: { folder: string; cases: { prompt: number[]; steps: ReferenceStep[] }[] }[] };
const models: [string, string][] = [
  ["tiny Qwen3", testQwen3Dir()],
  ["tiny Llama", testLlamaDir()],
  ["Qwen3-0.6B shape", qwen06bDir],
];

async function largestGap(dir: string): Promise<{ gap: number; where: string }> {
  const ref = reference.models.find((m) => m.folder === dir);
  if (!ref) throw new Error(`no reference for ${dir} in ${referencePath}`);
  const engine = await NativeEngine.load({ model: dir, device: "cuda", kvCacheMemoryBytes: 256 << 20 });
  let gap = 0;
  let where = "";
  try {
    for (const [i, c] of ref.cases.entries()) {
      const out = await collect(engine, `gap-${i}`, c.prompt, sampling({ maxTokens: c.steps.length, logprobs: 5 }));
      if (out.errorMessage) throw new Error(out.errorMessage);
      for (const [s, step] of c.steps.entries()) {
        const got = out.logprobs[s]!;
        for (const [k, id] of step.top_ids.entries()) {
          const mine = got.top.find((t) => t.tokenId === id);
          if (!mine) continue;
          const d = Math.abs(mine.logprob - step.top_logprobs[k]!);
          if (d > gap) {
            gap = d;
            where = `case ${i} step ${s}`;
          }
        }
        if (got.tokenId !== step.token) break;
      }
    }
  } finally {
    await engine.close();
  }
  return { gap, where };
}

async function prefillTokensPerS(dir: string): Promise<number> {
  const engine = await NativeEngine.load({ model: dir, device: "cuda", maxModelLen: 4096, maxNumSeqs: 64, maxNumBatchedTokens: 8192, enablePrefixCaching: false, kvCacheMemoryBytes: 8 * 2 ** 30 });
  try {
    const run = async (tag: string, count: number) => {
      const prompts = Array.from({ length: count }, (_, i) => promptTokens(2048, 9100 + i, 0, 150000));
      const t0 = performance.now();
      await Promise.all(prompts.map((p, i) => collect(engine, `${tag}-${i}`, p, sampling({ maxTokens: 1 }))));
      return (count * 2048) / ((performance.now() - t0) / 1000);
    };
    await run("warm", 4);
    return await run("prefill", 16);
  } finally {
    await engine.close();
  }
}

const rows: string[] = [];
for (const setting of SETTINGS) {
  process.env.SWITCHYARD_CUDA_SPLIT_GEMM = setting; // read when a model loads
  const gaps: string[] = [];
  for (const [name, dir] of models) {
    const { gap, where } = await largestGap(dir);
    gaps.push(`${gap.toFixed(4)} (${where})`);
    console.error(`split ${setting}: ${name}: ${gap.toFixed(4)} at ${where}`);
  }
  const tokS = await prefillTokensPerS(qwen06bDir);
  rows.push(`| ${setting} | ${gaps.join(" | ")} | ${tokS.toFixed(0)} |`);
  console.error(rows.at(-1));
}
const table = [
  "| split GEMM inputs | tiny Qwen3 gap | tiny Llama gap | Qwen3-0.6B-shape gap | prefill tok/s (0.6B, 8192-token steps) |",
  "| --- | ---: | ---: | ---: | ---: |",
  ...rows,
].join("\n");
console.log(table);
const outIndex = process.argv.indexOf("--out");
if (outIndex > 0) writeFileSync(process.argv[outIndex + 1]!, table + "\n");
