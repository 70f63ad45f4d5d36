/**
 * Disaggregated serving as a user runs it: `switchyard serve --num-prefill-workers 1` puts a
 * prefill worker and a decode worker behind the frontend; prompts are prefilled on one, their
 * KV moves to the other through the transfer agents, and the answers are those of an
 * aggregated server, token for token.
 */
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { serve, type ServeHandle } from "../../src/cli/serve.ts";

const MODEL = "switchyard-tiny-qwen3";
const CACHE = ["--device", "cpu", "--kv-cache-memory", String(32 << 20)];

/** Token-id prompts of lengths around and across block boundaries (block size 16). */
const PROMPTS = [3, 16, 17, 45, 130].map((length, p) => Array.from({ length }, (_, i) => 1000 + ((i * 37 + p * 101) % 5000)));

describe("disaggregated serving with the native engine", () => {
  let agg: ServeHandle;
  let disagg: ServeHandle;
  let aggClient: OpenAI;
  let disaggClient: OpenAI;
  beforeAll(async () => {
    agg = await serve(["--port", "0", ...CACHE]);
    disagg = await serve(["--port", "0", ...CACHE, "--num-prefill-workers", "1"]);
    aggClient = new OpenAI({ baseURL: `${agg.url}/v1`, apiKey: "unused", maxRetries: 0 });
    disaggClient = new OpenAI({ baseURL: `${disagg.url}/v1`, apiKey: "unused", maxRetries: 0 });
  });
  afterAll(async () => {
    await agg?.stop();
    await disagg?.stop();
  });

  const prefillWorker = () => disagg.workers.find((w) => w.workerId === "prefill-0")!;
  const decodeWorker = () => disagg.workers.find((w) => w.workerId === "decode-0")!;

  it("runs a prefill worker and a decode worker", async () => {
    expect(disagg.workers.map((w) => w.workerId)).toEqual(["prefill-0", "decode-0"]);
    const health = (await (await fetch(`${disagg.url}/health`)).json()) as { instances: unknown[] };
    expect(health.instances).toHaveLength(2);
  });

  it("gives the greedy tokens of an aggregated server, with the same usage", async () => {
    const prefillBefore = prefillWorker().engine.stats().prefixCacheQueries;
    const fetches: string[] = [];
    const unsubscribe = decodeWorker().disaggregation!.events.subscribe((e) => fetches.push(e.type));
    for (const prompt of PROMPTS) {
      const body = { model: MODEL, prompt, max_tokens: 20, temperature: 0, logprobs: 1 };
      const [a, d] = await Promise.all([aggClient.completions.create(body), disaggClient.completions.create(body)]);
      expect(d.choices[0].text, `prompt of ${prompt.length} tokens`).toBe(a.choices[0].text);
      expect(d.choices[0].logprobs?.tokens).toEqual(a.choices[0].logprobs?.tokens);
      expect(d.choices[0].finish_reason).toBe(a.choices[0].finish_reason);
      expect(d.usage?.prompt_tokens).toBe(a.usage?.prompt_tokens);
      expect(d.usage?.completion_tokens).toBe(a.usage?.completion_tokens);
    }
    unsubscribe();
    // The prompts really went through the prefill worker, their KV was read, not recomputed,
    // and the prefill worker let go of it.
    expect(fetches).toEqual(Array(PROMPTS.length).fill("fetched"));
    expect(prefillWorker().engine.stats().prefixCacheQueries).toBeGreaterThan(prefillBefore);
    await expect.poll(() => prefillWorker().engine.kvTransfer!.heldRequests().length).toBe(0);
    expect(prefillWorker().disaggregation!.bytesServed).toBeGreaterThan(0);
  });

  it("streams the same text it returns whole, first token from the prefill worker included", async () => {
    const body = { model: MODEL, prompt: PROMPTS[3], max_tokens: 12, temperature: 0 };
    const whole = await disaggClient.completions.create(body);
    const stream = await disaggClient.completions.create({ ...body, stream: true, stream_options: { include_usage: true } });
    let text = "";
    let completionTokens: number | undefined;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.text ?? "";
      if (chunk.usage) completionTokens = chunk.usage.completion_tokens;
    }
    expect(text).toBe(whole.choices[0].text);
    expect(completionTokens).toBe(12);
  });

  it("frees both workers' blocks when the client leaves mid-stream", async () => {
    const decodeBaseline = decodeWorker().engine.stats().runningRequests;
    const controller = new AbortController();
    const stream = await disaggClient.completions.create(
      { model: MODEL, prompt: PROMPTS[4], max_tokens: 400, temperature: 0, ignore_eos: true, stream: true } as OpenAI.CompletionCreateParamsStreaming,
      { signal: controller.signal },
    );
    let chunks = 0;
    try {
      for await (const _ of stream) if (++chunks === 3) controller.abort();
    } catch {
      // the abort ends the iteration
    }
    await expect.poll(() => decodeWorker().engine.stats().runningRequests, { timeout: 5000 }).toBe(decodeBaseline);
    await expect.poll(() => decodeWorker().state.inFlight, { timeout: 5000 }).toBe(0);
    await expect.poll(() => prefillWorker().engine.kvTransfer!.heldRequests().length, { timeout: 5000 }).toBe(0);
  });

  it("frees the prefill worker's blocks at once when the decode worker refuses the request", async () => {
    decodeWorker().state.draining = true;
    try {
      const err = await disaggClient.completions.create({ model: MODEL, prompt: PROMPTS[3], max_tokens: 8, temperature: 0 }).catch((e) => e);
      expect(err.status).toBe(503);
    } finally {
      decodeWorker().state.draining = false;
    }
    // Well inside the 30 s transfer timeout: the router told the prefill worker to let go.
    await expect.poll(() => prefillWorker().engine.kvTransfer!.heldRequests().length, { timeout: 3000 }).toBe(0);
  });

  it("prefills a one-token request on the decode worker and still answers it", async () => {
    const body = { model: MODEL, prompt: PROMPTS[2], max_tokens: 1, temperature: 0 };
    const [a, d] = await Promise.all([aggClient.completions.create(body), disaggClient.completions.create(body)]);
    expect(d.choices[0].text).toBe(a.choices[0].text);
    expect(d.usage?.completion_tokens).toBe(1);
  });

  // Last: it stops the prefill worker for good.
  it("prefills on the decode worker when the prefill worker is gone, with the same answer", async () => {
    const body = { model: MODEL, prompt: PROMPTS[4].slice(0, 90), max_tokens: 10, temperature: 0 };
    const expected = await aggClient.completions.create(body);
    await prefillWorker().close();
    const answer = await disaggClient.completions.create(body);
    expect(answer.choices[0].text).toBe(expected.choices[0].text);
    expect(answer.usage?.completion_tokens).toBe(10);
  });
});
