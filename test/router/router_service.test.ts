import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { afterEach, describe, expect, it } from "vitest";
import { RouterService } from "../../gen/switchyard/router/v1/router_pb.ts";
import { KvSelector } from "../../src/router/kv/kv_selector.ts";
import { createRouterService } from "../../src/router/kv/router_service.ts";
import { SharedRouter } from "../../src/router/kv/shared_router.ts";
import { FakeWorker, tokens } from "./helpers.ts";

const routers: SharedRouter[] = [];
afterEach(async () => {
  await Promise.all(routers.splice(0).map((r) => r.close()));
});

function setup(options: { busyThreshold?: number; now?: () => number } = {}) {
  const selector = new KvSelector({ useKvEvents: false, loadPollIntervalMs: 0, busyThreshold: options.busyThreshold, random: () => 0 });
  const router = new SharedRouter(selector, { requestLeaseMs: 60_000, now: options.now });
  routers.push(router);
  const workers = [new FakeWorker("a", { model: "m1" }), new FakeWorker("b", { model: "m1" }), new FakeWorker("c", { model: "m2" })];
  for (const w of workers) router.addWorker(w.handle);
  const transport = createRouterTransport(({ service }) => service(RouterService, createRouterService(router)));
  // Two frontends sharing the router's view.
  return { router, workers, frontendA: createClient(RouterService, transport), frontendB: createClient(RouterService, transport) };
}

async function connectCode(promise: Promise<unknown>): Promise<Code | undefined> {
  try {
    await promise;
  } catch (err) {
    return ConnectError.from(err).code;
  }
  return undefined;
}

describe("RouterService", () => {
  it("sends a prompt one frontend routed to the same worker when another frontend asks", async () => {
    const { frontendA, frontendB } = setup();
    const prompt = tokens(64);
    const first = await frontendA.findBestWorker({ requestId: "1", tokenIds: prompt, model: "m1" });
    expect(first).toMatchObject({ overlapBlocks: 0, reason: "load", blockSize: 4 });
    expect(first.workerUrl).toBe(`http://fake/${first.workerId}`);
    const second = await frontendB.findBestWorker({ requestId: "2", tokenIds: [...prompt, 5], model: "m1" });
    expect(second).toMatchObject({ workerId: first.workerId, overlapBlocks: 16, reason: "kv_overlap" });
  });

  it("keeps only workers of the requested model", async () => {
    const { frontendA } = setup();
    for (let i = 0; i < 4; i++) {
      expect((await frontendA.findBestWorker({ requestId: `r${i}`, tokenIds: tokens(8, i * 100), model: "m2" })).workerId).toBe("c");
    }
    expect(await connectCode(frontendA.findBestWorker({ requestId: "x", tokenIds: [1], model: "nope" }))).toBe(Code.NotFound);
  });

  it("counts a request as load until MarkFinished", async () => {
    const { frontendA, router } = setup();
    const routed = await frontendA.findBestWorker({ requestId: "1", tokenIds: tokens(40), model: "m1" });
    let state = await frontendA.listWorkers({});
    expect(state.workers.find((w) => w.workerId === routed.workerId)).toMatchObject({ activeRequests: 1, activeBlocks: 10, cachedBlocks: 10 });
    expect((await frontendA.markFinished({ requestId: "1" })).found).toBe(true);
    expect((await frontendA.markFinished({ requestId: "1" })).found).toBe(false);
    state = await frontendA.listWorkers({});
    expect(state.workers.find((w) => w.workerId === routed.workerId)).toMatchObject({ activeRequests: 0, activeBlocks: 0 });
    expect(router.isRunning("1")).toBe(false);
  });

  it("counts a request finished once its lease runs out", async () => {
    let nowMs = 0;
    const { frontendA, router } = setup({ now: () => nowMs });
    await frontendA.findBestWorker({ requestId: "lost", tokenIds: tokens(8), model: "m1" });
    nowMs += 60_001;
    await frontendA.findBestWorker({ requestId: "next", tokenIds: tokens(8, 50), model: "m1" });
    expect(router.isRunning("lost")).toBe(false);
    expect(router.isRunning("next")).toBe(true);
  });

  it("answers with precise codes, and Retry-After when every worker is busy", async () => {
    const { frontendA, workers } = setup({ busyThreshold: 0.5 });
    expect(await connectCode(frontendA.findBestWorker({ requestId: "", tokenIds: [1], model: "m1" }))).toBe(Code.InvalidArgument);
    expect(await connectCode(frontendA.findBestWorker({ requestId: "a", tokenIds: [], model: "m1" }))).toBe(Code.InvalidArgument);
    await frontendA.findBestWorker({ requestId: "dup", tokenIds: [1], model: "m1" });
    expect(await connectCode(frontendA.findBestWorker({ requestId: "dup", tokenIds: [1], model: "m1" }))).toBe(Code.AlreadyExists);
    for (const w of workers) w.setLoad({ kvBlocksUsed: 9, kvBlocksTotal: 10 });
    try {
      await frontendA.findBestWorker({ requestId: "busy", tokenIds: [1], model: "m1" });
      expect.unreachable();
    } catch (err) {
      const error = ConnectError.from(err);
      expect(error.code).toBe(Code.ResourceExhausted);
      expect(error.metadata.get("retry-after")).toBe("1");
    }
  });

  it("answers Unavailable with no live worker", async () => {
    const router = new SharedRouter(new KvSelector({ loadPollIntervalMs: 0 }));
    routers.push(router);
    const client = createClient(RouterService, createRouterTransport(({ service }) => service(RouterService, createRouterService(router))));
    expect(await connectCode(client.findBestWorker({ requestId: "a", tokenIds: [1] }))).toBe(Code.Unavailable);
  });
});
