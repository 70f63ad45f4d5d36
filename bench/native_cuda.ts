/**
 * Native engine on CUDA (run by bench/native_cuda.sh on the GPU machine, after
 * bench/native_cuda_hf.py has measured the ceilings and the transformers baseline):
 *  (1) the ceilings: device-to-device copy bandwidth and a bf16 matmul's TFLOP/s;
 *  (2) decode step time at batch 1, 8, 64, 256 with 512-token contexts, against the HBM
 *      roofline (weight bytes + KV bytes one step reads, over the copy bandwidth);
 *  (3) output throughput of 256 requests (prompts and outputs 100-1024 tokens, ignore_eos)
 *      against transformers `generate` on the same weights and GPU;
 *  (4) prefill throughput on 2048-token prompts, as a share of the matmul peak, with 2048- and
 *      8192-token steps.
 *
 *   npx tsx bench/native_cuda.ts MODEL_DIR CEILINGS.json HF_GENERATE.json [--out table.md] [--decode-only | --prefill-only]
 *     [--enforce-eager] [--dtype auto|bfloat16|float16]
 *
 * --decode-only stops after (2), for comparing decode kernels (e.g. SWITCHYARD_CUDA_DECODE_FUSION=off);
 * --prefill-only runs (4) alone, for comparing prefill kernels (e.g. SWITCHYARD_CUDA_PREFILL=mma16).
 * --dtype is the engine's (default auto: the checkpoint's bf16).
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { NativeEngine, type NativeDtype } from "../src/engine/native/native_engine.ts";
import type { SamplingParams } from "../src/engine/engine.ts";
import { promptTokens } from "../test/native/models.ts";

const [modelDir, ceilingsPath, hfPath] = process.argv.slice(2);
const outIndex = process.argv.indexOf("--out");
const eager = process.argv.includes("--enforce-eager");
const decodeOnly = process.argv.includes("--decode-only");
const prefillOnly = process.argv.includes("--prefill-only");
const dtypeIndex = process.argv.indexOf("--dtype");
const dtype = (dtypeIndex > 0 ? process.argv[dtypeIndex + 1] : "auto") as NativeDtype;
const ceilings = JSON.parse(readFileSync(ceilingsPath, "utf8")) as { copy_bytes_per_s: number; matmul_bf16_tflops: number; device: string };
const hf = existsSync(hfPath) ? (JSON.parse(readFileSync(hfPath, "utf8")) as { requests: number; useful_tokens_per_s: number }) : undefined;
const config = JSON.parse(readFileSync(`${modelDir}/config.json`, "utf8"));
const layers: number = config.num_hidden_layers, kvHeads: number = config.num_key_value_heads, headDim: number = config.head_dim;
const heads: number = config.num_attention_heads;
const kvBytesPerToken = layers * 2 * kvHeads * headDim * 2;

const greedy = (maxTokens: number): SamplingParams => ({
  temperature: 0, topP: 1, topK: 0, minP: 0, maxTokens, minTokens: 0, stopTokenIds: [], ignoreEos: true,
  presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1,
});

// KV caches of 64 and 16 GiB (room for every request of (3)) rather than a share of the card: a
// closed engine's memory goes back only when its handle is collected, and (4b) loads a second.
const engine = await NativeEngine.load({
  model: modelDir, device: "cuda", maxModelLen: 4096, maxNumSeqs: 256, maxNumBatchedTokens: 2048,
  enablePrefixCaching: false, enforceEager: eager, dtype, kvCacheMemoryBytes: 64 * 2 ** 30,
});
console.log(`engine: ${engine.info.backend} (${engine.info.backendDetail}), ${engine.info.numKvBlocks} KV blocks, weights/step ${(engine.info.weightBytesPerStep / 2 ** 20).toFixed(0)} MiB`);

async function run(tag: string, prompts: number[][], outputs: number[]): Promise<{ seconds: number; stamps: number[][] }> {
  const t0 = performance.now();
  const stamps: number[][] = prompts.map(() => []);
  await Promise.all(
    prompts.map(async (p, i) => {
      for await (const out of engine.generate({ requestId: `${tag}-${i}`, promptTokenIds: p, sampling: greedy(outputs[i]) })) {
        if (out.finishReason === "error") throw new Error(`${tag}-${i}: ${out.errorMessage}`);
        const now = performance.now();
        for (let k = 0; k < out.tokenIds.length; k++) stamps[i].push(now);
      }
    }),
  );
  return { seconds: (performance.now() - t0) / 1000, stamps };
}

// (2) Decode: steps after every request has its first token, over the time they took.
async function decodeStep(batch: number, steps: number): Promise<number> {
  const prompts = Array.from({ length: batch }, (_, i) => promptTokens(512, 100 + i + batch * 1000, 0, 150000));
  const { stamps } = await run(`d${batch}`, prompts, prompts.map(() => steps));
  // The window in which every request is decoding: from the last first token to the first finish.
  const start = Math.max(...stamps.map((s) => s[0]));
  const end = Math.min(...stamps.map((s) => s[s.length - 1]));
  const counted = Math.max(...stamps.map((s) => s.filter((t) => t > start && t <= end).length));
  return (end - start) / 1000 / counted;
}

await run("warm", [promptTokens(64, 1, 0, 150000)], [8]);
const decodeRows: string[] = [];
for (const batch of prefillOnly ? [] : [1, 8, 64, 256]) {
  await decodeStep(batch, 8);  // captures this batch size's graph
  const stepS = await decodeStep(batch, batch >= 256 ? 192 : 96);
  const ctx = 512 + (batch >= 256 ? 128 : 48);
  const bytes = engine.info.weightBytesPerStep + batch * ctx * kvBytesPerToken;
  const rooflineS = bytes / ceilings.copy_bytes_per_s;
  decodeRows.push(`| ${batch} | ${(stepS * 1000).toFixed(3)} | ${(batch / stepS).toFixed(0)} | ${(bytes / 2 ** 20).toFixed(0)} | ${(rooflineS * 1000).toFixed(3)} | ${((100 * rooflineS) / stepS).toFixed(0)}% |`);
  console.log(decodeRows.at(-1));
}
if (decodeOnly) {
  await engine.close();
  process.exit(0);
}

// (3) Throughput: the mix bench/native_cuda_hf.py generate also uses.
const promptLens = promptTokens(256, 11, 100, 1025), outputLens = promptTokens(256, 12, 100, 1025);
const mixPrompts = promptLens.map((n, i) => promptTokens(n, 3000 + i, 0, 150000));
const mix = prefillOnly ? { seconds: 1, stamps: [] } : await run("mix", mixPrompts, outputLens);
const produced = mix.stamps.reduce((a, s) => a + s.length, 0);
const throughput = produced / mix.seconds;
if (!prefillOnly) console.log(`throughput: ${produced} tokens in ${mix.seconds.toFixed(2)} s = ${throughput.toFixed(0)} tok/s`);

// (4) Prefill: 16 prompts of 2048 tokens, one per 2048-token step; the median of three rounds
// (a round takes ~0.2 s).
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const prefillPrompts = Array.from({ length: 16 }, (_, i) => promptTokens(2048, 7000 + i, 0, 150000));
await run("pwarm", prefillPrompts.slice(0, 2), [1, 1]);
const pfSeconds: number[] = [];
for (const round of [0, 1, 2]) pfSeconds.push((await run(`prefill${round}`, prefillPrompts, prefillPrompts.map(() => 1))).seconds);
const prefillTokS = (16 * 2048) / median(pfSeconds);
const h = config.hidden_size, inter = config.intermediate_size;
const matmulFlopsPerToken = 2 * layers * (h * (heads + 2 * kvHeads) * headDim + heads * headDim * h + 3 * h * inter);
const attnFlopsPerToken = 4 * 1024 * headDim * heads * layers;  // causal: average context 1024 of 2048
const prefillTflops = (prefillTokS * (matmulFlopsPerToken + attnFlopsPerToken)) / 1e12;
await engine.close();

// (4b) The same prompts with 8192-token steps (four prompts per step; vLLM serves with 8192+).
const wide = await NativeEngine.load({
  model: modelDir, device: "cuda", maxModelLen: 4096, maxNumSeqs: 256, maxNumBatchedTokens: 8192,
  enablePrefixCaching: false, enforceEager: eager, dtype, kvCacheMemoryBytes: 16 * 2 ** 30,
});
const wideRun = async (tag: string, prompts: number[][]) => {
  const t0 = performance.now();
  await Promise.all(prompts.map(async (p, i) => {
    for await (const out of wide.generate({ requestId: `${tag}-${i}`, promptTokenIds: p, sampling: greedy(1) })) {
      if (out.finishReason === "error") throw new Error(`${tag}-${i}: ${out.errorMessage}`);
    }
  }));
  return (performance.now() - t0) / 1000;
};
await wideRun("wwarm", prefillPrompts.slice(0, 4));
const wideSeconds: number[] = [];
for (const round of [0, 1, 2]) wideSeconds.push(await wideRun(`wide${round}`, prefillPrompts));
const wideTokS = (16 * 2048) / median(wideSeconds);
const wideTflops = (wideTokS * (matmulFlopsPerToken + attnFlopsPerToken)) / 1e12;
await wide.close();

const prefillLine =
  `(4) Prefill, 16 x 2048-token prompts (2048-token steps): ${prefillTokS.toFixed(0)} tok/s = ${prefillTflops.toFixed(0)} TFLOP/s = **${((100 * prefillTflops) / ceilings.matmul_bf16_tflops).toFixed(0)}%** of the matmul peak ` +
  `(${((matmulFlopsPerToken + attnFlopsPerToken) / 1e9).toFixed(2)} GFLOP/token: GEMMs + causal attention); ` +
  `with 8192-token steps (max_num_batched_tokens 8192, four prompts a step): ${wideTokS.toFixed(0)} tok/s = ${wideTflops.toFixed(0)} TFLOP/s = ` +
  `**${((100 * wideTflops) / ceilings.matmul_bf16_tflops).toFixed(0)}%**.`;
const lines = prefillOnly ? [`${engine.info.dtype}, ${engine.info.backendDetail}`, "", prefillLine] : [
  `Device: ${ceilings.device}. Model: Qwen3-0.6B shape, random bf16 weights (${modelDir.split("/").pop()}), served in ${engine.info.dtype}. ${eager ? "--enforce-eager" : "CUDA graphs on"}.`,
  "",
  `(1) Ceilings measured in the same run: device-to-device copy ${(ceilings.copy_bytes_per_s / 1e12).toFixed(2)} TB/s (read + write); bf16 8192³ matmul ${ceilings.matmul_bf16_tflops.toFixed(0)} TFLOP/s.`,
  "",
  "(2) Decode, 512-token contexts (roofline = (weights + KV bytes per step) / copy bandwidth):",
  "",
  "| batch | step ms | tok/s | bytes/step MiB | roofline ms | of roofline |",
  "| ---: | ---: | ---: | ---: | ---: | ---: |",
  ...decodeRows,
  "",
  `(3) Throughput, 256 requests, prompts and outputs 100-1024 tokens, ignore_eos: ${produced} tokens in ${mix.seconds.toFixed(1)} s = **${throughput.toFixed(0)} tok/s**; ` +
    (hf ? `transformers generate (${hf.requests} of the requests, one padded batch): ${hf.useful_tokens_per_s.toFixed(0)} tok/s -> **${(throughput / hf.useful_tokens_per_s).toFixed(1)}x**.` : "transformers baseline not measured."),
  "",
  prefillLine,
];
console.log(lines.join("\n"));
if (outIndex > 0) writeFileSync(process.argv[outIndex + 1], lines.join("\n") + "\n");
