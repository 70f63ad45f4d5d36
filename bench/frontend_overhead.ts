/**
 * Issue 2's benchmark: how much the serving stack (HTTP frontend, tokenizer, router, Connect
 * hop to a worker) costs per streamed token. Switchyard serve with a zero-cost mocker worker
 * against a bare Node SSE server, both in their own process, under the same load generator in
 * the same run. Run: `npx tsx bench/frontend_overhead.ts [--concurrency 64] [--tokens 128]`.
 *
 * Tokens/s counts generated tokens (each stream's usage.completion_tokens), chunks/s the SSE
 * content events: the bare server sends one token per event; Switchyard merges the tokens of
 * a request that queued up while its consumer was busy (as vLLM does), so it may send fewer,
 * larger chunks. TTFT and ITL are per chunk.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { cpus } from "node:os";
import { parseArgs } from "node:util";
import { runLoad, type LoadReport } from "../src/loadgen/openai_load.ts";

const { values } = parseArgs({ options: { concurrency: { type: "string", default: "64" }, tokens: { type: "string", default: "128" }, requests: { type: "string", default: "640" } } });
const concurrency = Number(values.concurrency);
const maxTokens = Number(values.tokens);
const requests = Number(values.requests);

async function start(command: string, args: string[]): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, SWITCHYARD_LOG_LEVEL: "warn" } });
  let out = "";
  child.stdout!.setEncoding("utf8");
  for await (const chunk of child.stdout!) {
    out += chunk;
    const match = out.match(/(http:\/\/\S+\/v1)/);
    if (match) return { child, url: match[1] };
  }
  throw new Error(`${command} ${args.join(" ")} exited before printing its URL`);
}

async function measure(name: string, url: string, model: string): Promise<LoadReport> {
  const prompt = (i: number) => `Request ${i}: tell me a long story about switchyards and trains.`;
  // Warm up connections, JIT and caches before the measured run.
  await runLoad({ baseUrl: url, model, concurrency, requests: concurrency, maxTokens: 8, prompt, extraBody: { ignore_eos: true } });
  const report = await runLoad({ baseUrl: url, model, concurrency, requests, maxTokens, prompt, extraBody: { ignore_eos: true } });
  if (report.failed > 0) throw new Error(`${name}: ${report.failed} requests failed: ${report.errors.join("; ")}`);
  if (report.usageMissing > 0) throw new Error(`${name}: ${report.usageMissing} streams carried no usage chunk`);
  const expected = requests * maxTokens;
  if (Math.round(report.tokensPerS * report.durationS) !== expected) throw new Error(`${name}: expected ${expected} tokens in all, got ${Math.round(report.tokensPerS * report.durationS)}`);
  return report;
}

const bare = await start(process.execPath, ["--import", "tsx", "bench/bare_sse_server.ts"]);
const yard = await start(process.execPath, ["bin/switchyard.mjs", "serve", "--port", "0", "--engine", "mocker", "--speedup-ratio", "0"]);
try {
  const bareReport = await measure("bare", bare.url, "bare");
  const yardReport = await measure("switchyard", yard.url, "switchyard-tiny-qwen3");
  const f = (x: number) => x.toFixed(1);
  const rows = [
    ["", "requests/s", "tokens/s", "chunks/s", "tokens/chunk", "TTFT p50 ms", "TTFT p99 ms", "ITL p50 ms"],
    ...[["bare Node SSE", bareReport] as const, ["switchyard serve (mocker, zero cost)", yardReport] as const].map(([label, r]) => [
      label,
      f(r.requestsPerS),
      f(r.tokensPerS),
      f(r.chunksPerS),
      f(r.tokensPerChunk),
      f(r.ttftMs.p50),
      f(r.ttftMs.p99),
      f(r.itlMs.p50),
    ]),
  ];
  console.log(`\n${cpus().length} cores (${cpus()[0]?.model}), node ${process.version}; ${concurrency} concurrent streams x ${maxTokens} tokens, ${requests} requests each\n`);
  for (const row of rows) console.log(`| ${row.map((c, i) => (i === 0 ? c.padEnd(38) : c.padStart(12))).join(" | ")} |`);
  console.log(`\ntoken rate vs bare: ${(100 * yardReport.tokensPerS / bareReport.tokensPerS).toFixed(0)}% (chunk rate ${(100 * yardReport.chunksPerS / bareReport.chunksPerS).toFixed(0)}%)`);
  console.log(`added TTFT: p50 ${f(yardReport.ttftMs.p50 - bareReport.ttftMs.p50)} ms, p99 ${f(yardReport.ttftMs.p99 - bareReport.ttftMs.p99)} ms`);
} finally {
  for (const p of [bare.child, yard.child]) {
    p.kill("SIGTERM");
    await once(p, "exit");
  }
}
