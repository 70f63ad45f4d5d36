/**
 * Native engine on CPU: decode tokens/s at batch 1 and 32 and prefill tokens/s, for the tiny
 * default Qwen3 and a ~100M-parameter Qwen3-shaped model, next to this machine's memory-
 * bandwidth roofline measured in the same run: a decode step must read every weight once, so
 * batch-1 decode can go no faster than (copy bandwidth) / (weight bytes per step).
 *
 *   npx tsx bench/native_cpu.ts [--append]     (--append adds the table to bench/RESULTS.md)
 */
import { appendFileSync } from "node:fs";
import { cpus } from "node:os";
import { NativeEngine } from "../src/engine/native/native_engine.ts";
import type { SamplingParams } from "../src/engine/engine.ts";
import { ensureRandomModel, TINY_QWEN3, type RandomModelSpec } from "../src/model/random_model.ts";

const QWEN3_100M: RandomModelSpec = {
  ...TINY_QWEN3,
  hiddenSize: 512,
  intermediateSize: 1536,
  numLayers: 8,
  numHeads: 8,
  numKvHeads: 4,
  headDim: 64,
  seed: 100,
};

function paramCount(s: RandomModelSpec): number {
  const attn = s.hiddenSize * s.headDim * (2 * s.numHeads + 2 * s.numKvHeads);
  const mlp = 3 * s.hiddenSize * s.intermediateSize;
  const embed = s.vocabSize * s.hiddenSize * (s.tieWordEmbeddings ? 1 : 2);
  return embed + s.numLayers * (attn + mlp);
}

/** Copy bandwidth in bytes/s, counting bytes read plus bytes written; best of 5. */
function copyBandwidth(): number {
  const size = 256 << 20;
  const src = Buffer.alloc(size, 1);
  const dst = Buffer.alloc(size);
  let best = Infinity;
  for (let i = 0; i < 5; i++) {
    const t = performance.now();
    src.copy(dst);
    best = Math.min(best, performance.now() - t);
  }
  return (2 * size) / (best / 1000);
}

const greedy = (maxTokens: number): SamplingParams => ({
  temperature: 0, topP: 1, topK: 0, minP: 0, maxTokens, minTokens: 0, stopTokenIds: [], ignoreEos: true,
  presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1,
});

const prompt = (n: number, seed: number) => Array.from({ length: n }, (_, i) => (seed * 7919 + i * 104729) % 150000);

/** Decode tokens/s of `batch` concurrent requests, counted after every request has its first token. */
async function decode(engine: NativeEngine, batch: number, tokens: number, tag: string): Promise<number> {
  const firsts: number[] = [];
  const stamps: number[] = [];
  await Promise.all(
    Array.from({ length: batch }, async (_, i) => {
      let first = true;
      for await (const out of engine.generate({ requestId: `${tag}-${i}`, promptTokenIds: prompt(16, i), sampling: greedy(tokens) })) {
        const now = performance.now();
        if (first) firsts.push(now);
        else for (let k = 0; k < out.tokenIds.length; k++) stamps.push(now);
        first = false;
      }
    }),
  );
  const start = Math.max(...firsts);
  const counted = stamps.filter((t) => t > start);
  return counted.length / ((Math.max(...counted) - start) / 1000);
}

async function prefill(engine: NativeEngine, length: number, tag: string): Promise<number> {
  const t = performance.now();
  for await (const _ of engine.generate({ requestId: tag, promptTokenIds: prompt(length, 3), sampling: greedy(1) })) void _;
  return length / ((performance.now() - t) / 1000);
}

const bandwidth = copyBandwidth();
const rows: string[] = [];
for (const [name, spec, decodeTokens] of [
  ["tiny-qwen3", TINY_QWEN3, 128],
  ["qwen3-100m", QWEN3_100M, 32],
] as const) {
  const dir = ensureRandomModel(spec, name);
  const engine = await NativeEngine.load({ model: dir, kvCacheMemoryBytes: 512 << 20, maxNumBatchedTokens: 2048, enablePrefixCaching: false });
  const roofline = bandwidth / engine.info.weightBytesPerStep;
  await decode(engine, 1, 4, `warm-${name}`);
  const b1 = await decode(engine, 1, decodeTokens, `b1-${name}`);
  const b32 = await decode(engine, 32, Math.max(8, decodeTokens / 4), `b32-${name}`);
  const pf = await prefill(engine, 1024, `pf-${name}`);
  await engine.close();
  const row = `| ${name} | ${(paramCount(spec) / 1e6).toFixed(1)}M ${spec.dtype} | ${(engine.info.weightBytesPerStep / 2 ** 20).toFixed(1)} MiB | ${roofline.toFixed(0)} | ${b1.toFixed(1)} (${((100 * b1) / roofline).toFixed(0)}%) | ${b32.toFixed(0)} | ${pf.toFixed(0)} |`;
  console.log(row);
  rows.push(row);
}

const cpu = cpus()[0]?.model ?? "unknown CPU";
const table = [
  "",
  "## Native engine on CPU (bench/native_cpu.ts)",
  "",
  `${new Date().toISOString().slice(0, 10)}, ${cpus().length} cores (${cpu}), Node ${process.version}, \`npx tsx bench/native_cpu.ts --append\`.`,
  `Copy bandwidth measured in the run (bytes read + written): ${(bandwidth / 1e9).toFixed(1)} GB/s. Roofline = that / weight bytes per step`,
  "(decode steps/s if reading the weights were the only cost). Batch 32 and prefill are tokens/s; prefill is one 1024-token prompt.",
  "",
  "| model | params | weights read per step | roofline tok/s (batch 1) | decode tok/s batch 1 (of roofline) | decode tok/s batch 32 | prefill tok/s |",
  "| --- | --- | --- | --- | --- | --- | --- |",
  ...rows,
  "",
].join("\n");
console.log(table);
if (process.argv.includes("--append")) appendFileSync(new URL("./RESULTS.md", import.meta.url), table);
