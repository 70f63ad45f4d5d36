import { describe, expect, it } from "vitest";
import { ByteStreamDetokenizer, WindowDetokenizer, type Detokenizer } from "../../src/frontend/detokenizer.ts";
import { tokenizerFor } from "../../src/frontend/tokenizer.ts";
import { singleByteTokens } from "./byte_tokens.ts";
import { QWEN3_DIR } from "./fake_router.ts";

const tokenizer = tokenizerFor(QWEN3_DIR);

function run(detokenizer: Detokenizer, ids: number[]): string[] {
  const deltas = ids.map((id) => detokenizer.push(id));
  deltas.push(detokenizer.flush());
  return deltas;
}

const implementations = {
  window: (prompt: number[], skip: boolean) => new WindowDetokenizer(tokenizer, prompt, skip),
  "byte stream": (_prompt: number[], skip: boolean) => new ByteStreamDetokenizer(tokenizer, skip),
};

/** A small deterministic generator, so a failing case can be replayed. */
function lcg(seed: number): () => number {
  let state = seed >>> 0;
  return () => (state = (Math.imul(state, 1664525) + 1013904223) >>> 0) / 2 ** 32;
}

describe.each(Object.entries(implementations))("%s detokenizer", (_name, make) => {
  it("streams text whose concatenation equals decoding the whole sequence, spaces included", () => {
    const ids = tokenizer.encode("Hello, world! The quick brown fox jumps over the lazy dog.", false);
    const deltas = run(make([], true), ids);
    expect(deltas.join("")).toBe(tokenizer.decode(ids, true));
    expect(deltas).toContain(" world");
  });

  it("never emits half a UTF-8 character when multi-byte characters are split across tokens", () => {
    const text = "né 你好 😀!";
    const deltas = run(make([], true), singleByteTokens(tokenizer, text));
    expect(deltas.join("")).toBe(text);
    for (const delta of deltas) expect(delta).not.toContain("\uFFFD");
    // The emoji's four bytes come out together, on its last byte.
    expect(deltas.filter((d) => d.includes("😀"))).toEqual(["😀"]);
  });

  it("drops special tokens with skip_special_tokens and keeps them without", () => {
    const ids = [...tokenizer.encode("Hi", false), tokenizer.tokenId("<|im_end|>")!];
    expect(run(make([], true), ids).join("")).toBe("Hi");
    expect(run(make([], false), ids).join("")).toBe("Hi<|im_end|>");
  });

  it("matches the tokenizer's decode on random token sequences", () => {
    const random = lcg(7);
    const bytes = singleByteTokens(tokenizer, "ü你😀 ");
    for (let round = 0; round < 50; round++) {
      const ids = Array.from({ length: 1 + Math.floor(random() * 30) }, () =>
        random() < 0.5 ? bytes[Math.floor(random() * bytes.length)] : Math.floor(random() * 151_000),
      );
      expect(run(make([9707], true), ids).join("")).toBe(tokenizer.decode(ids, true));
    }
  });

  it("gives for a run of tokens pushed at once what pushing them one by one gives", () => {
    const random = lcg(11);
    const bytes = singleByteTokens(tokenizer, "ü你😀 ");
    const special = tokenizer.tokenId("<|im_end|>")!;
    for (let round = 0; round < 50; round++) {
      const ids = Array.from({ length: 1 + Math.floor(random() * 60) }, () => {
        const r = random();
        return r < 0.45 ? bytes[Math.floor(random() * bytes.length)] : r < 0.5 ? special : Math.floor(random() * 151_000);
      });
      for (const skip of [true, false]) {
        const oneByOne = make([9707], skip);
        const batched = make([9707], skip);
        // Messages of random sizes, as merged worker outputs arrive; each must match up to its end.
        for (let at = 0; at < ids.length; ) {
          const count = Math.min(ids.length - at, 1 + Math.floor(random() * 8));
          const message = ids.slice(at, at + count);
          expect(batched.pushMany(message, count)).toBe(message.map((id) => oneByOne.push(id)).join(""));
          at += count;
        }
        expect(batched.flush()).toBe(oneByOne.flush());
      }
    }
  });
});
