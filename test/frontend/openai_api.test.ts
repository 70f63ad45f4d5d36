/**
 * The frontend through the official OpenAI SDK: a real HTTP server on port 0 in front of a
 * scripted in-process router, so every answer's tokens are known in advance.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import OpenAI, { APIError } from "openai";
import { Registry } from "prom-client";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { FinishReason, type TokenLogprobs } from "../../gen/switchyard/worker/v1/worker_pb.ts";
import { startFrontend, type RunningFrontend } from "../../src/frontend/server.ts";
import { tokenizerFor } from "../../src/frontend/tokenizer.ts";
import { RouterError } from "../../src/router/router.ts";
import { singleByteTokens } from "./byte_tokens.ts";
import { FakeRouter, MODEL, QWEN3_DIR, replyThenHang, replyThenThrow, replyTokens, type Script } from "./fake_router.ts";

const tokenizer = tokenizerFor(QWEN3_DIR);
const IM_END = tokenizer.tokenId("<|im_end|>")!;
const encode = (text: string) => tokenizer.encode(text, false);

describe("OpenAI frontend", () => {
  const router = new FakeRouter();
  let frontend: RunningFrontend;
  let client: OpenAI;

  beforeAll(async () => {
    frontend = await startFrontend({ port: 0, router, metricsRegistry: new Registry(), maxBodyBytes: 64 * 1024 });
    client = new OpenAI({ baseURL: `${frontend.url}/v1`, apiKey: "unused", maxRetries: 0 });
  });
  afterAll(() => frontend.close());
  beforeEach(() => {
    router.cards = [{ name: MODEL, path: QWEN3_DIR, maxModelLen: 256, blockSize: 16 }];
    router.refuse = undefined;
  });

  async function post(path: string, body: string): Promise<{ status: number; headers: Headers; json: any }> {
    const res = await fetch(`${frontend.url}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body });
    return { status: res.status, headers: res.headers, json: await res.json() };
  }

  describe("chat completions", () => {
    it("renders the messages with the chat template and answers with the worker's tokens as text", async () => {
      router.script = replyTokens([...encode("Hello there, friend!"), IM_END], { finish: FinishReason.STOP, cachedTokens: 16 });
      const reply = await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "Hi" }] });

      expect(tokenizer.decode(router.lastRequest.tokenIds, false)).toBe("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
      expect(reply.id).toMatch(/^chatcmpl-/);
      expect(reply.object).toBe("chat.completion");
      expect(reply.model).toBe(MODEL);
      expect(reply.choices).toEqual([{ index: 0, message: { role: "assistant", content: "Hello there, friend!", refusal: null }, logprobs: null, finish_reason: "stop" }]);
      const promptTokens = router.lastRequest.tokenIds.length;
      expect(reply.usage).toEqual({
        prompt_tokens: promptTokens,
        completion_tokens: encode("Hello there, friend!").length + 1,
        total_tokens: promptTokens + encode("Hello there, friend!").length + 1,
        prompt_tokens_details: { cached_tokens: 16 },
      });
    });

    it("asks the worker for the room left in the context when max_tokens is unset, and stops on eos", async () => {
      router.script = replyTokens([IM_END], { finish: FinishReason.STOP });
      await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "Hi" }] });
      const sampling = router.lastRequest.sampling!;
      expect(sampling.maxTokens).toBe(256 - router.lastRequest.tokenIds.length);
      expect(sampling.stopTokenIds).toContain(IM_END);
      expect(router.lastRequest.model).toBe(MODEL);
      expect(router.lastRequest.requestId).toMatch(/^[0-9a-f-]{36}$/);
    });

    it("passes sampling parameters and vLLM extras to the worker", async () => {
      router.script = replyTokens(encode("ok"));
      await client.chat.completions.create({
        model: MODEL,
        messages: [{ role: "user", content: "Hi" }],
        max_completion_tokens: 7,
        temperature: 0.5,
        top_p: 0.9,
        seed: 42,
        presence_penalty: 0.25,
        top_k: 5,
        min_p: 0.1,
        repetition_penalty: 1.1,
        min_tokens: 2,
        stop_token_ids: [7],
        ignore_eos: true,
      } as never);
      const sampling = router.lastRequest.sampling!;
      expect(sampling).toMatchObject({ maxTokens: 7, topK: 5, seed: 42n, minTokens: 2, stopTokenIds: [7], ignoreEos: true, presencePenalty: 0.25 });
      expect(sampling.temperature).toBeCloseTo(0.5);
      expect(sampling.minP).toBeCloseTo(0.1);
      expect(sampling.repetitionPenalty).toBeCloseTo(1.1);
    });

    it("streams the assistant role first, then content deltas, and usage last when asked", async () => {
      const text = "Streaming is fun.";
      router.script = replyTokens([...encode(text), IM_END], { finish: FinishReason.STOP });
      const stream = await client.chat.completions.create({
        model: MODEL,
        messages: [{ role: "user", content: "Go" }],
        stream: true,
        stream_options: { include_usage: true },
      });
      const chunks: OpenAI.ChatCompletionChunk[] = [];
      for await (const chunk of stream) chunks.push(chunk);

      expect(chunks[0].choices[0].delta).toEqual({ role: "assistant", content: "" });
      expect(chunks.every((c) => c.id === chunks[0].id && c.object === "chat.completion.chunk")).toBe(true);
      expect(chunks.map((c) => c.choices[0]?.delta.content ?? "").join("")).toBe(text);
      const finishes = chunks.flatMap((c) => c.choices.map((ch) => ch.finish_reason)).filter((f) => f !== null);
      expect(finishes).toEqual(["stop"]);
      const last = chunks[chunks.length - 1];
      expect(last.choices).toEqual([]);
      expect(last.usage).toMatchObject({ completion_tokens: encode(text).length + 1, prompt_tokens: router.lastRequest.tokenIds.length });
      expect(chunks.slice(0, -1).every((c) => c.usage === null)).toBe(true);
    });

    it("returns logprobs in the chat format", async () => {
      const ids = encode("Hi you");
      router.script = replyTokens(ids, { logprobs: logprobsOf });
      const reply = await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "x" }], logprobs: true, top_logprobs: 2 });

      expect(router.lastRequest.sampling!.logprobs).toBe(2);
      const content = reply.choices[0].logprobs!.content!;
      expect(content.map((c) => c.token)).toEqual(["Hi", " you"]);
      expect(content[1]).toEqual({
        token: " you",
        logprob: -0.5,
        bytes: Array.from(Buffer.from(" you")),
        top_logprobs: [
          { token: " you", logprob: -0.5, bytes: Array.from(Buffer.from(" you")) },
          { token: "!", logprob: -1.5, bytes: [33] },
        ],
      });
    });
  });

  describe("completions", () => {
    it("answers a text prompt with text, finish reason and usage", async () => {
      const text = " jumped over the fence";
      router.script = replyTokens(encode(text));
      const reply = await client.completions.create({ model: MODEL, prompt: "The cow", max_tokens: 5 });

      expect(router.lastRequest.tokenIds).toEqual(encode("The cow"));
      expect(router.lastRequest.sampling!.maxTokens).toBe(5);
      expect(reply.id).toMatch(/^cmpl-/);
      expect(reply.object).toBe("text_completion");
      expect(reply.choices).toEqual([{ index: 0, text, logprobs: null, finish_reason: "length" }]);
      expect(reply.usage).toMatchObject({ prompt_tokens: 2, completion_tokens: encode(text).length, total_tokens: 2 + encode(text).length });
    });

    it("streams text chunks that add up to the whole text, without a usage chunk unless asked", async () => {
      const text = " and then, suddenly, nothing.";
      router.script = replyTokens(encode(text));
      const stream = await client.completions.create({ model: MODEL, prompt: "It rained", stream: true });
      const chunks: OpenAI.Completion[] = [];
      for await (const chunk of stream) chunks.push(chunk);
      expect(chunks.map((c) => c.choices[0].text).join("")).toBe(text);
      expect(chunks.every((c) => c.object === "text_completion" && c.usage === undefined)).toBe(true);
      expect(chunks[chunks.length - 1].choices[0].finish_reason).toBe("length");
    });

    it("accepts token-id prompts and echoes the prompt before the completion", async () => {
      router.script = replyTokens(encode(" there"));
      const reply = await client.completions.create({ model: MODEL, prompt: [encode("Hello")], max_tokens: 1, echo: true });
      expect(router.lastRequest.tokenIds).toEqual(encode("Hello"));
      expect(reply.choices[0].text).toBe("Hello there");
    });

    it("returns logprobs in the completions format, tokens as token ids when asked", async () => {
      const ids = encode("Hi you");
      router.script = replyTokens(ids, { logprobs: logprobsOf });
      const reply = await client.completions.create({ model: MODEL, prompt: "x", logprobs: 1 });
      expect(reply.choices[0].logprobs).toEqual({
        tokens: ["Hi", " you"],
        token_logprobs: [-0.5, -0.5],
        top_logprobs: [{ Hi: -0.5 }, { " you": -0.5 }],
        text_offset: [0, 2],
      });

      router.script = replyTokens(ids, { logprobs: logprobsOf });
      const asIds = await client.completions.create({ model: MODEL, prompt: "x", logprobs: 0, return_tokens_as_token_ids: true } as never);
      expect(asIds.choices[0].logprobs!.tokens).toEqual(ids.map((id) => `token_id:${id}`));
    });
  });

  describe("stop strings", () => {
    const text = "The quick brown fox jumps over the lazy dog";

    it("cuts the text before a stop string that spans tokens, streamed or not, and cancels the worker", async () => {
      // " brown" and " fox" are separate tokens; the stop string starts inside one and ends in the other.
      expect(encode(text).map((id) => tokenizer.decode([id], false))).toContain(" fox");
      router.script = replyThenHang(encode(text));
      const whole = await client.completions.create({ model: MODEL, prompt: "x", stop: "own fo" });
      expect(whole.choices[0]).toMatchObject({ text: "The quick br", finish_reason: "stop" });
      await router.aborted(router.lastRequest.requestId);

      const stream = await client.completions.create({ model: MODEL, prompt: "x", stop: ["nothing", "own fo"], stream: true });
      const pieces = [];
      let finish;
      for await (const chunk of stream) {
        pieces.push(chunk.choices[0].text);
        finish = chunk.choices[0].finish_reason ?? finish;
      }
      // Concatenated, so any leaked piece of the stop string would show.
      expect(pieces.join("")).toBe("The quick br");
      expect(finish).toBe("stop");
      await router.aborted(router.lastRequest.requestId);
    });

    it("releases text held back for a stop string that never completes", async () => {
      router.script = replyTokens(encode(text));
      const reply = await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "x" }], stop: ["lazy cat", "dog!"] });
      expect(reply.choices[0]).toMatchObject({ message: { content: text }, finish_reason: "length" });
    });

    it("counts only the tokens up to the stop in usage", async () => {
      router.script = replyThenHang(encode(text));
      const reply = await client.completions.create({ model: MODEL, prompt: "x", stop: "quick" });
      expect(reply.choices[0].text).toBe("The ");
      expect(reply.usage!.completion_tokens).toBe(2);
    });
  });

  it("streams multi-byte characters split across tokens as whole characters", async () => {
    const text = "Grüße, 你好 😀";
    router.script = replyTokens(singleByteTokens(tokenizer, text));
    const stream = await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "x" }], stream: true });
    const deltas: string[] = [];
    for await (const chunk of stream) deltas.push(chunk.choices[0]?.delta.content ?? "");
    expect(deltas.join("")).toBe(text);
    expect(deltas.some((d) => d.includes("\uFFFD"))).toBe(false);
    expect(deltas).toContain("😀");
  });

  it("aborts the router's signal when the client goes away mid-stream", async () => {
    router.script = replyThenHang(encode("one two three four five six"));
    const abort = new AbortController();
    const stream = await client.completions.create({ model: MODEL, prompt: "x", stream: true }, { signal: abort.signal });
    let chunks = 0;
    for await (const _ of stream) {
      if (++chunks === 3) {
        abort.abort();
        break;
      }
    }
    // The worker is still generating: only the dropped connection can have aborted it.
    await router.aborted(router.lastRequest.requestId);
  });

  it("ends a stream with an SSE error event when the worker fails mid-stream", async () => {
    router.script = replyThenThrow(encode("partial answer"), new ConnectError("engine exploded", Code.Internal));
    const res = await fetch(`${frontend.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: MODEL, prompt: "x", stream: true }),
    });
    expect(res.status).toBe(200);
    const body = await res.text();
    const events = body.split("\n\n").filter(Boolean);
    const last = JSON.parse(events[events.length - 1].slice("data: ".length));
    expect(last.error).toMatchObject({ type: "server_error", message: expect.stringContaining("engine exploded") });
    expect(body).not.toContain("[DONE]");

    router.script = replyThenThrow(encode("partial"), new ConnectError("engine exploded", Code.Internal));
    const stream = await client.completions.create({ model: MODEL, prompt: "x", stream: true });
    await expect((async () => { for await (const _ of stream); })()).rejects.toThrow(/engine exploded/);
  });

  describe("n choices", () => {
    // Each choice's worker request answers with text naming its seed, so the choices differ.
    const bySeed: Script = (request, signal) => replyTokens(encode(` seed ${request.sampling?.seed}.`), { finish: FinishReason.LENGTH })(request, signal);

    it("sends one worker request per choice, each with its own id and seed + index, and counts the prompt once", async () => {
      router.script = bySeed;
      const before = router.requests.length;
      const reply = await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "Hi" }], n: 3, seed: 40, max_tokens: 5 });

      const sent = router.requests.slice(before);
      expect(sent.map((r) => r.sampling?.seed)).toEqual([40n, 41n, 42n]);
      expect(sent.map((r) => r.requestId)).toEqual([0, 1, 2].map((i) => `${sent[0].requestId.slice(0, -2)}-${i}`));
      expect(new Set(sent.map((r) => r.tokenIds.join(","))).size).toBe(1);
      expect(reply.choices.map((c) => [c.index, c.message.content, c.finish_reason])).toEqual([
        [0, " seed 40.", "length"],
        [1, " seed 41.", "length"],
        [2, " seed 42.", "length"],
      ]);
      const perChoice = encode(" seed 40.").length;
      expect(reply.usage).toMatchObject({ prompt_tokens: sent[0].tokenIds.length, completion_tokens: 3 * perChoice, total_tokens: sent[0].tokenIds.length + 3 * perChoice });
    });

    it("streams every choice's chunks under its index, each to its finish, then one usage", async () => {
      router.script = bySeed;
      const stream = await client.completions.create({ model: MODEL, prompt: "Hi", n: 2, seed: 7, max_tokens: 5, stream: true, stream_options: { include_usage: true } });
      const texts = ["", ""];
      const finishes: (string | null)[] = [null, null];
      let usage;
      for await (const chunk of stream) {
        if (chunk.usage) usage = chunk.usage;
        for (const c of chunk.choices) {
          texts[c.index] += c.text;
          finishes[c.index] = c.finish_reason ?? finishes[c.index];
        }
      }
      expect(texts).toEqual([" seed 7.", " seed 8."]);
      expect(finishes).toEqual(["length", "length"]);
      expect(usage?.completion_tokens).toBe(2 * encode(" seed 7.").length);
    });

    it("answers a batch of prompts with n choices each, numbered prompt by prompt, each prompt counted once", async () => {
      router.script = bySeed;
      const before = router.requests.length;
      const reply = await client.completions.create({ model: MODEL, prompt: ["first prompt", "the second prompt"], n: 2, seed: 5, max_tokens: 5 });
      const sent = router.requests.slice(before);
      expect(sent.map((r) => [tokenizer.decode(r.tokenIds, false), r.sampling?.seed])).toEqual([
        ["first prompt", 5n],
        ["first prompt", 6n],
        ["the second prompt", 5n],
        ["the second prompt", 6n],
      ]);
      expect(reply.choices.map((c) => [c.index, c.text])).toEqual([
        [0, " seed 5."],
        [1, " seed 6."],
        [2, " seed 5."],
        [3, " seed 6."],
      ]);
      expect(reply.usage?.prompt_tokens).toBe(sent[0].tokenIds.length + sent[2].tokenIds.length);
      expect(reply.usage?.completion_tokens).toBe(4 * encode(" seed 5.").length);
    });

    it("ends the whole stream with an error event when one choice fails, and cancels the others", async () => {
      const failure = new ConnectError("worker lost", Code.Internal);
      router.script = (request, signal) => (request.sampling?.seed === 1n ? replyThenThrow(encode("a"), failure) : replyThenHang(encode("b")))(request, signal);
      const before = router.requests.length;
      const res = await fetch(`${frontend.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: MODEL, prompt: "Hi", n: 2, seed: 0, max_tokens: 5, stream: true }),
      });
      expect(res.status).toBe(200);
      const text = await res.text();
      expect(text).toMatch(/data: \{"error":/);
      expect(text).not.toContain("[DONE]");
      await router.aborted(router.requests[before].requestId);
    });
  });

  describe("errors", () => {
    it("answers a body that is not JSON with 400 in OpenAI's error shape", async () => {
      const res = await post("/v1/chat/completions", "{not json");
      expect(res.status).toBe(400);
      expect(res.json).toEqual({ error: { message: expect.stringContaining("not valid JSON"), type: "invalid_request_error", param: null, code: "invalid_json" } });
    });

    it("answers a field of the wrong type with 400 naming the field", async () => {
      const err = await client.chat.completions.create({ model: MODEL, messages: "hi" as never }).catch((e) => e);
      expect(err).toBeInstanceOf(APIError);
      expect(err.status).toBe(400);
      expect(err.message).toContain("messages");

      const res = await post("/v1/completions", JSON.stringify({ model: MODEL, prompt: "x", temperature: "hot" }));
      expect(res.status).toBe(400);
      expect(res.json.error.param).toBe("temperature");
    });

    it("refuses n outside 1..128, and more than 128 choices in all, with a clear 400", async () => {
      for (const n of [0, 129]) {
        const res = await post("/v1/chat/completions", JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "x" }], n }));
        expect(res.status).toBe(400);
        expect(res.json.error.param).toBe("n");
      }
      const many = await post("/v1/completions", JSON.stringify({ model: MODEL, prompt: Array(65).fill("a"), n: 2 }));
      expect(many.status).toBe(400);
      expect(many.json.error.message).toContain("at most 128 choices");
      const empty = await post("/v1/completions", JSON.stringify({ model: MODEL, prompt: ["a", []] }));
      expect(empty.status).toBe(400);
      expect(empty.json.error.param).toBe("prompt");
    });

    it("refuses a JSON response_format and a non-empty logit_bias instead of ignoring them", async () => {
      router.script = replyTokens(encode("ok"));
      const messages = [{ role: "user", content: "x" }];
      const json = await post("/v1/chat/completions", JSON.stringify({ model: MODEL, messages, response_format: { type: "json_object" } }));
      expect(json.status).toBe(400);
      expect(json.json.error.param).toBe("response_format");
      expect(json.json.error.message).toContain("guided decoding");
      const bias = await post("/v1/completions", JSON.stringify({ model: MODEL, prompt: "x", logit_bias: { "50256": -100 } }));
      expect(bias.status).toBe(400);
      expect(bias.json.error.param).toBe("logit_bias");
      const fine = await post("/v1/chat/completions", JSON.stringify({ model: MODEL, messages, response_format: { type: "text" }, logit_bias: {} }));
      expect(fine.status).toBe(200);
    });

    it("answers an unknown model with 404", async () => {
      const err = await client.chat.completions.create({ model: "no-such-model", messages: [{ role: "user", content: "x" }] }).catch((e) => e);
      expect(err).toBeInstanceOf(APIError);
      expect(err.status).toBe(404);
      expect(err.code).toBe("model_not_found");
    });

    it("answers a prompt that does not fit the context with 400", async () => {
      const err = await client.completions.create({ model: MODEL, prompt: Array.from({ length: 300 }, () => 100) }).catch((e) => e);
      expect(err.status).toBe(400);
      expect(err.message).toContain("maximum context length is 256");
      const tooMany = await client.completions.create({ model: MODEL, prompt: "x", max_tokens: 1000 }).catch((e) => e);
      expect(tooMany.status).toBe(400);
    });

    it("answers a body over the size cap with 413", async () => {
      const res = await post("/v1/completions", JSON.stringify({ model: MODEL, prompt: "x".repeat(100 * 1024) }));
      expect(res.status).toBe(413);
      expect(res.json.error.code).toBe("request_too_large");
    });

    it("answers 503 when no worker serves any model, or all are busy (with Retry-After)", async () => {
      router.cards = [];
      const none = await client.completions.create({ model: MODEL, prompt: "x" }).catch((e) => e);
      expect(none.status).toBe(503);
      expect((await fetch(`${frontend.url}/health`)).status).toBe(503);

      router.cards = [{ name: MODEL, path: QWEN3_DIR, maxModelLen: 256, blockSize: 16 }];
      router.refuse = new RouterError("all_busy", "every worker is full", 3);
      const res = await post("/v1/completions", JSON.stringify({ model: MODEL, prompt: "x" }));
      expect(res.status).toBe(503);
      expect(res.headers.get("retry-after")).toBe("3");
      expect(res.json.error.code).toBe("all_busy");
    });

    it("maps a worker's InvalidArgument to 400, also for streamed requests", async () => {
      router.refuse = new ConnectError("token id 999999 is outside the vocabulary", Code.InvalidArgument);
      const res = await post("/v1/completions", JSON.stringify({ model: MODEL, prompt: [999999], stream: true }));
      expect(res.status).toBe(400);
      expect(res.json.error.message).toBe("token id 999999 is outside the vocabulary");
    });

    it("answers unknown routes with 404 and wrong methods with 405", async () => {
      expect((await fetch(`${frontend.url}/v1/embeddings`, { method: "POST" })).status).toBe(404);
      const wrong = await fetch(`${frontend.url}/v1/completions`);
      expect(wrong.status).toBe(405);
      expect(wrong.headers.get("allow")).toBe("POST");
    });
  });

  describe("service endpoints", () => {
    it("lists the served models", async () => {
      const models = await client.models.list();
      expect(models.data).toEqual([expect.objectContaining({ id: MODEL, object: "model", owned_by: "switchyard" })]);
    });

    it("reports health with the served models, and liveness", async () => {
      const health = await fetch(`${frontend.url}/health`);
      expect(health.status).toBe(200);
      expect(await health.json()).toMatchObject({
        status: "healthy",
        models: [{ name: MODEL, max_model_len: 256 }],
        instances: [{ id: `fake-${MODEL}`, model: MODEL }],
      });
      expect((await fetch(`${frontend.url}/live`)).status).toBe(200);
    });

    it("tokenizes a prompt or a chat exactly as generation does, and detokenizes ids", async () => {
      const text = await post("/tokenize", JSON.stringify({ model: MODEL, prompt: "Hello world", return_token_strs: true }));
      expect(text.status).toBe(200);
      expect(text.json).toEqual({ count: 2, max_model_len: 256, tokens: encode("Hello world"), token_strs: ["Hello", "Ġworld"] });

      router.script = replyTokens([IM_END], { finish: FinishReason.STOP });
      const messages = [{ role: "user", content: "Hi" }];
      await client.chat.completions.create({ model: MODEL, messages: messages as never });
      const chat = await post("/tokenize", JSON.stringify({ model: MODEL, messages }));
      expect(chat.json.tokens).toEqual(router.lastRequest.tokenIds);

      const back = await post("/detokenize", JSON.stringify({ model: MODEL, tokens: chat.json.tokens }));
      expect(back.json).toEqual({ prompt: "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n" });

      const neither = await post("/tokenize", JSON.stringify({ model: MODEL }));
      expect(neither.status).toBe(400);
      expect(neither.json.error.message).toContain("either prompt");
      const outside = await post("/detokenize", JSON.stringify({ model: MODEL, tokens: [1, 10_000_000] }));
      expect(outside.status).toBe(400);
      expect(outside.json.error.param).toBe("tokens");
      expect((await post("/tokenize", JSON.stringify({ model: "nope", prompt: "x" }))).status).toBe(404);
    });

    it("exposes request, token and latency metrics", async () => {
      router.script = replyTokens(encode("a b c"));
      await client.completions.create({ model: MODEL, prompt: "x" });
      const text = await (await fetch(`${frontend.url}/metrics`)).text();
      expect(text).toMatch(new RegExp(`switchyard_frontend_requests_total\\{model="${MODEL}",endpoint="completions",status="200"\\} \\d+`));
      expect(text).toContain("switchyard_frontend_inflight_requests");
      expect(text).toMatch(/switchyard_frontend_time_to_first_token_seconds_count\{model="test-qwen3"\} [1-9]/);
      expect(text).toMatch(/switchyard_frontend_inter_token_latency_seconds_count\{model="test-qwen3"\} [1-9]/);
      expect(text).toContain("switchyard_frontend_request_duration_seconds_bucket");
      expect(text).toMatch(/switchyard_frontend_output_tokens_total\{model="test-qwen3"\} [1-9]/);
      expect(text).toMatch(/switchyard_frontend_input_tokens_total\{model="test-qwen3"\} [1-9]/);
    });
  });
});

/** The worker's logprobs for a token: itself at -0.5, then "!" at -1.5. */
function logprobsOf(tokenId: number): TokenLogprobs {
  const bang = tokenizer.tokenId("!")!;
  return {
    tokenId,
    logprob: -0.5,
    topLogprobs: [
      { tokenId, logprob: -0.5 },
      { tokenId: bang, logprob: -1.5 },
    ],
  } as TokenLogprobs;
}
