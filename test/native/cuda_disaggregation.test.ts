/**
 * Disaggregated serving with the native engine on the GPU: two `switchyard worker --device cuda`
 * processes share one GPU, one prefilling and one decoding, driven as a router drives them. The
 * KV moves from the prefill worker's device memory into blocks the decode worker reserved,
 * through the transfer agents' CUDA IPC backend. Greedy output is that of one engine running the
 * whole request, the decode worker read the KV instead of computing it (its metrics), and the
 * prefill worker frees its blocks once read. A decode worker that stands for another host
 * (SWITCHYARD_TRANSFER_HOST_ID) cannot read device memory: the read fails with a message that
 * says so and the worker computes the prompt itself, with the same output.
 *
 * Skipped, with the reason, where the addon has no CUDA backend or sees no GPU (CI); on a GPU
 * machine see bench/CUDA_NOTES.md.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadNativeAddon, NativeEngine } from "../../src/engine/native/native_engine.ts";
import { disaggregatedRun, scrapeMetric, startDisaggWorker, type DisaggWorker, type GreedyRun } from "../helpers/disagg_workers.ts";
import { collect, sampling } from "./helpers.ts";
import { promptTokens, testQwen3Dir } from "./models.ts";

const cuda = (() => {
  try {
    return loadNativeAddon().cudaInfo();
  } catch (err) {
    return { built: false, deviceCount: 0, name: "", error: (err as Error).message };
  }
})();
const usable = cuda.built && cuda.deviceCount > 0;
if (!usable) console.warn(`skipping the CUDA disaggregation tests: ${cuda.error ?? "no CUDA device"}`);

/** Small enough for three workers and a test engine to share the GPU. */
const KV_CACHE_BYTES = 256 << 20;
const MAX_TOKENS = 12;
/** Prompt lengths around and across block boundaries (block size 16), one of several chunks' worth. */
const LENGTHS = [3, 16, 17, 45, 130, 700];
const SETTLES = { timeout: 15_000 };

describe.skipIf(!usable)(`disaggregated serving on the GPU (${cuda.name || "no GPU"})`, { timeout: 120_000 }, () => {
  const model = usable ? testQwen3Dir() : "";
  const engineArgs = ["--engine", "native", "--device", "cuda", "--model", model, "--kv-cache-memory", String(KV_CACHE_BYTES)];
  let reference: NativeEngine;
  let prefill: DisaggWorker;
  let decode: DisaggWorker;
  let elsewhere: DisaggWorker;
  /** Bytes of KV per block over all layers, K and V. */
  let blockBytes = 0;

  beforeAll(async () => {
    reference = await NativeEngine.load({ model, device: "cuda", kvCacheMemoryBytes: KV_CACHE_BYTES });
    const layout = reference.kvTransfer.layout();
    expect(layout.memory.kind).toBe("cuda");
    blockBytes = layout.segments.reduce((sum, s) => sum + s.blockBytes, 0);
    const started = await Promise.allSettled([
      startDisaggWorker([...engineArgs, "--disaggregation-mode", "prefill", "--worker-id", "prefill-0"]),
      startDisaggWorker([...engineArgs, "--disaggregation-mode", "decode", "--worker-id", "decode-0"]),
      startDisaggWorker([...engineArgs, "--disaggregation-mode", "decode", "--worker-id", "decode-elsewhere"], { SWITCHYARD_TRANSFER_HOST_ID: "another-host" }),
    ]);
    const workers = started.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
    const failed = started.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) {
      await Promise.all(workers.map((w) => w.close()));
      throw failed.reason;
    }
    [prefill, decode, elsewhere] = workers;
  }, 180_000);
  afterAll(async () => {
    await Promise.all([prefill?.close(), decode?.close(), elsewhere?.close()]);
    await reference?.close();
  });

  async function aggregated(requestId: string, prompt: number[], topLogprobs = 0): Promise<GreedyRun> {
    const run = await collect(reference, requestId, prompt, sampling({ maxTokens: MAX_TOKENS, logprobs: topLogprobs }));
    return { tokenIds: run.tokenIds, logprobs: run.logprobs.map((l) => l.logprob), top: run.logprobs.map((l) => l.top.map((t) => t.logprob)) };
  }

  /** The same kernels on bit-identical KV: the same tokens, logprobs equal up to float32 on the wire. */
  function expectSameRun(got: GreedyRun, want: GreedyRun, what: string): void {
    expect(got.tokenIds, what).toEqual(want.tokenIds);
    got.logprobs.forEach((lp, i) => expect(Math.abs(lp - want.logprobs[i]), `${what}: logprob ${i}`).toBeLessThan(1e-5));
  }

  /**
   * A prompt recomputed together with its first token (one prefill step) against one engine that
   * decoded that token (gemv and decode attention: other summation orders): as cuda.test.ts
   * compares CUDA graphs with eager steps, the same tokens up to a near-tie, logprobs close.
   */
  function expectCloseRun(got: GreedyRun, want: GreedyRun, what: string): void {
    for (let s = 0; s < want.tokenIds.length; s++) {
      const nearTie = want.top[s].length > 1 && want.top[s][0] - want.top[s][1] <= 0.1;
      if (got.tokenIds[s] !== want.tokenIds[s]) {
        expect(nearTie, `${what}: token ${s} differs (${got.tokenIds[s]} vs ${want.tokenIds[s]}) without a near-tie`).toBe(true);
        return;
      }
      expect(Math.abs(got.logprobs[s] - want.logprobs[s]), `${what}: logprob ${s}`).toBeLessThan(0.05);
      if (nearTie) return;
    }
  }

  it("decodes from KV read out of the prefill worker's GPU memory the greedy tokens of one engine, and frees the prefill worker's blocks", async () => {
    let expectedBytes = 0;
    for (const [p, length] of LENGTHS.entries()) {
      const prompt = promptTokens(length, 100 + p);
      const got = await disaggregatedRun(prefill, decode, `r${p}`, prompt, MAX_TOKENS);
      expect(got.kvTransfer.memoryKind).toBe("cuda");
      expect(got.kvTransfer.memoryRegionId).toBeGreaterThan(0n);
      expectSameRun(got, await aggregated(`a${p}`, prompt), `prompt of ${length} tokens`);
      expectedBytes += Math.ceil(length / 16) * blockBytes;
    }
    // Read, not recomputed: one completed read per prompt, every block's bytes, no fallback.
    expect(await scrapeMetric(decode.metricsUrl, "switchyard_worker_kv_transfers_total")).toBe(LENGTHS.length);
    expect(await scrapeMetric(decode.metricsUrl, "switchyard_worker_kv_transfer_bytes_total")).toBe(expectedBytes);
    expect(await scrapeMetric(decode.metricsUrl, "switchyard_worker_kv_transfer_local_recomputes_total")).toBe(0);
    expect(await scrapeMetric(decode.metricsUrl, "switchyard_worker_kv_transfer_failures_total")).toBe(0);
    // The decode worker's notification freed every held block on the prefill worker.
    await expect.poll(() => scrapeMetric(prefill.metricsUrl, "switchyard_worker_kv_held_requests"), SETTLES).toBe(0);
    expect(await scrapeMetric(prefill.metricsUrl, "switchyard_worker_kv_held_releases_total", { reason: "notified" })).toBe(LENGTHS.length);
    await expect.poll(() => scrapeMetric(prefill.metricsUrl, "switchyard_worker_kv_cache_usage_ratio"), SETTLES).toBe(0);
    await expect.poll(() => scrapeMetric(decode.metricsUrl, "switchyard_worker_kv_cache_usage_ratio"), SETTLES).toBe(0);
  });

  it("computes the prompt itself when the prefill worker's GPU is on another host, with a clear reason and the same output", async () => {
    const prompt = promptTokens(90, 999);
    const got = await disaggregatedRun(prefill, elsewhere, "far", prompt, MAX_TOKENS, 2);
    expectCloseRun(got, await aggregated("far-ref", prompt, 2), "recomputed on the decode worker");
    expect(await scrapeMetric(elsewhere.metricsUrl, "switchyard_worker_kv_transfer_failures_total", { reason: "invalid" })).toBe(1);
    expect(await scrapeMetric(elsewhere.metricsUrl, "switchyard_worker_kv_transfer_local_recomputes_total")).toBe(1);
    expect(elsewhere.proc.output()).toMatch(/on another host: they involve CUDA device memory/);
    expect(elsewhere.proc.output()).toMatch(/TCP carries host memory only/);
    // A failed read still tells the prefill worker to let go of the blocks.
    await expect.poll(() => scrapeMetric(prefill.metricsUrl, "switchyard_worker_kv_held_requests"), SETTLES).toBe(0);
  });
});
