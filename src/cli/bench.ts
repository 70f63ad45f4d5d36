/** `switchyard bench`: load against any OpenAI endpoint; prints TTFT, ITL and throughput. */
import { z } from "zod";
import { runLoad, type LoadReport } from "../loadgen/openai_load.ts";
import { intFlag, parseCommand } from "./args.ts";

export const BENCH_USAGE = `switchyard bench --url http://127.0.0.1:8000/v1 --model NAME [options]
  --concurrency N     clients in parallel (default 16)
  --requests N        requests in all (default 256)
  --max-tokens N      tokens per request, ignore_eos (default 128)
  --prompt-words N    words in each (distinct) prompt (default 64)
  --endpoint E        completions | chat (default completions)`;

const BenchFlagsSchema = z.object({
  url: z.string().url(),
  model: z.string().min(1),
  concurrency: intFlag(1, 4096).default(16),
  requests: intFlag(1).default(256),
  "max-tokens": intFlag(1).default(128),
  "prompt-words": intFlag(1).default(64),
  endpoint: z.enum(["completions", "chat"]).default("completions"),
});

export async function benchCommand(argv: string[]): Promise<void> {
  const flags = parseCommand(
    argv,
    {
      url: { type: "string" }, model: { type: "string" }, concurrency: { type: "string" }, requests: { type: "string" },
      "max-tokens": { type: "string" }, "prompt-words": { type: "string" }, endpoint: { type: "string" },
    },
    BenchFlagsSchema,
  );
  const report = await runLoad({
    baseUrl: flags.url,
    model: flags.model,
    concurrency: flags.concurrency,
    requests: flags.requests,
    maxTokens: flags["max-tokens"],
    endpoint: flags.endpoint,
    prompt: (i) => Array.from({ length: flags["prompt-words"] }, (_, w) => `word${(i * 7919 + w) % 10007}`).join(" "),
    extraBody: { ignore_eos: true },
  });
  console.log(formatReport(report));
}

export function formatReport(r: LoadReport): string {
  const f = (x: number) => x.toFixed(2);
  return [
    `requests ${r.requests} (failed ${r.failed}) in ${f(r.durationS)} s: ${f(r.requestsPerS)} req/s, ${f(r.tokensPerS)} tokens/s (${f(r.chunksPerS)} chunks/s)`,
    `TTFT ms     p50 ${f(r.ttftMs.p50)}  p90 ${f(r.ttftMs.p90)}  p99 ${f(r.ttftMs.p99)}`,
    `ITL ms      p50 ${f(r.itlMs.p50)}  p90 ${f(r.itlMs.p90)}  p99 ${f(r.itlMs.p99)}`,
    `latency ms  p50 ${f(r.latencyMs.p50)}  p90 ${f(r.latencyMs.p90)}  p99 ${f(r.latencyMs.p99)}`,
    ...r.errors.map((e) => `error: ${e}`),
  ].join("\n");
}
