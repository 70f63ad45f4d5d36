/** Byte-level BPE helpers for tests: the single-byte tokens of a text, to split characters apart. */
import type { ModelTokenizer } from "../../src/frontend/tokenizer.ts";

/** GPT-2's byte-to-character table: printable Latin-1 bytes stand for themselves, the rest shift past 255. */
function byteChar(byte: number): string {
  const printable = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  if (printable(byte)) return String.fromCharCode(byte);
  let shifted = 0;
  for (let b = 0; b < byte; b++) if (!printable(b)) shifted++;
  return String.fromCharCode(256 + shifted);
}

/** One token per UTF-8 byte of `text`, so every multi-byte character is split across tokens. */
export function singleByteTokens(tokenizer: ModelTokenizer, text: string): number[] {
  return Array.from(new TextEncoder().encode(text), (byte) => {
    const id = tokenizer.tokenId(byteChar(byte));
    if (id === undefined) throw new Error(`no single-byte token for 0x${byte.toString(16)}`);
    return id;
  });
}
