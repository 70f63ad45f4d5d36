/**
 * Tool calls in a model's output, in the Hermes format that Qwen2.5/Qwen3 and Hermes models are
 * trained to write (and that their chat templates describe to them):
 *
 *   <tool_call>
 *   {"name": "get_weather", "arguments": {"city": "Paris"}}
 *   </tool_call>
 *
 * The parser takes the text as it streams and splits it into what the client sees as content
 * and the calls it sees as `tool_calls`. Text that could still become a `<tool_call>` tag is
 * held back until it is known; a block whose JSON is not a call is shown as the text it was.
 */
import { randomUUID } from "node:crypto";
import { partialTagLength } from "./partial_tag.ts";

export const TOOL_CALL_PARSERS = ["hermes"] as const;
export type ToolCallParserName = (typeof TOOL_CALL_PARSERS)[number];

const OPEN = "<tool_call>";
const CLOSE = "</tool_call>";

export interface ToolCall {
  /** The call's position among this choice's calls (OpenAI's streamed `index`). */
  index: number;
  id: string;
  name: string;
  /** The arguments as a JSON object's text, as OpenAI sends them. */
  arguments: string;
}

export interface ToolCallDelta {
  content: string;
  calls: ToolCall[];
}

export class HermesToolCallParser {
  private buffer = "";
  private inCall = false;
  /** Whitespace after a call, shown only if more text follows it. */
  private pendingSpace = "";
  private readonly found: ToolCall[] = [];

  /** Every call parsed so far. */
  get calls(): readonly ToolCall[] {
    return this.found;
  }

  /** Takes the next piece of text; returns the content that can be shown and any calls completed. */
  push(text: string): ToolCallDelta {
    this.buffer += text;
    const delta: ToolCallDelta = { content: "", calls: [] };
    for (;;) {
      if (!this.inCall) {
        const open = this.buffer.indexOf(OPEN);
        if (open < 0) {
          // Keep back the end that may be the start of a tag still arriving.
          const keep = partialTagLength(this.buffer, OPEN);
          delta.content += this.shown(this.buffer.slice(0, this.buffer.length - keep));
          this.buffer = this.buffer.slice(this.buffer.length - keep);
          return delta;
        }
        delta.content += this.shown(this.buffer.slice(0, open));
        this.buffer = this.buffer.slice(open + OPEN.length);
        this.inCall = true;
      }
      const close = this.buffer.indexOf(CLOSE);
      if (close < 0) return delta;
      const body = this.buffer.slice(0, close);
      this.buffer = this.buffer.slice(close + CLOSE.length);
      this.inCall = false;
      const call = parseCall(body, this.found.length);
      if (call) {
        this.found.push(call);
        delta.calls.push(call);
      } else {
        delta.content += this.shown(OPEN + body + CLOSE);
      }
    }
  }

  /** The end of the output: what was held back is text after all (an unclosed call included). */
  flush(): ToolCallDelta {
    const rest = this.inCall ? OPEN + this.buffer : this.buffer;
    this.buffer = "";
    this.inCall = false;
    const content = this.shown(rest);
    this.pendingSpace = "";
    return { content, calls: [] };
  }

  /**
   * Once a call was made, the whitespace the model writes between and after calls is no content:
   * it is held until text follows it, whichever pieces the output arrives in.
   */
  private shown(text: string): string {
    if (this.found.length === 0 || text === "") return text;
    if (text.trim() === "") {
      this.pendingSpace += text;
      return "";
    }
    const out = this.pendingSpace + text;
    this.pendingSpace = "";
    return out;
  }
}

/** The whole output at once: its content (null when only calls remain) and its calls. */
export function parseHermesToolCalls(text: string): { content: string | null; calls: ToolCall[] } {
  const parser = new HermesToolCallParser();
  const content = parser.push(text).content + parser.flush().content;
  return { content: parser.calls.length > 0 && content.trim() === "" ? null : content, calls: [...parser.calls] };
}

function parseCall(body: string, index: number): ToolCall | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    return undefined;
  }
  if (typeof parsed !== "object" || parsed === null) return undefined;
  const { name, arguments: args } = parsed as { name?: unknown; arguments?: unknown };
  if (typeof name !== "string" || name === "") return undefined;
  const argumentsText = typeof args === "string" ? args : JSON.stringify(args ?? {});
  return { index, id: `call_${randomUUID().replaceAll("-", "").slice(0, 24)}`, name, arguments: argumentsText };
}
