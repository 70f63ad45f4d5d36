/**
 * A standalone `switchyard router` shared by two frontends: both route through one view of the
 * workers' caches, and requests are reported finished so no load is left counted.
 */
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ListWorkersRequestSchema, RouterService } from "../../gen/switchyard/router/v1/router_pb.ts";
import { MockerEngine } from "../../src/engine/mocker/mocker_engine.ts";
import { startWorker, type RunningWorker } from "../../src/worker/worker_server.ts";
import { startSwitchyard, stop, type Proc } from "../helpers/processes.ts";

const MODEL = "switchyard-tiny-qwen3";

async function complete(frontend: Proc, prompt: string): Promise<number> {
  const res = await fetch(`${frontend.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, prompt, max_tokens: 2 }),
  });
  expect(res.status).toBe(200);
  return ((await res.json()) as { usage: { prompt_tokens_details?: { cached_tokens?: number } } }).usage.prompt_tokens_details?.cached_tokens ?? 0;
}

describe("switchyard router shared by two frontends", () => {
  const workers: RunningWorker[] = [];
  const procs: Proc[] = [];
  beforeAll(async () => {
    for (let i = 0; i < 3; i++) {
      workers.push(await startWorker({ engine: new MockerEngine({ speedupRatio: 0 }), engineName: "mocker", model: MODEL, workerId: `shared-${i}` }));
    }
  });
  afterAll(async () => {
    await Promise.all(procs.map((p) => stop(p, "SIGKILL")));
    await Promise.all(workers.map((w) => w.close()));
  });

  it("routes a prompt sent through one frontend to the cache it filled through the other", async () => {
    const workerFlags = workers.flatMap((w) => ["--worker", w.url]);
    const router = await startSwitchyard(["router", "--port", "0", ...workerFlags]);
    procs.push(router);
    const frontends = [];
    for (let i = 0; i < 2; i++) {
      const frontend = await startSwitchyard(["frontend", "--port", "0", "--router-url", router.url, ...workerFlags]);
      procs.push(frontend);
      frontends.push(frontend);
    }
    const routerClient = createClient(RouterService, createGrpcTransport({ baseUrl: router.url }));
    await expect.poll(async () => (await routerClient.listWorkers(create(ListWorkersRequestSchema, {}))).workers.length, { timeout: 15_000 }).toBe(3);
    for (const f of frontends) {
      await expect.poll(async () => (await fetch(`${f.url}/health`)).status, { timeout: 15_000 }).toBe(200);
    }

    const prompts = Array.from({ length: 4 }, (_, i) => `shared view ${i}: ` + `a long system prompt about rail yards ${i} `.repeat(30));
    for (const p of prompts) expect(await complete(frontends[0], p)).toBe(0);
    await expect.poll(async () => {
      const { workers: states } = await routerClient.listWorkers(create(ListWorkersRequestSchema, {}));
      return states.reduce((n, w) => n + w.cachedBlocks, 0);
    }, { timeout: 5000 }).toBeGreaterThanOrEqual(4 * 12);
    for (const p of prompts) expect(await complete(frontends[1], p)).toBeGreaterThanOrEqual(200);

    // Every request was reported finished: the router counts no load.
    await expect.poll(async () => {
      const { workers: states } = await routerClient.listWorkers(create(ListWorkersRequestSchema, {}));
      return states.reduce((n, w) => n + w.activeRequests, 0);
    }, { timeout: 5000 }).toBe(0);
  });
});
