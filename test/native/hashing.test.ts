import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { blockHashes } from "../../src/engine/block_hash.ts";
import { loadNativeAddon } from "../../src/engine/native/native_engine.ts";

const vectors = JSON.parse(readFileSync(new URL("../vectors/block_hash.json", import.meta.url), "utf8"));
const hex = (h: bigint) => "0x" + h.toString(16).padStart(16, "0");

describe("native block hash", () => {
  const addon = loadNativeAddon();

  it("computes XXH64 as the published vectors say", () => {
    for (const v of vectors.xxh64) {
      expect(hex(addon.xxh64(new TextEncoder().encode(v.input_utf8), BigInt(v.seed)))).toBe(v.xxh64);
    }
  });

  it("agrees with the TypeScript XXH64 at every input length up to 100 bytes", async () => {
    const { xxh64 } = await import("../../src/engine/block_hash.ts");
    for (let n = 0; n <= 100; n++) {
      const bytes = Uint8Array.from({ length: n }, (_, i) => (i * 131 + n) & 0xff);
      expect(addon.xxh64(bytes, 0x5357495443485944n)).toBe(xxh64(bytes, 0x5357495443485944n));
    }
  });

  it("matches the pinned chained block hash vectors", () => {
    for (const c of vectors.block_hash) {
      expect(addon.blockHashes(c.token_ids, c.block_size).map(hex)).toEqual(c.block_hashes);
    }
  });

  it("agrees with the TypeScript block hash on random token runs", () => {
    let x = 12345;
    for (let trial = 0; trial < 50; trial++) {
      const length = trial * 3;
      const tokens = Array.from({ length }, () => (x = (x * 1103515245 + 12345) >>> 0) % 200000);
      const blockSize = 1 + (trial % 17);
      expect(addon.blockHashes(tokens, blockSize)).toEqual(blockHashes(tokens, blockSize));
      expect(addon.blockHashes(tokens, blockSize, 42n)).toEqual(blockHashes(tokens, blockSize, 42n));
    }
  });
});
