import { describe, expect, it } from "vitest";
import { ReasoningSplitter, splitReasoning } from "../../src/frontend/reasoning.ts";

function streamed(text: string, size: number) {
  const splitter = new ReasoningSplitter();
  let reasoning = "";
  let content = "";
  for (let i = 0; i < text.length; i += size) {
    const d = splitter.push(text.slice(i, i + size));
    reasoning += d.reasoning;
    content += d.content;
  }
  const rest = splitter.flush();
  return { reasoning: reasoning + rest.reasoning, content: content + rest.content };
}

describe("Qwen3 reasoning splitter", () => {
  it("takes what is between <think> and </think> as reasoning, without the newlines that frame it", () => {
    expect(splitReasoning("<think>\nFirst, 2 + 2.\nThat is 4.\n</think>\n\nThe answer is 4.")).toEqual({ reasoning: "First, 2 + 2.\nThat is 4.", content: "The answer is 4." });
  });

  it("gives the same split whatever pieces the output streams in", () => {
    const text = "<think>\nHmm </thinking> is not the tag.\n\n</think>\n\nDone <think> here stays.";
    const whole = splitReasoning(text);
    expect(whole).toEqual({ reasoning: "Hmm </thinking> is not the tag.", content: "Done <think> here stays." });
    for (const size of [1, 2, 3, 7, 1000]) expect(streamed(text, size)).toEqual(whole);
  });

  it("leaves an output that does not open with <think> all content, with no reasoning", () => {
    expect(splitReasoning("Plain answer.")).toEqual({ reasoning: null, content: "Plain answer." });
    expect(splitReasoning("<thin")).toEqual({ reasoning: null, content: "<thin" });
    expect(streamed("Plain answer.", 1)).toEqual({ reasoning: "", content: "Plain answer." });
  });

  it("keeps an unfinished thought (cut by max_tokens) as reasoning, and an empty one as empty", () => {
    expect(splitReasoning("<think>\nStill going")).toEqual({ reasoning: "Still going", content: "" });
    expect(splitReasoning("<think>\n\n</think>\n\nQuick.")).toEqual({ reasoning: "", content: "Quick." });
  });
});
