/**
 * The default stack as `npm start` runs it: switchyard serve with the native engine on the
 * default tiny model, through the OpenAI SDK.
 */
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { serve, type ServeHandle } from "../../src/cli/serve.ts";

const MODEL = "switchyard-tiny-qwen3";

describe("switchyard serve with the native engine", () => {
  let server: ServeHandle;
  let client: OpenAI;
  beforeAll(async () => {
    server = await serve(["--port", "0", "--kv-cache-memory", String(64 << 20)]);
    client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
  });
  afterAll(() => server.stop());

  it("runs the native engine by default", async () => {
    const health = (await (await fetch(`${server.url}/health`)).json()) as { models: { name: string }[] };
    expect(health.models.map((m) => m.name)).toEqual([MODEL]);
    expect(server.workers[0].engine.constructor.name).toBe("NativeEngine");
  });

  it("gives the same greedy text streamed and not streamed", async () => {
    const body = { model: MODEL, prompt: "The switchyard at dawn", max_tokens: 24, temperature: 0 };
    const whole = await client.completions.create(body);
    const stream = await client.completions.create({ ...body, stream: true });
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.text ?? "";
    expect(text).toBe(whole.choices[0].text);
    expect(whole.usage?.completion_tokens).toBeGreaterThan(0);
  });

  it("answers a chat with the same seed the same way, and reports a prefix-cache hit", async () => {
    const system = "You are a dispatcher for a large rail yard. ".repeat(8);
    const ask = () =>
      client.chat.completions.create({
        model: MODEL,
        messages: [{ role: "system", content: system }, { role: "user", content: "Which track for the coal train?" }],
        max_tokens: 16,
        seed: 11,
        temperature: 0.8,
      });
    const first = await ask();
    const second = await ask();
    expect(second.choices[0].message.content).toBe(first.choices[0].message.content);
    const cached = (second.usage as { prompt_tokens_details?: { cached_tokens?: number } }).prompt_tokens_details?.cached_tokens ?? 0;
    expect(cached).toBeGreaterThanOrEqual(64);
  });

  it("rejects a prompt longer than the context with 400", async () => {
    const err = await client.completions.create({ model: MODEL, prompt: Array.from({ length: 5000 }, () => 100), max_tokens: 4 }).catch((e) => e);
    expect(err.status).toBe(400);
  });
});
