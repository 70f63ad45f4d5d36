/**
 * A closed-loop load generator for any OpenAI-compatible endpoint: `concurrency` clients each
 * send streamed completions back to back until `requests` are done, measuring time to first
 * token, inter-chunk latency and throughput from the SSE stream as a client sees it.
 *
 * Tokens are counted from the usage chunk that `stream_options.include_usage` asks for, not
 * from content chunks: a server may put several tokens in one chunk (vLLM does when its client
 * falls behind). Latencies are per chunk: ITL is the gap between content chunks, so with
 * multi-token chunks it is the gap between deliveries, not between tokens.
 */
import http from "node:http";
import https from "node:https";

export interface LoadOptions {
  /** Base URL ending in /v1. */
  baseUrl: string;
  model: string;
  concurrency: number;
  requests: number;
  maxTokens: number;
  /** Prompt per request index; token ids or text. */
  prompt: (index: number) => string | number[];
  endpoint?: "completions" | "chat";
  extraBody?: Record<string, unknown>;
  timeoutMs?: number;
}

export interface RequestRecord {
  ok: boolean;
  status: number;
  ttftMs: number;
  latencyMs: number;
  /** Content chunks received (one per streamed token for a server that streams per token). */
  chunks: number;
  /** usage.completion_tokens of the stream's usage chunk; undefined when the server sent none. */
  completionTokens: number | undefined;
  itlMs: number[];
  error?: string;
}

export interface LoadReport {
  requests: number;
  failed: number;
  durationS: number;
  requestsPerS: number;
  chunksPerS: number;
  /** Generated tokens per second, from each stream's usage.completion_tokens. */
  tokensPerS: number;
  /** Mean tokens per content chunk. */
  tokensPerChunk: number;
  /** Successful requests whose stream carried no usage chunk (counted by their chunks instead). */
  usageMissing: number;
  ttftMs: Percentiles;
  itlMs: Percentiles;
  latencyMs: Percentiles;
  errors: string[];
}

export interface Percentiles {
  p50: number;
  p90: number;
  p99: number;
  mean: number;
}

export function percentiles(values: number[]): Percentiles {
  if (values.length === 0) return { p50: NaN, p90: NaN, p99: NaN, mean: NaN };
  const sorted = Float64Array.from(values).sort();
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return { p50: at(0.5), p90: at(0.9), p99: at(0.99), mean: values.reduce((a, b) => a + b, 0) / values.length };
}

export async function runLoad(options: LoadOptions): Promise<LoadReport> {
  const url = new URL(`${options.baseUrl.replace(/\/$/, "")}/${options.endpoint === "chat" ? "chat/completions" : "completions"}`);
  const agent = url.protocol === "https:" ? new https.Agent({ keepAlive: true, maxSockets: options.concurrency }) : new http.Agent({ keepAlive: true, maxSockets: options.concurrency });
  const records: RequestRecord[] = [];
  let next = 0;
  const started = performance.now();
  const client = async () => {
    while (next < options.requests) {
      const index = next++;
      records.push(await oneRequest(url, agent, options, index));
    }
  };
  await Promise.all(Array.from({ length: options.concurrency }, client));
  const durationS = (performance.now() - started) / 1000;
  agent.destroy();
  const ok = records.filter((r) => r.ok);
  const chunks = ok.reduce((a, r) => a + r.chunks, 0);
  const tokens = ok.reduce((a, r) => a + (r.completionTokens ?? r.chunks), 0);
  return {
    requests: records.length,
    failed: records.length - ok.length,
    durationS,
    requestsPerS: ok.length / durationS,
    chunksPerS: chunks / durationS,
    tokensPerS: tokens / durationS,
    tokensPerChunk: tokens / chunks,
    usageMissing: ok.filter((r) => r.completionTokens === undefined).length,
    ttftMs: percentiles(ok.map((r) => r.ttftMs)),
    itlMs: percentiles(ok.flatMap((r) => r.itlMs)),
    latencyMs: percentiles(ok.map((r) => r.latencyMs)),
    errors: [...new Set(records.filter((r) => !r.ok).map((r) => r.error ?? `HTTP ${r.status}`))].slice(0, 5),
  };
}

function oneRequest(url: URL, agent: http.Agent, options: LoadOptions, index: number): Promise<RequestRecord> {
  const prompt = options.prompt(index);
  const body = JSON.stringify({
    model: options.model,
    stream: true,
    max_tokens: options.maxTokens,
    ...(options.endpoint === "chat"
      ? { messages: [{ role: "user", content: typeof prompt === "string" ? prompt : String(prompt) }] }
      : { prompt }),
    stream_options: { include_usage: true },
    ...options.extraBody,
  });
  const transport = url.protocol === "https:" ? https : http;
  return new Promise((resolve) => {
    const start = performance.now();
    let first = 0;
    let last = 0;
    let chunks = 0;
    let completionTokens: number | undefined;
    const itlMs: number[] = [];
    let buffered = "";
    let failure: string | undefined;
    const req = transport.request(
      url,
      { method: "POST", agent, headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) }, timeout: options.timeoutMs ?? 120_000 },
      (res) => {
        res.setEncoding("utf8");
        res.on("data", (data: string) => {
          buffered += data;
          let end: number;
          while ((end = buffered.indexOf("\n\n")) >= 0) {
            const event = buffered.slice(0, end);
            buffered = buffered.slice(end + 2);
            if (!event.startsWith("data: ") || event === "data: [DONE]") continue;
            if (event.includes('"error"')) failure ??= event.slice(6, 300);
            // Only the last chunk has a usage object; the others have "usage":null or none.
            if (event.includes('"usage":{')) {
              const usage = (JSON.parse(event.slice(6)) as { usage: { completion_tokens?: number } }).usage;
              completionTokens = usage.completion_tokens;
            }
            // A chunk with generated content; usage-only and role-only chunks carry none.
            if (/"(text|content)":"[^"]/.test(event)) {
              const now = performance.now();
              if (chunks === 0) first = now;
              else itlMs.push(now - last);
              last = now;
              chunks++;
            }
          }
        });
        res.on("end", () => {
          const ok = res.statusCode === 200 && failure === undefined;
          resolve({ ok, status: res.statusCode ?? 0, ttftMs: first - start, latencyMs: performance.now() - start, chunks, completionTokens, itlMs, error: ok ? undefined : failure ?? `HTTP ${res.statusCode} ${buffered.slice(0, 200)}` });
        });
      },
    );
    req.on("error", (err) => resolve({ ok: false, status: 0, ttftMs: 0, latencyMs: 0, chunks: 0, completionTokens: undefined, itlMs: [], error: err.message }));
    req.on("timeout", () => req.destroy(new Error("timed out")));
    req.end(body);
  });
}
