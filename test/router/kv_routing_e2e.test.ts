import { create } from "@bufbuild/protobuf";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GenerateRequestSchema, type GenerateResponse } from "../../gen/switchyard/worker/v1/worker_pb.ts";
import { blockHashes } from "../../src/engine/block_hash.ts";
import { MockerEngine } from "../../src/engine/mocker/mocker_engine.ts";
import { KvSelector } from "../../src/router/kv/kv_selector.ts";
import { connectWorker } from "../../src/router/worker_handle.ts";
import { WorkerRouter } from "../../src/router/worker_router.ts";
import { startWorker, type RunningWorker } from "../../src/worker/worker_server.ts";
import { until } from "./helpers.ts";

const BLOCK = 16;
const MODEL = "tiny";

describe("KV routing across three mocker workers over HTTP/2", () => {
  let workers: RunningWorker[];
  let selector: KvSelector;
  let router: WorkerRouter;
  const registry = new Registry();

  beforeAll(async () => {
    workers = await Promise.all(
      [0, 1, 2].map((i) =>
        startWorker({
          engine: new MockerEngine({ blockSize: BLOCK, numGpuBlocks: 1024, speedupRatio: 100 }),
          engineName: "mocker",
          model: MODEL,
          workerId: `worker-${i}`,
        }),
      ),
    );
    selector = new KvSelector({ registry, loadPollIntervalMs: 200 });
    router = new WorkerRouter([{ name: MODEL, path: "", maxModelLen: 32768, blockSize: BLOCK }], selector);
    for (const w of workers) router.addWorker(await connectWorker(w.url));
    // Every worker's snapshot has arrived once the indexer is synced with all three.
    await until(() => workers.every((w) => selector.indexer.isSynced(w.workerId)));
  });

  afterAll(async () => {
    await router.close();
    await Promise.all(workers.map((w) => w.close()));
  });

  async function generate(requestId: string, tokenIds: number[]): Promise<GenerateResponse> {
    let last: GenerateResponse | undefined;
    const request = create(GenerateRequestSchema, { requestId, tokenIds, model: MODEL, sampling: { maxTokens: 4, ignoreEos: true } });
    for await (const response of router.generate(request, new AbortController().signal)) last = response;
    return last!;
  }

  /** Which worker's engine ran the request: the one whose prefix-cache queries grew. */
  function engineQueries(): number[] {
    return workers.map((w) => w.engine.stats().prefixCacheQueries);
  }

  it("sends a repeated prompt to the worker that cached it", async () => {
    const conversations = [0, 1, 2, 3, 4, 5].map((c) => Array.from({ length: 8 * BLOCK }, (_, i) => 10_000 * (c + 1) + i));
    // All first turns at once: the router's bookkeeping of requests in flight spreads them.
    const firsts = await Promise.all(conversations.map((prompt, c) => generate(`first-${c}`, prompt)));
    for (const first of firsts) expect(first.usage?.cachedTokens).toBe(0);
    const owner: number[] = [];
    for (const [c, prompt] of conversations.entries()) {
      // The workers' BlockStored events reach the router over their KvEvents streams.
      const hashes = blockHashes(prompt, BLOCK);
      await until(() => [...selector.indexer.findMatches(hashes).values()].some((blocks) => blocks >= 8));
      const holders = [...selector.indexer.findMatches(hashes).keys()];
      expect(holders).toHaveLength(1);
      owner[c] = workers.findIndex((w) => w.workerId === holders[0]);
    }
    expect(owner.filter((o) => o === 0)).toHaveLength(2);
    expect(owner.filter((o) => o === 1)).toHaveLength(2);
    for (const [c, prompt] of conversations.entries()) {
      const before = engineQueries();
      const followUp = await generate(`again-${c}`, [...prompt, 7, 7, 7, 7, 7]);
      const ran = engineQueries().findIndex((q, i) => q > before[i]);
      expect(ran).toBe(owner[c]);
      expect(followUp.usage?.cachedTokens).toBe(8 * BLOCK);
    }
    const metrics = await registry.metrics();
    expect(metrics).toMatch(/switchyard_router_decisions_total\{reason="kv_overlap"\} 6/);
  });
});
