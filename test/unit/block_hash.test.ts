import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { BLOCK_HASH_SEED, blockHash, blockHashes, ROOT_PARENT_HASH, xxh64 } from "../../src/engine/block_hash.ts";

const vectors = JSON.parse(readFileSync(new URL("../vectors/block_hash.json", import.meta.url), "utf8"));
const hex = (h: bigint) => "0x" + h.toString(16).padStart(16, "0");

describe("block hash", () => {
  it("uses the real XXH64 (published values for '', 'a', 'abc')", () => {
    for (const v of vectors.xxh64) {
      expect(hex(xxh64(new TextEncoder().encode(v.input_utf8), BigInt(v.seed)))).toBe(v.xxh64);
    }
    expect(hex(xxh64(new Uint8Array(), 0n))).toBe("0xef46db3751d8e999");
    expect(vectors.seed).toBe(hex(BLOCK_HASH_SEED));
  });

  it("matches the pinned chained block hash vectors", () => {
    for (const c of vectors.block_hash) {
      expect(blockHashes(c.token_ids, c.block_size).map(hex)).toEqual(c.block_hashes);
    }
  });

  it("hashes only full blocks and chains through the parent", () => {
    const tokens = Array.from({ length: 50 }, (_, i) => i * 7);
    const hashes = blockHashes(tokens, 16);
    expect(hashes).toHaveLength(3);
    expect(blockHash(ROOT_PARENT_HASH, tokens.slice(0, 16))).toBe(hashes[0]);
    expect(blockHash(hashes[0], tokens.slice(16, 32))).toBe(hashes[1]);
    expect(blockHashes(tokens.slice(32), 16, hashes[1])).toEqual([hashes[2]]);
  });

  it("gives different hashes to equal blocks behind different prefixes", () => {
    const a = blockHashes([1, 2, 3, 4, 9, 9, 9, 9], 4);
    const b = blockHashes([5, 6, 7, 8, 9, 9, 9, 9], 4);
    expect(a[1]).not.toBe(b[1]);
  });
});
