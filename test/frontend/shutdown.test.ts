import OpenAI from "openai";
import { Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { startFrontend } from "../../src/frontend/server.ts";
import { tokenizerFor } from "../../src/frontend/tokenizer.ts";
import { FakeRouter, MODEL, QWEN3_DIR, replyThenHang, replyTokens } from "./fake_router.ts";

const encode = (text: string) => tokenizerFor(QWEN3_DIR).encode(text, false);

describe("frontend lifecycle", () => {
  it("cuts streams still running after the grace period and cancels them on the worker", async () => {
    const router = new FakeRouter();
    router.script = replyThenHang(encode("a never ending story"));
    const frontend = await startFrontend({ port: 0, router });
    const client = new OpenAI({ baseURL: `${frontend.url}/v1`, apiKey: "unused", maxRetries: 0 });
    const stream = await client.completions.create({ model: MODEL, prompt: "x", stream: true });
    const reading = (async () => {
      for await (const _ of stream);
    })().catch((err: Error) => err);

    await frontend.close(0);
    await router.aborted(router.lastRequest.requestId);
    await reading;
    await expect(fetch(`${frontend.url}/live`)).rejects.toThrow();
  });

  it("keeps the metrics of two frontends in one process apart", async () => {
    const routers = [new FakeRouter(), new FakeRouter()];
    const frontends = await Promise.all(routers.map((router) => startFrontend({ port: 0, router, metricsRegistry: new Registry() })));
    try {
      routers[0].script = replyTokens(encode("hi"));
      const client = new OpenAI({ baseURL: `${frontends[0].url}/v1`, apiKey: "unused", maxRetries: 0 });
      await client.completions.create({ model: MODEL, prompt: "x" });
      const [first, second] = await Promise.all(frontends.map(async (f) => (await fetch(`${f.url}/metrics`)).text()));
      expect(first).toContain('switchyard_frontend_requests_total{model="test-qwen3",endpoint="completions",status="200"} 1');
      expect(second).not.toContain('status="200"');
    } finally {
      await Promise.all(frontends.map((f) => f.close()));
    }
  });
});
