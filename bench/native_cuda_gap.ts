/**
 * How precisely to compute: for each setting (a dtype, and which GEMM inputs to split into
 * hi + lo: SWITCHYARD_CUDA_SPLIT_GEMM, qwen3_cuda.cpp), the largest logprob gap to the
 * transformers fp32 reference over the cases and tokens test/native/cuda.test.ts compares (same
 * rules: top 5 of each reference step, up to the first differing token), and the prefill
 * throughput it gives on the Qwen3-0.6B-shaped model (4 prompts of 2048 tokens in 8192-token
 * steps). Run on the GPU machine by bench/native_cuda.sh after the reference is written:
 *
 *   npx tsx bench/native_cuda_gap.ts REFERENCE.json QWEN3_06B_DIR [--out gap.md]
 *
 * GAP_SETTINGS: settings separated by ";", each DTYPE or DTYPE/SPLIT with DTYPE auto, bfloat16
 * or float16 and SPLIT a SWITCHYARD_CUDA_SPLIT_GEMM value (all, none, or a comma list of GEMMs;
 * default: the engine's, all in bf16 and none in fp16).
 */
import { readFileSync, writeFileSync } from "node:fs";
import { NativeEngine, type NativeDtype } from "../src/engine/native/native_engine.ts";
import { collect, sampling } from "../test/native/helpers.ts";
import { promptTokens, testLlamaDir, testQwen3Dir } from "../test/native/models.ts";

const [referencePath, qwen06bDir] = process.argv.slice(2);
const SETTINGS = (process.env.GAP_SETTINGS ?? "bfloat16;bfloat16/none;float16").split(";");

/** The engine's dtype for a setting; sets the split the engine reads when it loads. */
function applySetting(setting: string): NativeDtype {
  const [dtype, split] = setting.split("/");
  if (dtype !== "auto" && dtype !== "bfloat16" && dtype !== "float16") {
    throw new Error(`GAP_SETTINGS: "${setting}" does not start with auto, bfloat16 or float16`);
  }
  if (split === undefined) delete process.env.SWITCHYARD_CUDA_SPLIT_GEMM;
  else process.env.SWITCHYARD_CUDA_SPLIT_GEMM = split;
  return dtype;
}

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

async function largestGap(dir: string, dtype: NativeDtype): Promise<{ gap: number; where: string }> {
  const ref = reference.models.find((m) => m.folder === dir);
  if (!ref) throw new Error(`no reference for ${dir} in ${referencePath}`);
  const engine = await NativeEngine.load({ model: dir, device: "cuda", kvCacheMemoryBytes: 256 << 20, dtype });
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

async function prefillTokensPerS(dir: string, dtype: NativeDtype): Promise<number> {
  const engine = await NativeEngine.load({ model: dir, device: "cuda", maxModelLen: 4096, maxNumSeqs: 64, maxNumBatchedTokens: 8192, enablePrefixCaching: false, kvCacheMemoryBytes: 8 * 2 ** 30, dtype });
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
  const dtype = applySetting(setting);
  const gaps: string[] = [];
  for (const [name, dir] of models) {
    const { gap, where } = await largestGap(dir, dtype);
    gaps.push(`${gap.toFixed(4)} (${where})`);
    console.error(`${setting}: ${name}: ${gap.toFixed(4)} at ${where}`);
  }
  const tokS = await prefillTokensPerS(qwen06bDir, dtype);
  rows.push(`| ${setting} | ${gaps.join(" | ")} | ${tokS.toFixed(0)} |`);
  console.error(rows.at(-1));
}
const table = [
  "| dtype / split GEMM inputs | tiny Qwen3 gap | tiny Llama gap | Qwen3-0.6B-shape gap | prefill tok/s (0.6B, 8192-token steps) |",
  "| --- | ---: | ---: | ---: | ---: |",
  ...rows,
].join("\n");
console.log(table);
const outIndex = process.argv.indexOf("--out");
if (outIndex > 0) writeFileSync(process.argv[outIndex + 1]!, table + "\n");
