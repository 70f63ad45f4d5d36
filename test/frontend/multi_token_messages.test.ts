/**
 * Worker messages that carry several tokens, as a worker sends when it merges the outputs that
 * queued up while its consumer was busy: the frontend must stream the same text, usage and
 * logprobs as it would for one token per message, and cut a stop string inside a message.
 */
import { create } from "@bufbuild/protobuf";
import OpenAI from "openai";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FinishReason, GenerateResponseSchema, TokenLogprobsSchema, type TokenLogprobs } from "../../gen/switchyard/worker/v1/worker_pb.ts";
import { startFrontend, type RunningFrontend } from "../../src/frontend/server.ts";
import { tokenizerFor } from "../../src/frontend/tokenizer.ts";
import { singleByteTokens } from "./byte_tokens.ts";
import { FakeRouter, MODEL, QWEN3_DIR, type Script } from "./fake_router.ts";

const tokenizer = tokenizerFor(QWEN3_DIR);
const encode = (text: string) => tokenizer.encode(text, false);

function logprobOf(tokenId: number): TokenLogprobs {
  return create(TokenLogprobsSchema, { tokenId, logprob: -tokenId / 1e6, topLogprobs: [{ tokenId, logprob: -tokenId / 1e6 }] });
}

/** Sends `tokenIds` in messages of `sizes` tokens each (cycling), the last with a finish. */
function replyInMessages(tokenIds: number[], sizes: number[], finish = FinishReason.LENGTH): Script {
  return async function* (request, signal) {
    let sent = 0;
    for (let m = 0; sent < tokenIds.length; m++) {
      const ids = tokenIds.slice(sent, sent + sizes[m % sizes.length]);
      sent += ids.length;
      const last = sent === tokenIds.length;
      yield create(GenerateResponseSchema, {
        tokenIds: ids,
        logprobs: request.sampling?.logprobs !== undefined ? ids.map(logprobOf) : [],
        finishReason: last ? finish : FinishReason.UNSPECIFIED,
        usage: { promptTokens: request.tokenIds.length, completionTokens: sent },
      });
      if (signal.aborted) return;
    }
  };
}

describe("worker messages with several tokens", () => {
  const router = new FakeRouter();
  let frontend: RunningFrontend;
  let client: OpenAI;

  beforeAll(async () => {
    frontend = await startFrontend({ port: 0, router, metricsRegistry: new Registry() });
    client = new OpenAI({ baseURL: `${frontend.url}/v1`, apiKey: "unused", maxRetries: 0 });
  });
  afterAll(() => frontend.close());

  it("streams one chunk per message whose texts add up to the whole text, with usage counting every token", async () => {
    const text = "The quick brown fox jumps over the lazy dog, again and again.";
    const ids = encode(text);
    router.script = replyInMessages(ids, [3, 1, 5]);
    const stream = await client.completions.create({ model: MODEL, prompt: "x", stream: true, stream_options: { include_usage: true } });
    const chunks: OpenAI.Completion[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    const content = chunks.filter((c) => c.choices.length > 0);
    expect(content.map((c) => c.choices[0].text).join("")).toBe(text);
    expect(content.length).toBeLessThan(ids.length);
    expect(content.at(-1)!.choices[0].finish_reason).toBe("length");
    expect(chunks.at(-1)!.usage).toMatchObject({ completion_tokens: ids.length });
  });

  it("keeps multi-byte characters whole when their bytes arrive in different messages", async () => {
    const text = "Grüße, 你好 😀!";
    router.script = replyInMessages(singleByteTokens(tokenizer, text), [2, 3]);
    const stream = await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "x" }], stream: true });
    const deltas: string[] = [];
    for await (const chunk of stream) deltas.push(chunk.choices[0]?.delta.content ?? "");
    expect(deltas.join("")).toBe(text);
    expect(deltas.some((d) => d.includes("\uFFFD"))).toBe(false);
  });

  it("cuts a stop string that ends inside a message, counts and returns logprobs only up to the stop, and cancels the worker", async () => {
    const text = "The quick brown fox jumps over the lazy dog";
    const ids = encode(text);
    // " brown" and " fox" arrive in one message with " jumps"; the stop string ends inside it.
    const brown = ids.findIndex((id) => tokenizer.decode([id], false) === " brown");
    expect(brown).toBeGreaterThan(0);
    router.script = replyInMessages(ids, [brown, 3, 10]);
    const stream = await client.completions.create({ model: MODEL, prompt: "x", stop: "own fo", stream: true, logprobs: 0, stream_options: { include_usage: true } });
    const chunks: OpenAI.Completion[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    const content = chunks.filter((c) => c.choices.length > 0);
    expect(content.map((c) => c.choices[0].text).join("")).toBe("The quick br");
    expect(content.at(-1)!.choices[0].finish_reason).toBe("stop");
    // Tokens up to and including " fox": the message's " jumps" was never consumed.
    const consumed = ids.slice(0, brown + 2);
    expect(chunks.at(-1)!.usage).toMatchObject({ completion_tokens: consumed.length });
    const tokenLogprobs = content.flatMap((c) => c.choices[0].logprobs?.token_logprobs ?? []);
    expect(tokenLogprobs).toEqual(consumed.map((id) => -id / 1e6));
    await router.aborted(router.lastRequest.requestId);
  });
});
