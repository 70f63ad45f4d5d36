/**
 * Issue 7's end-to-end benchmark: disaggregated serving (1 prefill + 1 decode worker) against
 * aggregated serving (2 workers) under a long-prompt workload, on the mocker engine with its
 * default timing model (an 8B-parameter model on one H100: 5 ms per decode step, 0.05 ms per
 * prefilled token). Each worker and the frontend run as their own process, as deployed; the load
 * generator is this process; both configurations see the same requests (unique random token
 * prompts, so no prefix hits).
 *
 * What to expect: in aggregated serving, a worker that takes a new prompt runs its prefill
 * chunks in the same steps as its running decodes, so their inter-token latency jumps while it
 * lasts; a decode worker that receives its KV ready-made never does. The price is one worker
 * doing every prefill (TTFT) plus the KV transfer.
 *
 * Run: `npx tsx bench/disagg_serving.ts [--concurrency 16] [--requests 96] [--prompt-tokens 3000]
 *       [--max-tokens 200] [--kv-bytes-per-block 65536] [--speedup 1]`
 */
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { cpus, loadavg } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { runLoad, type LoadReport } from "../src/loadgen/openai_load.ts";
import { seededRandom } from "../src/util/seeded_random.ts";

const { values } = parseArgs({
  options: {
    concurrency: { type: "string", default: "16" },
    requests: { type: "string", default: "96" },
    "prompt-tokens": { type: "string", default: "3000" },
    "max-tokens": { type: "string", default: "200" },
    "kv-bytes-per-block": { type: "string", default: String(64 << 10) },
    "num-gpu-blocks": { type: "string", default: "4096" },
    speedup: { type: "string", default: "1" },
  },
});
const concurrency = Number(values.concurrency);
const requests = Number(values.requests);
const promptTokens = Number(values["prompt-tokens"]);
const maxTokens = Number(values["max-tokens"]);
const MODEL = "switchyard-tiny-qwen3";
const bin = join(import.meta.dirname, "..", "bin", "switchyard.mjs");

async function startProcess(args: string[]): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(process.execPath, [bin, ...args], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, SWITCHYARD_LOG_LEVEL: "warn" },
  });
  let out = "";
  child.stdout!.setEncoding("utf8");
  for await (const chunk of child.stdout!) {
    out += chunk;
    const match = out.match(/^(https?:\/\/\S+)$/m);
    if (match) return { child, url: match[1].replace(/\/v1$/, "") };
  }
  throw new Error(`switchyard ${args.join(" ")} exited before printing its URL`);
}

/** Unique prompts: random token ids, a different stream per request index and round. */
function prompts(round: number): (i: number) => number[] {
  return (i) => {
    const random = seededRandom(round * 1_000_003 + i);
    return Array.from({ length: promptTokens }, () => 100 + Math.floor(random() * 30_000));
  };
}

async function measure(name: string, workers: string[][], round: number): Promise<LoadReport> {
  const procs = await Promise.all(workers.map((args) => startProcess(["worker", "--port", "0", ...args])));
  try {
    const frontend = await startProcess(["frontend", "--port", "0", ...procs.flatMap((w) => ["--worker", w.url])]);
    procs.push(frontend);
    const url = `${frontend.url}/v1`;
    const mocker = { ignore_eos: true };
    // Warm-up: connections, JIT, and the first touch of the mocker's KV memory.
    await runLoad({ baseUrl: url, model: MODEL, concurrency, requests: concurrency, maxTokens: 4, prompt: prompts(round + 100), extraBody: mocker });
    const report = await runLoad({ baseUrl: url, model: MODEL, concurrency, requests, maxTokens, prompt: prompts(round), extraBody: mocker });
    if (report.failed > 0) throw new Error(`${name}: ${report.failed} requests failed: ${report.errors.slice(0, 3).join("; ")}`);
    return report;
  } finally {
    for (const p of procs) p.child.kill("SIGTERM");
    await Promise.all(procs.map((p) => (p.child.exitCode === null ? once(p.child, "exit") : undefined)));
  }
}

const engine = ["--engine", "mocker", "--speedup-ratio", values.speedup!, "--num-gpu-blocks", values["num-gpu-blocks"]!, "--kv-bytes-per-block", values["kv-bytes-per-block"]!];
const configs = [
  { name: "aggregated, 2 workers (round-robin)", workers: [[...engine], [...engine]] },
  {
    name: "disaggregated, 1 prefill + 1 decode",
    workers: [
      [...engine, "--disaggregation-mode", "prefill"],
      [...engine, "--disaggregation-mode", "decode"],
    ],
  },
];

console.log(`${new Date().toISOString()}  ${cpus().length} x ${cpus()[0]?.model}  load ${loadavg().map((l) => l.toFixed(2)).join(" ")}`);
console.log(`${requests} requests, ${concurrency} concurrent, ${promptTokens}-token prompts, ${maxTokens} output tokens, mocker speedup ${values.speedup}, ${values["kv-bytes-per-block"]} KV bytes per block`);
const rows: string[] = [];
for (const [round, config] of configs.entries()) {
  const r = await measure(config.name, config.workers, round);
  rows.push(
    `| ${config.name} | ${r.requestsPerS.toFixed(2)} | ${r.tokensPerS.toFixed(0)} | ${r.ttftMs.p50.toFixed(0)} | ${r.ttftMs.p99.toFixed(0)} | ${r.itlMs.p50.toFixed(1)} | ${r.itlMs.p90.toFixed(1)} | ${r.itlMs.p99.toFixed(1)} |`,
  );
}
console.log("\n| configuration | requests/s | tokens/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p90 ms | ITL p99 ms |");
console.log("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
for (const row of rows) console.log(row);
