/**
 * Incremental detokenization: token ids in, text deltas out, such that the concatenated deltas
 * equal decoding the whole sequence, and no delta ends in half a UTF-8 character.
 *
 * Two implementations of one interface:
 * - WindowDetokenizer works with any tokenizer (the reference). Text between tokens depends on
 *   their neighbours (SentencePiece drops a leading space at the start of a decode, a
 *   multi-byte character spans tokens), so each step decodes a short window twice: from
 *   `prefixOffset` to `readOffset` (text already emitted) and from `prefixOffset` to the end.
 *   The difference is new text, unless it ends in U+FFFD, the mark of an incomplete character:
 *   then it is held back until a later token completes it.
 * - ByteStreamDetokenizer is the fast path for byte-level BPE: each token is a fixed byte
 *   string, so a streaming UTF-8 decoder gives the same text at a fraction of the cost.
 */
import type { ModelTokenizer } from "./tokenizer.ts";

export interface Detokenizer {
  /** Consumes one generated token; returns the text it completes ("" when held back). */
  push(tokenId: number): string;
  /** Consumes `tokenIds[0..count)` at once; returns what pushing them one by one would have, joined. */
  pushMany(tokenIds: ArrayLike<number>, count: number): string;
  /** Text still held back at the end of generation (an incomplete character decodes as U+FFFD). */
  flush(): string;
}

/** Tokens of the prompt's tail that seed the window, so the first output token decodes in context. */
const PROMPT_CONTEXT_TOKENS = 5;

export function createDetokenizer(tokenizer: ModelTokenizer, promptIds: readonly number[], skipSpecialTokens: boolean): Detokenizer {
  return tokenizer.isByteLevel
    ? new ByteStreamDetokenizer(tokenizer, skipSpecialTokens)
    : new WindowDetokenizer(tokenizer, promptIds, skipSpecialTokens);
}

export class WindowDetokenizer implements Detokenizer {
  private ids: number[];
  private prefixOffset = 0;
  private readOffset: number;

  constructor(
    private readonly tokenizer: ModelTokenizer,
    promptIds: readonly number[],
    private readonly skipSpecialTokens: boolean,
  ) {
    this.ids = promptIds.slice(-PROMPT_CONTEXT_TOKENS);
    this.readOffset = this.ids.length;
  }

  push(tokenId: number): string {
    this.ids.push(tokenId);
    const prefixText = this.tokenizer.decode(this.ids.slice(this.prefixOffset, this.readOffset), this.skipSpecialTokens);
    const fullText = this.tokenizer.decode(this.ids.slice(this.prefixOffset), this.skipSpecialTokens);
    if (fullText.length <= prefixText.length || fullText.endsWith("\uFFFD")) return "";
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    this.compact();
    return fullText.slice(prefixText.length);
  }

  flush(): string {
    if (this.readOffset === this.ids.length) return "";
    const prefixText = this.tokenizer.decode(this.ids.slice(this.prefixOffset, this.readOffset), this.skipSpecialTokens);
    const fullText = this.tokenizer.decode(this.ids.slice(this.prefixOffset), this.skipSpecialTokens);
    this.prefixOffset = this.readOffset = this.ids.length;
    return fullText.slice(prefixText.length);
  }

  pushMany(tokenIds: ArrayLike<number>, count: number): string {
    let text = "";
    for (let i = 0; i < count; i++) text += this.push(tokenIds[i]);
    return text;
  }

  /** Drops ids before the window so a long generation does not keep them all. */
  private compact(): void {
    if (this.prefixOffset < 256) return;
    this.ids = this.ids.slice(this.prefixOffset);
    this.readOffset -= this.prefixOffset;
    this.prefixOffset = 0;
  }
}

const NO_BYTES = new Uint8Array(0);
/** Where pushMany lays out token bytes; shared, since a call uses it only while it runs. */
let scratch = new Uint8Array(4096);

export class ByteStreamDetokenizer implements Detokenizer {
  // fatal: false turns invalid bytes into U+FFFD like the tokenizer's own decode; stream: true
  // keeps an incomplete trailing character inside the decoder until its last byte arrives.
  private readonly utf8 = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });

  constructor(
    private readonly tokenizer: ModelTokenizer,
    private readonly skipSpecialTokens: boolean,
  ) {}

  push(tokenId: number): string {
    if (this.skipSpecialTokens && this.tokenizer.isSpecial(tokenId)) return "";
    return this.utf8.decode(this.tokenizer.tokenBytes(tokenId), { stream: true });
  }

  /** One decode over the tokens' bytes laid end to end: a multi-token message costs one call. */
  pushMany(tokenIds: ArrayLike<number>, count: number): string {
    if (count === 1) return this.push(tokenIds[0]);
    let length = 0;
    for (let i = 0; i < count; i++) length += this.bytesOf(tokenIds[i]).length;
    if (scratch.length < length) scratch = new Uint8Array(Math.max(length, 2 * scratch.length));
    let offset = 0;
    for (let i = 0; i < count; i++) {
      const bytes = this.bytesOf(tokenIds[i]);
      scratch.set(bytes, offset);
      offset += bytes.length;
    }
    // decode() has taken what it needs (an incomplete character included) when it returns.
    return this.utf8.decode(scratch.subarray(0, length), { stream: true });
  }

  private bytesOf(tokenId: number): Uint8Array {
    return this.skipSpecialTokens && this.tokenizer.isSpecial(tokenId) ? NO_BYTES : this.tokenizer.tokenBytes(tokenId);
  }

  flush(): string {
    return this.utf8.decode();
  }
}
