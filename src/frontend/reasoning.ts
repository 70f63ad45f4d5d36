/**
 * The reasoning a thinking model writes before its answer, split off as OpenAI-style
 * `reasoning_content` (what vLLM's `--reasoning-parser qwen3` does). Qwen3 opens its output with
 * `<think>` when thinking is on and writes the answer after `</think>`; an output that does not
 * open with `<think>` is all answer (thinking off, or a model that skipped it).
 */
import { partialTagLength } from "./partial_tag.ts";

export const REASONING_PARSERS = ["qwen3"] as const;
export type ReasoningParserName = (typeof REASONING_PARSERS)[number];

const OPEN = "<think>";
const CLOSE = "</think>";

export interface ReasoningDelta {
  reasoning: string;
  content: string;
}

type State = "start" | "reasoning" | "content";

export class ReasoningSplitter {
  private state: State = "start";
  private buffer = "";
  /** Newlines right after `<think>` and right after `</think>` frame the text; they are not part of it. */
  private trimStart = false;

  push(text: string): ReasoningDelta {
    const delta: ReasoningDelta = { reasoning: "", content: "" };
    this.buffer += text;
    if (this.state === "start") {
      const lead = this.buffer.trimStart();
      if (lead.startsWith(OPEN)) {
        this.buffer = lead.slice(OPEN.length);
        this.state = "reasoning";
        this.trimStart = true;
      } else if (OPEN.startsWith(lead)) {
        return delta; // still possibly the opening tag
      } else {
        this.state = "content";
      }
    }
    if (this.trimStart) {
      this.buffer = this.buffer.replace(/^\s+/, "");
      if (this.buffer === "") return delta;
      this.trimStart = false;
    }
    if (this.state === "reasoning") {
      const close = this.buffer.indexOf(CLOSE);
      if (close < 0) {
        // Held back: a possible start of the closing tag, and newlines that may be the last
        // before it.
        let cut = this.buffer.length - partialTagLength(this.buffer, CLOSE);
        while (cut > 0 && this.buffer[cut - 1] === "\n") cut--;
        delta.reasoning = this.buffer.slice(0, cut);
        this.buffer = this.buffer.slice(cut);
        return delta;
      }
      delta.reasoning = this.buffer.slice(0, close).replace(/\n+$/, "");
      this.buffer = this.buffer.slice(close + CLOSE.length).replace(/^\s+/, "");
      this.state = "content";
      this.trimStart = this.buffer === "";
      if (this.trimStart) return delta;
    }
    delta.content = this.buffer;
    this.buffer = "";
    return delta;
  }

  /** The end of the output: held-back text goes where it was heading. */
  flush(): ReasoningDelta {
    const rest = this.buffer;
    this.buffer = "";
    if (this.state === "reasoning") return { reasoning: rest, content: "" };
    return { reasoning: "", content: rest };
  }
}

/** The whole output at once: the reasoning (null when there was none) and the answer. */
export function splitReasoning(text: string): { reasoning: string | null; content: string } {
  const splitter = new ReasoningSplitter();
  const a = splitter.push(text);
  const b = splitter.flush();
  const reasoning = a.reasoning + b.reasoning;
  const sawReasoning = text.trimStart().startsWith(OPEN);
  return { reasoning: sawReasoning ? reasoning : null, content: a.content + b.content };
}
