/**
 * Worker logprobs (token ids with log-probabilities) in OpenAI's two formats: chat's
 * `{content: [{token, logprob, bytes, top_logprobs}]}` and completions'
 * `{tokens, token_logprobs, top_logprobs, text_offset}`. A token is shown as its own text
 * (a piece of a multi-byte character decodes to U+FFFD; `bytes` keeps the exact bytes), or as
 * `token_id:N` with vLLM's return_tokens_as_token_ids.
 */
import type { TokenLogprobs } from "../../gen/switchyard/worker/v1/worker_pb.ts";
import type { ModelTokenizer } from "./tokenizer.ts";

/** What JSON cannot carry (-Infinity for an impossible token) becomes vLLM's floor value. */
const MIN_LOGPROB = -9999;
const utf8Decoder = new TextDecoder("utf-8", { fatal: false });
const utf8Encoder = new TextEncoder();

function finite(logprob: number): number {
  return Number.isFinite(logprob) ? logprob : MIN_LOGPROB;
}

export class TokenRenderer {
  constructor(
    private readonly tokenizer: ModelTokenizer,
    private readonly asTokenIds: boolean,
  ) {}

  bytes(id: number): number[] {
    if (this.tokenizer.isByteLevel) return Array.from(this.tokenizer.tokenBytes(id));
    return Array.from(utf8Encoder.encode(this.tokenizer.decode([id], false)));
  }

  text(id: number): string {
    if (this.asTokenIds) return `token_id:${id}`;
    if (this.tokenizer.isByteLevel) return utf8Decoder.decode(this.tokenizer.tokenBytes(id));
    return this.tokenizer.decode([id], false);
  }
}

export interface ChatTokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: { token: string; logprob: number; bytes: number[] }[];
}

export function chatLogprobs(renderer: TokenRenderer, entries: readonly TokenLogprobs[], topCount: number): ChatTokenLogprob[] {
  return entries.map((entry) => ({
    token: renderer.text(entry.tokenId),
    logprob: finite(entry.logprob),
    bytes: renderer.bytes(entry.tokenId),
    top_logprobs: entry.topLogprobs.slice(0, topCount).map((top) => ({
      token: renderer.text(top.tokenId),
      logprob: finite(top.logprob),
      bytes: renderer.bytes(top.tokenId),
    })),
  }));
}

export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: (number | null)[];
  top_logprobs: (Record<string, number> | null)[];
  text_offset: number[];
}

/**
 * Accumulates completions-format logprobs. `text_offset` is each token's character offset in
 * the choice's text, counted from the token texts (with echo, the prompt comes first).
 */
export class CompletionLogprobsBuilder {
  private offset: number;

  constructor(
    private readonly renderer: TokenRenderer,
    private readonly topCount: number,
    startOffset = 0,
  ) {
    this.offset = startOffset;
  }

  /** Echoed prompt tokens: no logprob is known for them. */
  addPrompt(into: CompletionLogprobs, ids: readonly number[]): void {
    for (const id of ids) {
      const token = this.renderer.text(id);
      into.tokens.push(token);
      into.token_logprobs.push(null);
      into.top_logprobs.push(null);
      into.text_offset.push(this.offset);
      this.offset += token.length;
    }
  }

  add(into: CompletionLogprobs, entries: readonly TokenLogprobs[]): void {
    for (const entry of entries) {
      const token = this.renderer.text(entry.tokenId);
      into.tokens.push(token);
      into.token_logprobs.push(finite(entry.logprob));
      // As in vLLM, the sampled token is always among the alternatives shown.
      const top: Record<string, number> = {};
      for (const alt of entry.topLogprobs.slice(0, this.topCount)) top[this.renderer.text(alt.tokenId)] = finite(alt.logprob);
      top[token] ??= finite(entry.logprob);
      into.top_logprobs.push(top);
      into.text_offset.push(this.offset);
      this.offset += token.length;
    }
  }
}

export function emptyCompletionLogprobs(): CompletionLogprobs {
  return { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
}
