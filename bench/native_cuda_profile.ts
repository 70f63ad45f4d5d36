/**
 * Where a decode step's time goes (bench/CUDA_NOTES.md): batch-1 (and batch-64) greedy decode on
 * 512-token contexts with SWITCHYARD_CUDA_PROFILE=1 set by the caller, so the runner prints its
 * host timers and CUDA-event times every 200 graph steps; this prints the step time seen from
 * JavaScript. With SWITCHYARD_CUDA_PROFILE_STEP=k under `ncu --profile-from-start off`, the
 * k-th graph decode step's kernels are profiled one by one.
 *
 *   node --import tsx bench/native_cuda_profile.ts MODEL_DIR [BATCH... | prefill] [--gpu-memory-utilization=F] [--dtype=D]
 *     [--step-tokens=N] [--prompt-tokens=N]
 *
 * --prompt-tokens: the decode prompts' length (default 512; contexts then run to N + 420).
 *
 * A small F (e.g. 0.05) keeps ncu's kernel replay quick: it saves and restores device memory.
 */
import { NativeEngine, type NativeDtype } from "../src/engine/native/native_engine.ts";
import type { SamplingParams } from "../src/engine/engine.ts";
import { promptTokens } from "../test/native/models.ts";

const memoryFlag = process.argv.find((a) => a.startsWith("--gpu-memory-utilization="));
const gpuMemoryUtilization = memoryFlag ? Number(memoryFlag.split("=")[1]) : undefined;
const dtypeFlag = process.argv.find((a) => a.startsWith("--dtype="));
const dtype = dtypeFlag ? (dtypeFlag.split("=")[1] as NativeDtype) : undefined;
// prefill: tokens a step takes (default 8192, four prompts a step).
const stepFlag = process.argv.find((a) => a.startsWith("--step-tokens="));
const stepTokens = stepFlag ? Number(stepFlag.split("=")[1]) : 8192;
const promptFlag = process.argv.find((a) => a.startsWith("--prompt-tokens="));
const promptLength = promptFlag ? Number(promptFlag.split("=")[1]) : 512;
const flags = [memoryFlag, dtypeFlag, stepFlag, promptFlag];
const [modelDir, ...batchArgs] = process.argv.slice(2).filter((a) => !flags.includes(a));
const prefillMode = batchArgs[0] === "prefill";
const batches = prefillMode ? [] : batchArgs.length ? batchArgs.map(Number) : [1];
const greedy = (maxTokens: number): SamplingParams => ({
  temperature: 0, topP: 1, topK: 0, minP: 0, maxTokens, minTokens: 0, stopTokenIds: [], ignoreEos: true,
  presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1,
});
const engine = await NativeEngine.load({
  model: modelDir, device: "cuda", maxModelLen: Math.max(4096, promptLength + 512), maxNumSeqs: 256, maxNumBatchedTokens: prefillMode ? stepTokens : 2048,
  enablePrefixCaching: false, gpuMemoryUtilization, dtype,
});
// "prefill": two rounds of four 2048-token prompts, in steps of --step-tokens (8192: one step a
// round); with SWITCHYARD_CUDA_PROFILE_PREFILL_STEP=1 the second step is the one ncu profiles.
if (prefillMode) {
  for (const round of [0, 1]) {
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: 4 }, async (_, i) => {
        const prompt = promptTokens(2048, 500 + 10 * round + i, 0, 150000);
        for await (const out of engine.generate({ requestId: `pf${round}-${i}`, promptTokenIds: prompt, sampling: greedy(1) })) {
          if (out.finishReason === "error") throw new Error(out.errorMessage);
        }
      }),
    );
    console.log(`prefill step ${round}: 4 x 2048 tokens in ${(performance.now() - t0).toFixed(1)} ms`);
  }
}
for (const batch of batches) {
  const steps = 420;
  const stamps: number[][] = Array.from({ length: batch }, () => []);
  await Promise.all(
    Array.from({ length: batch }, async (_, i) => {
      const prompt = promptTokens(promptLength, 100 + i + batch * 1000, 0, 150000);
      for await (const out of engine.generate({ requestId: `p${batch}-${i}`, promptTokenIds: prompt, sampling: greedy(steps) })) {
        if (out.finishReason === "error") throw new Error(out.errorMessage);
        for (let k = 0; k < out.tokenIds.length; k++) stamps[i].push(performance.now());
      }
    }),
  );
  const start = Math.max(...stamps.map((s) => s[20]));
  const end = Math.min(...stamps.map((s) => s[s.length - 1]));
  const counted = stamps[0].filter((t) => t > start && t <= end).length;
  console.log(`batch ${batch}: ${((end - start) / counted).toFixed(3)} ms per decode step (JavaScript's view, ${counted} steps)`);
}
await engine.close();
