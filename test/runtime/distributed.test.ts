/**
 * Switchyard as separate processes on a real NATS server: discovery, migration when a worker
 * is killed, graceful shutdown under load, NATS restarts.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { streamCompletion, type StreamResult } from "../helpers/openai_stream.ts";
import { startNatsServer, startSwitchyard, stop, type NatsServer, type Proc } from "../helpers/processes.ts";

const MODEL = "switchyard-tiny-qwen3";

async function modelIds(frontendUrl: string): Promise<string[]> {
  const res = await fetch(`${frontendUrl}/v1/models`);
  return ((await res.json()) as { data: { id: string }[] }).data.map((m) => m.id);
}

async function workerCount(frontendUrl: string): Promise<number> {
  const res = await fetch(`${frontendUrl}/health`);
  if (res.status !== 200) return 0;
  const body = (await res.json()) as { instances?: unknown[] };
  return body.instances?.length ?? 0;
}

/** One request through every worker, so tokenizers and connections are warm before the clock runs. */
async function warmUp(frontendUrl: string, workers: number): Promise<void> {
  const results = await load(frontendUrl, workers * 2, 2);
  expect(results.filter((r) => r.error)).toEqual([]);
}

function load(frontendUrl: string, n: number, maxTokens: number): Promise<StreamResult[]> {
  return Promise.all(
    Array.from({ length: n }, (_, i) =>
      streamCompletion(frontendUrl, { model: MODEL, prompt: `request ${i} tells a story`, max_tokens: maxTokens, ignore_eos: true, seed: i }),
    ),
  );
}

describe("distributed runtime over NATS", () => {
  let nats: NatsServer;
  let procs: Proc[] = [];
  const spawnSwitchyard = async (args: string[], env?: Record<string, string>) => {
    const proc = await startSwitchyard(args, env);
    procs.push(proc);
    return proc;
  };
  const worker = (id: string, extra: string[] = []) =>
    spawnSwitchyard(["worker", "--port", "0", "--worker-id", id, "--nats", nats.url, "--engine", "mocker", "--speedup-ratio", "1", ...extra]);

  beforeAll(async () => {
    nats = await startNatsServer();
  });
  afterEach(async () => {
    await Promise.all(procs.map((p) => stop(p, "SIGKILL")));
    procs = [];
  });
  afterAll(() => nats.stop());

  it("discovers workers, serves through them and forgets one that deregisters", async () => {
    const frontend = await spawnSwitchyard(["frontend", "--port", "0", "--nats", nats.url]);
    expect(await modelIds(frontend.url)).toEqual([]);
    const a = await worker("disc-a");
    await worker("disc-b");
    await expect.poll(() => workerCount(frontend.url), { timeout: 15_000 }).toBe(2);
    expect(await modelIds(frontend.url)).toEqual([MODEL]);
    const [result] = await load(frontend.url, 1, 5);
    expect(result).toMatchObject({ status: 200, completionTokens: 5, finishReason: "length" });

    expect(await stop(a, "SIGTERM")).toBe(0);
    await expect.poll(() => workerCount(frontend.url), { timeout: 5000 }).toBe(1);
  });

  it("completes all 50 streams, full length, when a worker is killed mid-stream (migration on)", async () => {
    const frontend = await spawnSwitchyard(["frontend", "--port", "0", "--nats", nats.url, "--migration-limit", "3"]);
    const a = await worker("kill-a");
    await worker("kill-b");
    await expect.poll(() => workerCount(frontend.url), { timeout: 15_000 }).toBe(2);
    await warmUp(frontend.url, 2);
    const running = load(frontend.url, 50, 200);
    // Let every stream get going, then kill one of the two workers outright.
    await new Promise((resolve) => setTimeout(resolve, 700));
    a.child.kill("SIGKILL");
    const results = await running;
    expect(results.filter((r) => r.error)).toEqual([]);
    expect(results.map((r) => r.completionTokens)).toEqual(Array(50).fill(200));
    expect(results.every((r) => r.finishReason === "length")).toBe(true);
  });

  it("ends a broken stream with a clean error event when migration is off", async () => {
    const frontend = await spawnSwitchyard(["frontend", "--port", "0", "--nats", nats.url, "--migration-limit", "0"]);
    const a = await worker("nomig-a");
    await expect.poll(() => workerCount(frontend.url), { timeout: 15_000 }).toBe(1);
    await warmUp(frontend.url, 1);
    const running = load(frontend.url, 4, 400);
    await new Promise((resolve) => setTimeout(resolve, 500));
    a.child.kill("SIGKILL");
    const results = await running;
    for (const r of results) {
      expect(r.status).toBe(200);
      expect(r.error).toBeTruthy();
    }
  });

  it("loses no request when a worker gets SIGTERM under load", async () => {
    const frontend = await spawnSwitchyard(["frontend", "--port", "0", "--nats", nats.url], { SWITCHYARD_LOG_LEVEL: "debug" });
    const a = await worker("term-a");
    const b = await worker("term-b");
    await expect.poll(() => workerCount(frontend.url), { timeout: 15_000 }).toBe(2);
    await warmUp(frontend.url, 2);
    const running = load(frontend.url, 30, 150);
    await new Promise((resolve) => setTimeout(resolve, 500));
    a.child.kill("SIGTERM");
    const late = load(frontend.url, 10, 20);
    const results = [...(await running), ...(await late)];
    const failed = results.flatMap((r, i) => (r.error ? [{ index: i, ...r }] : []));
    // This failed in 3 of ~160 runs before three fixes: a request routed to the draining worker
    // that got neither an answer nor an error (src/runtime/guarded_session_manager.ts), a finished
    // request whose trailers the closing worker cut (src/worker/worker_server.ts), and requests
    // a worker cancelled when its grace ran out (src/router/worker_router.ts); 0 of 60 since.
    // Should it fail again, keep what the processes said (the frontend's routing lines name each
    // request by its seed and max_tokens).
    const logs = () =>
      [
        frontend.output().split("\n").filter((line) => !line.includes(" DEBUG ") || /worker term-a|failed|max_tokens 20\)/.test(line)).join("\n"),
        ...[a, b].map((p) => p.output().split("\n").slice(-40).join("\n")),
      ].join("\n-----\n");
    expect(failed, failed.length > 0 ? logs() : "").toEqual([]);
    expect(results.every((r) => r.finishReason === "length")).toBe(true);
    expect(await a.exited).toBe(0);
  });

  it("routes by KV events that arrive over NATS subjects", async () => {
    const frontend = await spawnSwitchyard(["frontend", "--port", "0", "--nats", nats.url, "--router-mode", "kv"]);
    await worker("kvnats-a", ["--speedup-ratio", "0"]);
    await worker("kvnats-b", ["--speedup-ratio", "0"]);
    await worker("kvnats-c", ["--speedup-ratio", "0"]);
    await expect.poll(() => workerCount(frontend.url), { timeout: 15_000 }).toBe(3);
    const prompts = Array.from({ length: 4 }, (_, i) => `nats routed ${i}: ` + `the yard master's long instructions ${i} `.repeat(30));
    const complete = async (prompt: string) => {
      const res = await fetch(`${frontend.url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: MODEL, prompt, max_tokens: 2 }) });
      return ((await res.json()) as { usage: { prompt_tokens_details?: { cached_tokens?: number } } }).usage.prompt_tokens_details?.cached_tokens ?? 0;
    };
    for (const p of prompts) await complete(p);
    const indexed = async () => {
      const text = await (await fetch(`${frontend.url}/metrics`)).text();
      return [...text.matchAll(/^switchyard_router_indexer_blocks\{[^}]*\} (\d+)/gm)].reduce((n, m) => n + Number(m[1]), 0);
    };
    await expect.poll(indexed, { timeout: 10_000 }).toBeGreaterThanOrEqual(4 * 12);
    for (const p of prompts) expect(await complete(p)).toBeGreaterThanOrEqual(200);
  });

  it("keeps serving across a NATS restart, workers re-registering within 10 s", async () => {
    const frontend = await spawnSwitchyard(["frontend", "--port", "0", "--nats", nats.url]);
    await worker("restart-a");
    await expect.poll(() => workerCount(frontend.url), { timeout: 15_000 }).toBe(1);
    await nats.restart();
    // The bucket was lost with the server; the worker must write its record again.
    const restartedAt = Date.now();
    const [during] = await load(frontend.url, 1, 5);
    expect(during).toMatchObject({ status: 200, completionTokens: 5 });
    await expect.poll(async () => {
      const { connect } = await import("@nats-io/transport-node");
      const { Kvm } = await import("@nats-io/kv");
      const nc = await connect({ servers: nats.url });
      try {
        const kv = await new Kvm(nc).open("switchyard_instances");
        return (await kv.get("instances.restart-a"))?.operation === "PUT";
      } catch {
        return false;
      } finally {
        await nc.close();
      }
    }, { timeout: 10_000, interval: 250 }).toBe(true);
    expect(Date.now() - restartedAt).toBeLessThan(10_000);
    const [after] = await load(frontend.url, 1, 5);
    expect(after).toMatchObject({ status: 200, completionTokens: 5 });
    expect(await workerCount(frontend.url)).toBe(1);
  });
});
