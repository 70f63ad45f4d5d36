/**
 * The whole stack as a user meets it: `switchyard serve` (frontend, router, two mocker workers
 * over real Connect/HTTP/2) driven by the official OpenAI SDK.
 */
import OpenAI, { APIError } from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { serve, type ServeHandle } from "../../src/cli/serve.ts";

const MODEL = "switchyard-tiny-qwen3";

describe("OpenAI API through switchyard serve", () => {
  let server: ServeHandle;
  let client: OpenAI;
  beforeAll(async () => {
    // Simulated time at 10x: fast tests, yet slow enough to cancel a request mid-stream.
    server = await serve(["--port", "0", "--num-workers", "2", "--engine", "mocker", "--speedup-ratio", "10"]);
    client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
  });
  afterAll(() => server.stop());

  it("lists the served model", async () => {
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual([MODEL]);
  });

  it("answers a chat completion with usage", async () => {
    const reply = await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "Hello there" }], max_tokens: 12 });
    expect(reply.object).toBe("chat.completion");
    expect(reply.choices[0].message.role).toBe("assistant");
    expect(typeof reply.choices[0].message.content).toBe("string");
    expect(reply.choices[0].finish_reason).toBe("length");
    expect(reply.usage?.completion_tokens).toBe(12);
    expect(reply.usage?.prompt_tokens).toBeGreaterThan(3);
    expect(reply.usage?.total_tokens).toBe(reply.usage!.prompt_tokens + 12);
  });

  it("streams a chat completion, with usage last when asked", async () => {
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: "Stream please" }],
      max_tokens: 10,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let finish: string | null = null;
    let usage;
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices) {
        text += choice.delta.content ?? "";
        finish = choice.finish_reason ?? finish;
      }
    }
    expect(finish).toBe("length");
    expect(usage?.completion_tokens).toBe(10);
    expect(text.length).toBeGreaterThan(0);
  });

  it("gives the same text streamed and not streamed for the same seed", async () => {
    const body = { model: MODEL, prompt: "Once upon a time", max_tokens: 20, seed: 42 };
    const whole = await client.completions.create(body);
    const stream = await client.completions.create({ ...body, stream: true });
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.text ?? "";
    expect(text).toBe(whole.choices[0].text);
    expect(whole.usage?.completion_tokens).toBe(20);
  });

  it("answers n choices, choice k being what n = 1 gives for seed + k", async () => {
    const body = { model: MODEL, messages: [{ role: "user" as const, content: "Tell me three things" }], max_tokens: 8, temperature: 1 };
    const many = await client.chat.completions.create({ ...body, n: 3, seed: 100 });
    expect(many.choices.map((c) => c.index)).toEqual([0, 1, 2]);
    expect(many.usage?.completion_tokens).toBe(24);
    const alone = await Promise.all([100, 101, 102].map((seed) => client.chat.completions.create({ ...body, seed })));
    expect(many.choices.map((c) => c.message.content)).toEqual(alone.map((r) => r.choices[0].message.content));
    expect(new Set(many.choices.map((c) => c.message.content)).size).toBe(3);
    expect(many.usage?.prompt_tokens).toBe(alone[0].usage?.prompt_tokens);
  });

  it("answers a batch of prompts as it answers each prompt alone", async () => {
    const prompts = ["The first of two", "And the second"];
    const body = { model: MODEL, max_tokens: 6, seed: 9, temperature: 1 };
    const batch = await client.completions.create({ ...body, prompt: prompts });
    const alone = await Promise.all(prompts.map((prompt) => client.completions.create({ ...body, prompt })));
    expect(batch.choices.map((c) => c.text)).toEqual(alone.map((r) => r.choices[0].text));
    expect(batch.usage?.prompt_tokens).toBe(alone[0].usage!.prompt_tokens + alone[1].usage!.prompt_tokens);
    expect(batch.usage?.completion_tokens).toBe(12);
  });

  it("cuts the text before a stop string and never shows it", async () => {
    const body = { model: MODEL, prompt: "Count with me", max_tokens: 30, seed: 3 };
    const full = (await client.completions.create(body)).choices[0].text;
    // A stop string taken from the middle of what the model says for this seed.
    const stop = full.slice(Math.floor(full.length / 2), Math.floor(full.length / 2) + 3);
    expect(stop.length).toBe(3);
    const cut = await client.completions.create({ ...body, stop: [stop] });
    expect(cut.choices[0].finish_reason).toBe("stop");
    expect(cut.choices[0].text).toBe(full.slice(0, full.indexOf(stop)));
    const stream = await client.completions.create({ ...body, stop: [stop], stream: true });
    let streamed = "";
    for await (const chunk of stream) streamed += chunk.choices[0]?.text ?? "";
    expect(streamed).toBe(cut.choices[0].text);
  });

  it("accepts a prompt of token ids and echoes it", async () => {
    const reply = await client.completions.create({ model: MODEL, prompt: [9707, 11, 1879], max_tokens: 4, echo: true });
    expect(reply.choices[0].text.startsWith("Hello, world")).toBe(true);
  });

  it("answers a malformed body with 400 and an OpenAI error", async () => {
    const res = await fetch(`${server.url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: "{not json" });
    expect(res.status).toBe(400);
    const body = await res.json();
    expect(body.error).toMatchObject({ type: expect.any(String), message: expect.any(String) });

    const err = await client.chat.completions.create({ model: MODEL, messages: "hi" as never }).catch((e) => e);
    expect(err).toBeInstanceOf(APIError);
    expect(err.status).toBe(400);
  });

  it("answers an unknown model with 404", async () => {
    const err = await client.chat.completions.create({ model: "no-such-model", messages: [{ role: "user", content: "x" }] }).catch((e) => e);
    expect(err).toBeInstanceOf(APIError);
    expect(err.status).toBe(404);
  });

  it("answers a prompt longer than the context with 400", async () => {
    const err = await client.completions.create({ model: MODEL, prompt: Array.from({ length: 5000 }, () => 100), max_tokens: 4 }).catch((e) => e);
    expect(err).toBeInstanceOf(APIError);
    expect(err.status).toBe(400);
  });

  it("cancels the request on the worker when the client aborts the stream", async () => {
    const blocksBefore = server.workers.map((w) => w.engine.stats().kvBlocksUsed);
    const abort = new AbortController();
    const stream = await client.completions.create(
      { model: MODEL, prompt: "a long answer please ".repeat(20), max_tokens: 3000, stream: true, ignore_eos: true } as never,
      { signal: abort.signal },
    );
    const running = () => server.workers.reduce((n, w) => n + w.engine.stats().runningRequests, 0);
    let chunks = 0;
    let runningWhenAborted = 0;
    for await (const _ of stream as unknown as AsyncIterable<unknown>) {
      if (++chunks === 3) {
        runningWhenAborted = running();
        abort.abort();
        break;
      }
    }
    expect(runningWhenAborted).toBe(1);
    await expect.poll(running, { timeout: 5000 }).toBe(0);
    expect(server.workers.map((w) => w.engine.stats().kvBlocksUsed)).toEqual(blocksBefore);
  });

  it("serves health, liveness and metrics", async () => {
    expect((await fetch(`${server.url}/health`)).status).toBe(200);
    expect((await fetch(`${server.url}/live`)).status).toBe(200);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toContain("switchyard_frontend_");
  });
});
