/**
 * Disaggregated serving on one GPU (issue 7): the time to move a prompt's KV from a prefill
 * worker process to a decode worker process. Two `switchyard worker --device cuda` processes
 * share the GPU; each prompt is prefilled on one (its KV held), then decoded for one more token
 * on the other, which reads the blocks through its transfer agent's CUDA IPC backend
 * (SWITCHYARD_CUDA_IPC_TRACE=1 makes it print each READ's backend and GPU times). Per model the
 * first prompt warms up (IPC mapping, kernel load) and the table gives medians over the others:
 *
 * - fetch ms: the decode worker's fetch from start to done (kv_transfer_seconds: descriptors,
 *   postRead, the copy, the completion's way back to JavaScript);
 * - READ ms / GPU ms: the backend's time for the READ (from its thread picking it up to the
 *   stream synchronize) and the GPU's time for the copy (CUDA events);
 * - prefill ms: the prefill request's round trip, about what the decode worker would spend
 *   computing the prompt itself instead.
 *
 *   node --import tsx bench/disagg_cuda.ts [--model DIR|tiny]... [--prompts N] [--prompt-tokens N] [--out FILE]
 *   ("tiny", the default: the tiny Qwen3 of the native tests; a model folder needs a tokenizer.json)
 */
import { writeFileSync } from "node:fs";
import { basename } from "node:path";
import { parseArgs } from "node:util";
import { decodeOn, prefillOn, scrapeMetric, startDisaggWorker } from "../test/helpers/disagg_workers.ts";
import { testQwen3Dir } from "../test/native/models.ts";
import { seededRandom } from "../src/util/seeded_random.ts";

const { values } = parseArgs({
  options: {
    model: { type: "string", multiple: true },
    prompts: { type: "string", default: "6" },
    "prompt-tokens": { type: "string", default: "2048" },
    "kv-cache-memory": { type: "string", default: String(2 * 1024 ** 3) },
    out: { type: "string" },
  },
});
const models = (values.model?.length ? values.model : ["tiny"]).map((m) => (m === "tiny" ? testQwen3Dir() : m));
const numPrompts = Number(values.prompts);
const promptTokens = Number(values["prompt-tokens"]);

const TRACE = /cuda_ipc trace: read \d+: (\d+) descriptors, (\d+) runs, (\d+) copies, (\w+), (\d+) bytes: issue [\d.]+ us, gpu ([\d.]+) us, total ([\d.]+) us/g;

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

interface Row {
  model: string;
  kvBytes: number;
  descriptors: string;
  fetchMs: number;
  readMs: number;
  gpuMs: number;
  prefillMs: number;
}

async function measure(dir: string): Promise<Row> {
  const engineArgs = ["--engine", "native", "--device", "cuda", "--model", dir, "--kv-cache-memory", values["kv-cache-memory"]!];
  const prefill = await startDisaggWorker([...engineArgs, "--disaggregation-mode", "prefill", "--worker-id", "bench-prefill"]);
  const decode = await startDisaggWorker([...engineArgs, "--disaggregation-mode", "decode", "--worker-id", "bench-decode"], { SWITCHYARD_CUDA_IPC_TRACE: "1" });
  try {
    const random = seededRandom(0x2048);
    const fetchMs: number[] = [];
    const readMs: number[] = [];
    const gpuMs: number[] = [];
    const prefillMs: number[] = [];
    let kvBytes = 0;
    let descriptors = "";
    for (let p = 0; p < numPrompts; p++) {
      // Distinct prompts: a prefix-cache hit on either side would skip the transfer.
      const prompt = Array.from({ length: promptTokens }, () => 1000 + Math.floor(random() * 100_000));
      const started = performance.now();
      const { first, kvTransfer } = await prefillOn(prefill, `p${p}`, prompt);
      const prefilled = performance.now();
      const fetchedBefore = await scrapeMetric(decode.metricsUrl, "switchyard_worker_kv_transfer_seconds_sum");
      await decodeOn(decode, `p${p}`, prompt, 2, kvTransfer, first.tokenIds[0]);
      const fetchSeconds = (await scrapeMetric(decode.metricsUrl, "switchyard_worker_kv_transfer_seconds_sum")) - fetchedBefore;
      // The trace reaches this process through the worker's stderr pipe, apart from the answer.
      let traces = [...decode.proc.output().matchAll(TRACE)];
      for (let waited = 0; traces.length < p + 1 && waited < 2000; waited += 20) {
        await new Promise((resolve) => setTimeout(resolve, 20));
        traces = [...decode.proc.output().matchAll(TRACE)];
      }
      if (traces.length !== p + 1) throw new Error(`expected ${p + 1} CUDA IPC reads on the decode worker, saw ${traces.length}:\n${decode.proc.output().slice(-2000)}`);
      const [, descs, runs, copies, method, bytes, gpuUs, totalUs] = traces[p];
      kvBytes = Number(bytes);
      descriptors = `${descs} → ${runs} runs → ${copies} pieces (${method})`;
      if (p === 0) continue; // warm-up
      fetchMs.push(fetchSeconds * 1000);
      readMs.push(Number(totalUs) / 1000);
      gpuMs.push(Number(gpuUs) / 1000);
      prefillMs.push(prefilled - started);
    }
    return {
      model: basename(dir),
      kvBytes,
      descriptors,
      fetchMs: median(fetchMs),
      readMs: median(readMs),
      gpuMs: median(gpuMs),
      prefillMs: median(prefillMs),
    };
  } finally {
    await Promise.all([prefill.close(), decode.close()]);
  }
}

const rows: Row[] = [];
for (const dir of models) rows.push(await measure(dir));
const MiB = 1024 * 1024;
const lines = [
  `KV of one ${promptTokens}-token prompt, prefill worker -> decode worker (two processes, one GPU, CUDA IPC); medians of ${numPrompts - 1} prompts after one warm-up`,
  "",
  "| model | KV bytes | READ: descriptors → runs → copy pieces | fetch ms | READ ms | GPU ms | GPU GB/s | prefill ms |",
  "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
  ...rows.map(
    (r) =>
      `| ${r.model} | ${(r.kvBytes / MiB).toFixed(2)} MiB | ${r.descriptors} | ${r.fetchMs.toFixed(2)} | ${r.readMs.toFixed(3)} | ${r.gpuMs.toFixed(3)} | ${(r.kvBytes / (r.gpuMs / 1000) / 1e9).toFixed(0)} | ${r.prefillMs.toFixed(1)} |`,
  ),
];
console.log(lines.join("\n"));
if (values.out) writeFileSync(values.out, lines.join("\n") + "\n");
