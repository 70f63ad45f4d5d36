import { describe, expect, it } from "vitest";
import { blockHashes } from "../../src/engine/block_hash.ts";
import { BlockPool, type KvBlock } from "../../src/engine/mocker/block_pool.ts";
import { seededRandom } from "../../src/util/seeded_random.ts";
import { range, replay } from "./mocker_helpers.ts";

const BS = 4;

const rng = seededRandom;

/** Allocates and caches `tokens` the way a request admitted with a prefix hit would. */
function admit(pool: BlockPool, tokens: number[]): KvBlock[] {
  const hashes = blockHashes(tokens, BS);
  const hit = pool.longestCachedPrefix(hashes);
  const needed = Math.ceil(tokens.length / BS) - hit.length;
  pool.touch(hit);
  const table = [...hit, ...pool.allocate(needed)];
  const full = hashes.length;
  if (full > hit.length) {
    pool.cacheFullBlocks(
      table.slice(hit.length, full),
      hashes.slice(hit.length, full),
      hit.length === 0 ? undefined : hashes[hit.length - 1],
      tokens.slice(hit.length * BS, full * BS),
    );
  }
  return table;
}

describe("BlockPool", () => {
  it("finds the longest cached prefix of full blocks", () => {
    const pool = new BlockPool({ numBlocks: 8, blockSize: BS, enablePrefixCaching: true });
    const a = range(10);
    admit(pool, a);
    expect(pool.numCachedBlocks).toBe(2); // the partial third block is not cached
    expect(pool.longestCachedPrefix(blockHashes(a, BS))).toHaveLength(2);
    const sharesOneBlock = [...range(4), 99, 98, 97, 96, 95];
    expect(pool.longestCachedPrefix(blockHashes(sharesOneBlock, BS))).toHaveLength(1);
    expect(pool.longestCachedPrefix(blockHashes([7, ...range(9)], BS))).toHaveLength(0);
  });

  it("keeps a freed block cached so a later request reuses it without allocating", () => {
    const pool = new BlockPool({ numBlocks: 4, blockSize: BS, enablePrefixCaching: true });
    const first = admit(pool, range(8));
    pool.free(first);
    expect(pool.numUsedBlocks).toBe(0);
    expect(pool.numCachedBlocks).toBe(2);
    const second = admit(pool, range(8));
    expect(second.map((b) => b.id)).toEqual(first.map((b) => b.id));
    expect(pool.numUsedBlocks).toBe(2);
  });

  it("evicts the least recently freed cached block first, and only when no empty block is left", () => {
    const pool = new BlockPool({ numBlocks: 4, blockSize: BS, enablePrefixCaching: true });
    const seqs = [range(4, 0), range(4, 100), range(4, 200)];
    const hashes = seqs.map((s) => blockHashes(s, BS)[0]);
    for (const s of seqs) pool.free(admit(pool, s));
    pool.drainEvents();
    expect(pool.evictionOrder()).toEqual(hashes);

    pool.allocate(1); // the one empty block
    expect(pool.drainEvents()).toEqual([]);
    pool.allocate(1);
    expect(pool.drainEvents()).toEqual([{ type: "removed", blockHashes: [hashes[0]] }]);

    // A prefix hit takes a block off the LRU list; freeing it again makes it the most recent.
    const hit = admit(pool, seqs[1]);
    pool.free(hit);
    expect(pool.evictionOrder()).toEqual([hashes[2], hashes[1]]);
    pool.allocate(1);
    expect(pool.drainEvents()).toEqual([{ type: "removed", blockHashes: [hashes[2]] }]);
  });

  it("evicts a sequence's last block before its first, so the cached prefix stays usable", () => {
    const pool = new BlockPool({ numBlocks: 3, blockSize: BS, enablePrefixCaching: true });
    const tokens = range(12);
    const hashes = blockHashes(tokens, BS);
    pool.free(admit(pool, tokens));
    pool.drainEvents();
    pool.allocate(1);
    expect(pool.drainEvents()).toEqual([{ type: "removed", blockHashes: [hashes[2]] }]);
    expect(pool.longestCachedPrefix(hashes)).toHaveLength(2);
  });

  it("frees blocks shared by two requests only when both have released them", () => {
    const pool = new BlockPool({ numBlocks: 8, blockSize: BS, enablePrefixCaching: true });
    const shared = range(8);
    const a = admit(pool, [...shared, 50, 51]);
    const b = admit(pool, [...shared, 60, 61, 62]);
    expect(a.slice(0, 2)).toEqual(b.slice(0, 2));
    expect(a[0].refCount).toBe(2);
    expect(pool.numUsedBlocks).toBe(4);
    pool.free(a);
    expect(pool.numUsedBlocks).toBe(3);
    expect(b[0].refCount).toBe(1);
    expect(pool.evictionOrder()).toEqual([]); // a's partial block went back empty, not cached
    pool.free(b);
    expect(pool.numUsedBlocks).toBe(0);
    expect(pool.evictionOrder()).toEqual(blockHashes(shared, BS).reverse());
  });

  it("stores parent-first hashes with the parent hash and the tokens of the stored blocks", () => {
    const pool = new BlockPool({ numBlocks: 8, blockSize: BS, enablePrefixCaching: true });
    const tokens = range(12, 500);
    const hashes = blockHashes(tokens, BS);
    admit(pool, tokens.slice(0, 8));
    const [first] = pool.drainEvents();
    expect(first).toEqual({ type: "stored", blockHashes: hashes.slice(0, 2), tokenIds: tokens.slice(0, 8), blockSize: BS });
    expect("parentBlockHash" in first).toBe(false);
    admit(pool, tokens);
    expect(pool.drainEvents()).toEqual([
      { type: "stored", blockHashes: [hashes[2]], parentBlockHash: hashes[1], tokenIds: tokens.slice(8), blockSize: BS },
    ]);
  });

  it("does not cache or announce a block whose prefix another block already caches", () => {
    const pool = new BlockPool({ numBlocks: 8, blockSize: BS, enablePrefixCaching: true });
    const tokens = range(8);
    const hashes = blockHashes(tokens, BS);
    // Two requests fill the same prefix concurrently: neither found the other's blocks.
    const [a, b] = [pool.allocate(2), pool.allocate(2)];
    pool.cacheFullBlocks(a, hashes, undefined, tokens);
    pool.cacheFullBlocks(b, hashes, undefined, tokens);
    expect(pool.drainEvents()).toHaveLength(1);
    expect(pool.numCachedBlocks).toBe(2);
    pool.free(b);
    expect(pool.evictionOrder()).toEqual([]);
  });

  it("clears every cached block on reset with AllBlocksCleared, but not while blocks are in use", () => {
    const pool = new BlockPool({ numBlocks: 8, blockSize: BS, enablePrefixCaching: true });
    const table = admit(pool, range(8));
    pool.drainEvents();
    expect(pool.resetPrefixCache()).toBe(false);
    expect(pool.drainEvents()).toEqual([]);
    pool.free(table);
    expect(pool.resetPrefixCache()).toBe(true);
    expect(pool.drainEvents()).toEqual([{ type: "cleared" }]);
    expect(pool.numCachedBlocks).toBe(0);
    expect(pool.numFreeBlocks).toBe(8);
    pool.allocate(8);
    expect(pool.drainEvents()).toEqual([]);
  });

  it("neither caches nor emits events when prefix caching is disabled", () => {
    const pool = new BlockPool({ numBlocks: 4, blockSize: BS, enablePrefixCaching: false });
    pool.free(admit(pool, range(8)));
    pool.free(admit(pool, range(8)));
    expect(pool.numCachedBlocks).toBe(0);
    expect(pool.drainEvents()).toEqual([]);
    expect(pool.snapshot()).toEqual([{ type: "cleared" }]);
  });

  it("refuses to allocate more blocks than are free", () => {
    const pool = new BlockPool({ numBlocks: 2, blockSize: BS, enablePrefixCaching: true });
    pool.allocate(2);
    expect(() => pool.allocate(1)).toThrow(/only 0 of 2 are free/);
  });

  it("keeps events, ref counts and the snapshot consistent with the pool under random traffic", () => {
    let evictions = 0;
    for (let seed = 1; seed <= 20; seed++) {
      const random = rng(seed);
      const pool = new BlockPool({ numBlocks: 24, blockSize: BS, enablePrefixCaching: true });
      // A few shared system prompts make prefix hits (and shared blocks) common.
      const families = range(4).map((f) => range(4 + Math.floor(random() * 16), 1000 * f));
      const live: KvBlock[][] = [];
      const replayed = new Set<bigint>();
      for (let op = 0; op < 400; op++) {
        const r = random();
        if (r < 0.5 || live.length === 0) {
          const family = families[Math.floor(random() * families.length)];
          const prefix = family.slice(0, Math.floor(random() * (family.length + 1)));
          const tokens = [...prefix, ...range(Math.floor(random() * 12), 5000 + Math.floor(random() * 50) * 16)];
          if (tokens.length === 0) continue;
          const hit = pool.longestCachedPrefix(blockHashes(tokens, BS));
          const needed = Math.ceil(tokens.length / BS) - hit.length;
          if (pool.numFreeBlocks - pool.countFree(hit) < needed) continue;
          live.push(admit(pool, tokens));
        } else if (r < 0.97) {
          const [table] = live.splice(Math.floor(random() * live.length), 1);
          pool.free(table);
        } else if (live.length === 0) {
          expect(pool.resetPrefixCache()).toBe(true);
        }
        const events = pool.drainEvents();
        evictions += events.filter((e) => e.type === "removed").length;
        replay(events, replayed);
        expect(replayed).toEqual(pool.cachedHashes());

        const refs = new Map<KvBlock, number>();
        for (const table of live) for (const b of table) refs.set(b, (refs.get(b) ?? 0) + 1);
        for (const [block, n] of refs) expect(block.refCount).toBe(n);
        expect(pool.numUsedBlocks).toBe(refs.size);
        expect(pool.numFreeBlocks).toBe(pool.numBlocks - refs.size);
      }
      // The snapshot rebuilds the same set, and never names a cached parent after its child.
      const snapshot = pool.snapshot();
      expect(replay(snapshot)).toEqual(pool.cachedHashes());
      const seen = new Set<bigint>();
      for (const e of snapshot) {
        if (e.type !== "stored") continue;
        if (e.parentBlockHash !== undefined && pool.cachedHashes().has(e.parentBlockHash)) expect(seen.has(e.parentBlockHash)).toBe(true);
        expect(e.tokenIds).toHaveLength(e.blockHashes.length * BS);
        for (const h of e.blockHashes) seen.add(h);
      }
    }
    expect(evictions).toBeGreaterThan(0);
  });
});
