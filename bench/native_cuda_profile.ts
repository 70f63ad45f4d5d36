/**
 * Where a decode step's time goes (bench/CUDA_NOTES.md): batch-1 (and batch-64) greedy decode on
 * 512-token contexts with SWITCHYARD_CUDA_PROFILE=1 set by the caller, so the runner prints its
 * host timers and CUDA-event times every 200 graph steps; this prints the step time seen from
 * JavaScript. With SWITCHYARD_CUDA_PROFILE_STEP=k under `ncu --profile-from-start off`, the
 * k-th graph decode step's kernels are profiled one by one.
 *
 *   node --import tsx bench/native_cuda_profile.ts MODEL_DIR [BATCH...]
 */
import { NativeEngine } from "../src/engine/native/native_engine.ts";
import type { SamplingParams } from "../src/engine/engine.ts";
import { promptTokens } from "../test/native/models.ts";

const [modelDir, ...batchArgs] = process.argv.slice(2);
const batches = batchArgs.length ? batchArgs.map(Number) : [1];
const greedy = (maxTokens: number): SamplingParams => ({
  temperature: 0, topP: 1, topK: 0, minP: 0, maxTokens, minTokens: 0, stopTokenIds: [], ignoreEos: true,
  presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1,
});
const engine = await NativeEngine.load({
  model: modelDir, device: "cuda", maxModelLen: 4096, maxNumSeqs: 256, maxNumBatchedTokens: 2048, enablePrefixCaching: false,
});
for (const batch of batches) {
  const steps = 420;
  const stamps: number[][] = Array.from({ length: batch }, () => []);
  await Promise.all(
    Array.from({ length: batch }, async (_, i) => {
      const prompt = promptTokens(512, 100 + i + batch * 1000, 0, 150000);
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
