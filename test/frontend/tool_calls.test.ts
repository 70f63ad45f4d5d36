import { describe, expect, it } from "vitest";
import { HermesToolCallParser, parseHermesToolCalls } from "../../src/frontend/tool_calls.ts";

const call = (name: string, args: unknown) => `<tool_call>\n${JSON.stringify({ name, arguments: args })}\n</tool_call>`;

/** Feeds `text` in pieces of `size` characters; returns all content and calls. */
function streamed(text: string, size: number) {
  const parser = new HermesToolCallParser();
  let content = "";
  const calls = [];
  for (let i = 0; i < text.length; i += size) {
    const d = parser.push(text.slice(i, i + size));
    content += d.content;
    calls.push(...d.calls);
  }
  content += parser.flush().content;
  return { content, calls };
}

describe("Hermes tool-call parser", () => {
  it("splits content from calls, with the arguments as JSON text and a fresh id per call", () => {
    const text = `Let me check.\n${call("get_weather", { city: "Paris" })}\n${call("get_time", { tz: "CET" })}\n`;
    const { content, calls } = parseHermesToolCalls(text);
    expect(content).toBe("Let me check.\n");
    expect(calls.map((c) => [c.index, c.name, JSON.parse(c.arguments)])).toEqual([
      [0, "get_weather", { city: "Paris" }],
      [1, "get_time", { tz: "CET" }],
    ]);
    expect(calls[0].id).toMatch(/^call_[0-9a-f]{24}$/);
    expect(calls[0].id).not.toBe(calls[1].id);
  });

  it("gives null content when the output is calls alone, and the text unchanged when there is no call", () => {
    expect(parseHermesToolCalls(call("f", {})).content).toBeNull();
    expect(parseHermesToolCalls("just words < and <tool").content).toBe("just words < and <tool");
    expect(parseHermesToolCalls("just words").calls).toEqual([]);
  });

  it("gives the same result whatever pieces the text streams in, holding back only a possible tag", () => {
    const text = `Sure <b>bold</b> ${call("lookup", { q: "a<b" })} tail`;
    const whole = parseHermesToolCalls(text);
    for (const size of [1, 2, 3, 5, 11, 1000]) {
      const s = streamed(text, size);
      expect(s.content).toBe("Sure <b>bold</b>  tail");
      expect(s.calls.map((c) => [c.name, c.arguments])).toEqual(whole.calls.map((c) => [c.name, c.arguments]));
    }
    const parser = new HermesToolCallParser();
    expect(parser.push("abc <tool_").content).toBe("abc ");
    expect(parser.push("x").content).toBe("<tool_x");
  });

  it("shows a block that is not a call, and an unclosed one, as the text it was", () => {
    const bad = "<tool_call>\nnot json\n</tool_call>";
    expect(parseHermesToolCalls(`a ${bad} b`)).toEqual({ content: `a ${bad} b`, calls: [] });
    const noName = '<tool_call>{"arguments": {}}</tool_call>';
    expect(parseHermesToolCalls(noName).content).toBe(noName);
    const unclosed = '<tool_call>\n{"name": "f", "argu';
    expect(parseHermesToolCalls(`x ${unclosed}`)).toEqual({ content: `x ${unclosed}`, calls: [] });
  });

  it("keeps arguments given as a string as they are", () => {
    const { calls } = parseHermesToolCalls('<tool_call>{"name": "f", "arguments": "{\\"k\\": 1}"}</tool_call>');
    expect(calls[0].arguments).toBe('{"k": 1}');
  });
});
