/** The Prometheus expositions of the frontend and of a worker pass `promtool check metrics`. */
import { execFileSync } from "node:child_process";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { serve, type ServeHandle } from "../../src/cli/serve.ts";
import { startMetricsServer } from "../../src/runtime/metrics_server.ts";
import { registerWorkerMetrics } from "../../src/worker/worker_metrics.ts";

function promtool(exposition: string): string {
  // promtool exits non-zero on errors; lint warnings (e.g. missing units) still print.
  return execFileSync("promtool", ["check", "metrics"], { input: exposition, encoding: "utf8", stdio: ["pipe", "pipe", "pipe"] });
}

describe("metrics", () => {
  let server: ServeHandle;
  beforeAll(async () => {
    server = await serve(["--port", "0", "--engine", "mocker", "--speedup-ratio", "0"]);
    for (const stream of [false, true]) {
      const res = await fetch(`${server.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "switchyard-tiny-qwen3", prompt: "metrics please ".repeat(10), max_tokens: 5, stream }),
      });
      await res.text();
    }
  });
  afterAll(() => server.stop());

  it("the frontend's /metrics passes promtool and counts what was served", async () => {
    const text = await (await fetch(`${server.url}/metrics`)).text();
    expect(() => promtool(text)).not.toThrow();
    expect(text).toMatch(/switchyard_frontend_requests_total\{[^}]*\} 2/);
    expect(text).toMatch(/switchyard_frontend_output_tokens_total(\{[^}]*\})? 10/);
    expect(text).toContain("switchyard_frontend_time_to_first_token_seconds_bucket");
  });

  it("a worker's metrics port passes promtool and reports its engine", async () => {
    const worker = server.workers[0];
    const registry = new Registry();
    registerWorkerMetrics(registry, worker.engine, worker.kvEvents, { worker_id: worker.workerId, model: "switchyard-tiny-qwen3" });
    const metrics = await startMetricsServer(registry, "127.0.0.1", 0);
    try {
      const text = await (await fetch(metrics.url)).text();
      expect(() => promtool(text)).not.toThrow();
      expect(text).toMatch(/switchyard_worker_kv_blocks\{[^}]*\} 16384/);
      expect(text).toMatch(/switchyard_worker_prefix_cache_queries_total\{[^}]*\} [1-9]/);
      expect(text).toMatch(/switchyard_worker_kv_events_published_total\{[^}]*\} [1-9]/);
      expect(text).toMatch(/switchyard_worker_running_requests\{[^}]*\} 0/);
    } finally {
      await metrics.close();
    }
  });
});
