/**
 * 10,000 malformed or hostile request bodies against a running server: each one is answered
 * 4xx with an OpenAI error body, and the server is still healthy and serving afterwards.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { serve, type ServeHandle } from "../../src/cli/serve.ts";
import { seededRandom } from "../../src/util/seeded_random.ts";

const MODEL = "switchyard-tiny-qwen3";


const WRONG_VALUES: unknown[] = [null, true, -1, 1e308, -1e308, 3.5, "", "x".repeat(3000), [], [[]], {}, { a: 1 }, [1, "a"], "NaN", -0.0001];
// Fields each endpoint reads; like OpenAI, an endpoint ignores fields it does not know.
const COMMON_FIELDS = ["model", "max_tokens", "temperature", "top_p", "n", "stop", "stream", "seed", "logprobs", "stream_options", "top_k", "min_p", "stop_token_ids", "presence_penalty", "frequency_penalty", "repetition_penalty", "min_tokens", "response_format", "logit_bias"];
const CHAT_FIELDS = [...COMMON_FIELDS, "messages", "top_logprobs", "max_completion_tokens", "tools", "tool_choice", "parallel_tool_calls"];
const COMPLETION_FIELDS = [...COMMON_FIELDS, "prompt", "echo"];

function hostileBody(random: () => number): { path: string; body: string; contentType?: string } {
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(random() * xs.length)];
  const chat = random() < 0.5;
  const path = chat ? "/v1/chat/completions" : "/v1/completions";
  const valid: Record<string, unknown> = chat
    ? { model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 2 }
    : { model: MODEL, prompt: "hi", max_tokens: 2 };
  switch (Math.floor(random() * 8)) {
    case 0: {
      // Broken JSON: a valid body cut short, or with bytes flipped.
      const text = JSON.stringify(valid);
      const cut = text.slice(0, 1 + Math.floor(random() * (text.length - 2)));
      return { path, body: random() < 0.5 ? cut : cut + "\u0000{]" };
    }
    case 1:
      // A required or typed field with a value of the wrong type or range.
      for (;;) {
        const field = pick(chat ? CHAT_FIELDS : COMPLETION_FIELDS);
        const value = pick(WRONG_VALUES);
        const body = { ...valid, [field]: value };
        if (isStillValid(field, value, chat)) continue;
        return { path, body: JSON.stringify(body) };
      }
    case 2:
      return { path, body: JSON.stringify({ ...valid, model: `no-such-model-${Math.floor(random() * 1e6)}` }) };
    case 3:
      // Not an object at all.
      return { path, body: JSON.stringify(pick([[], "text", 42, null, true, [valid]])) };
    case 4: {
      // Deep nesting.
      let nested: unknown = "x";
      for (let i = 0; i < 200 + Math.floor(random() * 2000); i++) nested = [nested];
      return { path, body: JSON.stringify({ ...valid, [chat ? "messages" : "prompt"]: nested }) };
    }
    case 5:
      // Required fields missing.
      return { path, body: JSON.stringify(chat ? { model: MODEL } : { model: MODEL, max_tokens: 3 }) };
    case 6:
      // Messages of the wrong shape.
      return {
        path: "/v1/chat/completions",
        body: JSON.stringify({ model: MODEL, messages: [pick([{ role: "wizard", content: "x" }, { content: "no role" }, { role: "user" }, { role: "user", content: 5 }, "hello"])] }),
      };
    default:
      // Impossible sampling or lengths.
      return { path, body: JSON.stringify({ ...valid, ...pick([{ max_tokens: 0 }, { max_tokens: 10_000_000 }, { n: 500 }, { temperature: -2 }, { top_p: 0 }, { top_p: 2 }, { stop: ["a", "b", "c", "d", "e"] }, { top_logprobs: 500, logprobs: true }, { min_tokens: 10, max_tokens: 2 }]) }) };
  }
}

/** Values that the API accepts for a field, so they make no hostile body. */
function isStillValid(field: string, value: unknown, chat: boolean): boolean {
  const booleanField = ["stream", "echo", "logprobs", "parallel_tool_calls"].includes(field) && typeof value === "boolean";
  if (booleanField && !(field === "logprobs" && !chat)) return true;
  if (value === null && !["model", "messages", "prompt"].includes(field)) return true;
  if (field === "stop" && (value === "" || (typeof value === "string" && value.length > 0) || (Array.isArray(value) && value.length === 0))) return true;
  if (field === "prompt" && typeof value === "string") return true;
  if (field === "prompt" && Array.isArray(value) && value.length > 0 && value.every((v) => Number.isInteger(v) && (v as number) >= 0)) return true;
  if (["temperature", "presence_penalty", "frequency_penalty", "min_p", "top_p", "repetition_penalty"].includes(field) && typeof value === "number") {
    const v = value as number;
    if (field === "temperature") return v >= 0 && v <= 2;
    if (field === "top_p" || field === "min_p") return v > 0 && v <= 1;
    if (field === "repetition_penalty") return v > 0 && v <= 2;
    return v >= -2 && v <= 2;
  }
  if (["seed"].includes(field) && Number.isInteger(value)) return (value as number) >= -(2 ** 63) && (value as number) < 2 ** 63;
  if (["top_k"].includes(field) && value === -1) return true;
  if (["stop_token_ids", "tools"].includes(field) && Array.isArray(value) && value.length === 0) return true;
  if (field === "logit_bias" && typeof value === "object" && value !== null && !Array.isArray(value) && Object.keys(value).length === 0) return true;
  // Unknown keys inside stream_options are ignored, as OpenAI does.
  if (["stream_options"].includes(field) && typeof value === "object" && value !== null && !Array.isArray(value)) return true;
  if (field === "logprobs" && !chat && Number.isInteger(value) && (value as number) >= 0 && (value as number) <= 5) return true;
  if (["min_tokens", "top_logprobs"].includes(field) && value === 0) return true;
  return false;
}

describe("hostile request bodies", () => {
  let server: ServeHandle;
  beforeAll(async () => {
    server = await serve(["--port", "0", "--engine", "mocker", "--speedup-ratio", "0"]);
  });
  afterAll(() => server.stop());

  it("answers 10,000 of them with a 4xx OpenAI error, and stays healthy", async () => {
    // Seeded, so the same 10,000 bodies are sent on every run.
    const random = seededRandom(20261123);
    const bodies = Array.from({ length: 10_000 }, () => hostileBody(random));
    const failures: string[] = [];
    let next = 0;
    const client = async () => {
      while (next < bodies.length) {
        const { path, body } = bodies[next++];
        const res = await fetch(`${server.url}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body });
        const text = await res.text();
        let parsed: { error?: { message?: unknown; type?: unknown } } | undefined;
        try {
          parsed = JSON.parse(text);
        } catch {}
        const ok = res.status >= 400 && res.status < 500 && typeof parsed?.error?.message === "string" && typeof parsed.error.type === "string";
        if (!ok && failures.length < 10) failures.push(`${res.status} ${path} ${body.slice(0, 200)} -> ${text.slice(0, 200)}`);
      }
    };
    await Promise.all(Array.from({ length: 16 }, client));
    expect(failures).toEqual([]);

    const oversized = await fetch(`${server.url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: MODEL, prompt: "x".repeat(5 * 1024 * 1024) }) });
    expect(oversized.status).toBe(413);

    expect((await fetch(`${server.url}/health`)).status).toBe(200);
    const ok = await fetch(`${server.url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: MODEL, prompt: "still there?", max_tokens: 3 }) });
    expect(ok.status).toBe(200);
    expect(((await ok.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens).toBe(3);
  }, 180_000);
});
