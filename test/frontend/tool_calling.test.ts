/**
 * Tool calling and reasoning through the OpenAI SDK: tools rendered into the prompt by the
 * model's chat template, calls read out of the output (Hermes format) as `tool_calls`, a thinking
 * model's reasoning as `reasoning_content`, whole and streamed, and the tool_choice values the
 * frontend cannot honour refused.
 */
import OpenAI, { APIError } from "openai";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FinishReason } from "../../gen/switchyard/worker/v1/worker_pb.ts";
import { startFrontend, type RunningFrontend } from "../../src/frontend/server.ts";
import { tokenizerFor } from "../../src/frontend/tokenizer.ts";
import { FakeRouter, MODEL, QWEN3_DIR, replyTokens } from "./fake_router.ts";

const tokenizer = tokenizerFor(QWEN3_DIR);
const IM_END = tokenizer.tokenId("<|im_end|>")!;
const encode = (text: string) => tokenizer.encode(text, false);
const reply = (text: string) => replyTokens([...encode(text), IM_END], { finish: FinishReason.STOP });

const weatherTool = {
  type: "function" as const,
  function: { name: "get_weather", description: "The weather in a city", parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } },
};
const callText = (name: string, args: object) => `<tool_call>\n${JSON.stringify({ name, arguments: args })}\n</tool_call>`;

describe("tool calling", () => {
  const router = new FakeRouter();
  let plain: RunningFrontend;
  let hermes: RunningFrontend;
  let thinking: RunningFrontend;
  let plainClient: OpenAI;
  let client: OpenAI;
  let thinkingClient: OpenAI;

  beforeAll(async () => {
    router.cards = [{ name: MODEL, path: QWEN3_DIR, maxModelLen: 4096, blockSize: 16 }];
    plain = await startFrontend({ port: 0, router, metricsRegistry: new Registry() });
    hermes = await startFrontend({ port: 0, router, metricsRegistry: new Registry(), toolCallParser: "hermes" });
    plainClient = new OpenAI({ baseURL: `${plain.url}/v1`, apiKey: "unused", maxRetries: 0 });
    client = new OpenAI({ baseURL: `${hermes.url}/v1`, apiKey: "unused", maxRetries: 0 });
    thinking = await startFrontend({ port: 0, router, metricsRegistry: new Registry(), toolCallParser: "hermes", reasoningParser: "qwen3" });
    thinkingClient = new OpenAI({ baseURL: `${thinking.url}/v1`, apiKey: "unused", maxRetries: 0 });
  });
  afterAll(async () => {
    await plain.close();
    await hermes.close();
    await thinking.close();
  });

  it("renders the tools into the prompt with the chat template", async () => {
    router.script = reply("ok");
    await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "Weather in Paris?" }], tools: [weatherTool] });
    const prompt = tokenizer.decode(router.lastRequest.tokenIds, false);
    expect(prompt).toContain("# Tools");
    expect(prompt).toContain('"name": "get_weather"');
    expect(prompt).toContain("<|im_start|>user\nWeather in Paris?<|im_end|>");
  });

  it("answers a call as tool_calls with finish_reason tool_calls, and keeps text before it as content", async () => {
    router.script = reply(`I will look it up.\n${callText("get_weather", { city: "Paris" })}`);
    const res = await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "Weather in Paris?" }], tools: [weatherTool] });
    const choice = res.choices[0];
    expect(choice.finish_reason).toBe("tool_calls");
    expect(choice.message.content).toBe("I will look it up.\n");
    expect(choice.message.tool_calls).toHaveLength(1);
    const call = choice.message.tool_calls![0] as { id: string; type: string; function: { name: string; arguments: string } };
    expect(call.type).toBe("function");
    expect(call.id).toMatch(/^call_/);
    expect(call.function.name).toBe("get_weather");
    expect(JSON.parse(call.function.arguments)).toEqual({ city: "Paris" });
  });

  it("streams content, then each call whole under its index, then finish_reason tool_calls", async () => {
    router.script = reply(`${callText("get_weather", { city: "Oslo" })}\n${callText("get_weather", { city: "Rome" })}`);
    const stream = await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "Oslo and Rome?" }], tools: [weatherTool], stream: true });
    const calls: { id?: string; name?: string; arguments: string }[] = [];
    let content = "";
    let finish: string | null = null;
    for await (const chunk of stream) {
      const choice = chunk.choices[0];
      if (!choice) continue;
      content += choice.delta.content ?? "";
      for (const tc of choice.delta.tool_calls ?? []) {
        calls[tc.index] ??= { arguments: "" };
        calls[tc.index].id ??= tc.id;
        calls[tc.index].name ??= tc.function?.name;
        calls[tc.index].arguments += tc.function?.arguments ?? "";
      }
      finish = choice.finish_reason ?? finish;
    }
    expect(content).toBe("");
    expect(finish).toBe("tool_calls");
    expect(calls.map((c) => [c.name, JSON.parse(c.arguments)])).toEqual([
      ["get_weather", { city: "Oslo" }],
      ["get_weather", { city: "Rome" }],
    ]);
    expect(calls[0].id).not.toBe(calls[1].id);
  });

  it("keeps only the first call when parallel_tool_calls is false", async () => {
    router.script = reply(`${callText("get_weather", { city: "Oslo" })}\n${callText("get_weather", { city: "Rome" })}`);
    const res = await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "x" }], tools: [weatherTool], parallel_tool_calls: false });
    expect(res.choices[0].message.tool_calls).toHaveLength(1);
  });

  it("answers plain text as content when the model calls nothing", async () => {
    router.script = reply("It is sunny.");
    const res = await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "x" }], tools: [weatherTool] });
    expect(res.choices[0]).toMatchObject({ finish_reason: "stop", message: { content: "It is sunny." } });
    expect(res.choices[0].message.tool_calls).toBeUndefined();
  });

  it("renders an earlier call and its result into the next turn's prompt", async () => {
    router.script = reply("Sunny in Paris.");
    await client.chat.completions.create({
      model: MODEL,
      tools: [weatherTool],
      messages: [
        { role: "user", content: "Weather in Paris?" },
        { role: "assistant", content: null, tool_calls: [{ id: "call_1", type: "function", function: { name: "get_weather", arguments: '{"city": "Paris"}' } }] },
        { role: "tool", tool_call_id: "call_1", content: '{"sky": "clear"}' },
      ],
    });
    const prompt = tokenizer.decode(router.lastRequest.tokenIds, false);
    expect(prompt).toContain('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>');
    expect(prompt).toContain('<tool_response>\n{"sky": "clear"}\n</tool_response>');
  });

  it("refuses what it cannot honour with a 400 on tool_choice", async () => {
    const messages = [{ role: "user" as const, content: "x" }];
    const noParser = await plainClient.chat.completions.create({ model: MODEL, messages, tools: [weatherTool] }).catch((e) => e);
    expect(noParser).toBeInstanceOf(APIError);
    expect(noParser.status).toBe(400);
    expect(noParser.param).toBe("tool_choice");
    expect(noParser.message).toContain("--tool-call-parser");

    for (const tool_choice of ["required" as const, { type: "function" as const, function: { name: "get_weather" } }]) {
      const err = await client.chat.completions.create({ model: MODEL, messages, tools: [weatherTool], tool_choice }).catch((e) => e);
      expect(err.status).toBe(400);
      expect(err.message).toContain("guided decoding");
    }
    const noTools = await client.chat.completions.create({ model: MODEL, messages, tool_choice: "auto" }).catch((e) => e);
    expect(noTools.status).toBe(400);

    // tool_choice "none": the tools are shown to the model, the output is not read for calls.
    router.script = reply(callText("get_weather", { city: "Paris" }));
    const none = await plainClient.chat.completions.create({ model: MODEL, messages, tools: [weatherTool], tool_choice: "none" });
    expect(none.choices[0].message.tool_calls).toBeUndefined();
    expect(none.choices[0].message.content).toContain("<tool_call>");
    expect(tokenizer.decode(router.lastRequest.tokenIds, false)).toContain("# Tools");
  });

  describe("with --reasoning-parser qwen3", () => {
    const thought = `<think>\nThe user wants Paris.\n</think>\n\n`;

    it("gives the reasoning as reasoning_content and the rest as the answer", async () => {
      router.script = reply(`${thought}It is sunny.`);
      const res = await thinkingClient.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "x" }] });
      const message = res.choices[0].message as { content: string | null; reasoning_content?: string };
      expect(message.reasoning_content).toBe("The user wants Paris.");
      expect(message.content).toBe("It is sunny.");
      expect(res.choices[0].finish_reason).toBe("stop");
    });

    it("streams reasoning, then a tool call read from the answer alone", async () => {
      router.script = reply(`${thought}${callText("get_weather", { city: "Paris" })}`);
      const stream = await thinkingClient.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "x" }], tools: [weatherTool], stream: true });
      let reasoning = "";
      let content = "";
      const names: string[] = [];
      let finish: string | null = null;
      for await (const chunk of stream) {
        const choice = chunk.choices[0];
        if (!choice) continue;
        reasoning += (choice.delta as { reasoning_content?: string }).reasoning_content ?? "";
        content += choice.delta.content ?? "";
        for (const tc of choice.delta.tool_calls ?? []) if (tc.function?.name) names.push(tc.function.name);
        finish = choice.finish_reason ?? finish;
      }
      expect(reasoning).toBe("The user wants Paris.");
      expect(content).toBe("");
      expect(names).toEqual(["get_weather"]);
      expect(finish).toBe("tool_calls");
    });

    it("leaves the thinking in the content when no reasoning parser is set", async () => {
      router.script = reply(`${thought}It is sunny.`);
      const res = await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "x" }] });
      expect(res.choices[0].message.content).toBe(`${thought}It is sunny.`);
      expect((res.choices[0].message as { reasoning_content?: string }).reasoning_content).toBeUndefined();
    });
  });
});
