import { describe, expect, it } from "vitest";
import { PrefixTree } from "../../src/router/kv/prefix_tree.ts";

function overlaps(tree: PrefixTree, hashes: bigint[]): Record<number, number> {
  const out: Record<number, number> = {};
  tree.match(hashes, (slot, blocks) => (out[slot] = blocks));
  return out;
}

describe("PrefixTree", () => {
  it("reports each worker's matched leading blocks", () => {
    const tree = new PrefixTree();
    tree.store(0, [1n, 2n, 3n]);
    tree.store(1, [1n, 2n]);
    tree.store(2, [9n]);
    expect(overlaps(tree, [1n, 2n, 3n, 4n])).toEqual({ 0: 3, 1: 2 });
    expect(overlaps(tree, [1n, 5n])).toEqual({ 0: 1, 1: 1 });
    expect(overlaps(tree, [9n, 2n])).toEqual({ 2: 1 });
    expect(overlaps(tree, [7n])).toEqual({});
    expect(overlaps(tree, [])).toEqual({});
  });

  it("stops a worker's overlap at its first missing block even if later ones are cached", () => {
    const tree = new PrefixTree();
    tree.store(0, [1n, 2n, 3n, 4n]);
    tree.remove(0, [2n]);
    expect(overlaps(tree, [1n, 2n, 3n, 4n])).toEqual({ 0: 1 });
    expect(tree.blockCount(0)).toBe(3);
  });

  it("counts a block stored twice once and ignores removal of unknown blocks", () => {
    const tree = new PrefixTree();
    tree.store(3, [1n, 2n]);
    tree.store(3, [1n, 2n]);
    tree.remove(3, [42n]);
    tree.remove(4, [1n]);
    expect(tree.blockCount(3)).toBe(2);
    expect(tree.size).toBe(2);
    expect(overlaps(tree, [1n, 2n])).toEqual({ 3: 2 });
  });

  it("deletes a node when its last holder removes it", () => {
    const tree = new PrefixTree();
    tree.store(0, [1n]);
    tree.store(1, [1n]);
    tree.remove(0, [1n]);
    expect(tree.size).toBe(1);
    tree.remove(1, [1n]);
    expect(tree.size).toBe(0);
  });

  it("clears one worker and keeps the others", () => {
    const tree = new PrefixTree();
    tree.store(0, [1n, 2n]);
    tree.store(1, [1n, 3n]);
    tree.clear(0);
    expect(tree.blockCount(0)).toBe(0);
    expect(tree.size).toBe(2);
    expect(overlaps(tree, [1n, 2n])).toEqual({ 1: 1 });
    expect(overlaps(tree, [1n, 3n])).toEqual({ 1: 2 });
  });

  it("handles slots beyond the first 32-bit word", () => {
    const tree = new PrefixTree();
    for (let slot = 0; slot < 100; slot++) tree.store(slot, [1n, BigInt(slot % 2 === 0 ? 2 : 3)]);
    const result = overlaps(tree, [1n, 2n]);
    expect(Object.keys(result)).toHaveLength(100);
    expect(result[31]).toBe(1);
    expect(result[64]).toBe(2);
    expect(result[99]).toBe(1);
    tree.clear(64);
    expect(overlaps(tree, [1n, 2n])[64]).toBeUndefined();
  });

  it("agrees with a naive per-worker set model after random operations", () => {
    let seed = 12345;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const workers = 40;
    const tree = new PrefixTree();
    const naive: Set<bigint>[] = Array.from({ length: workers }, () => new Set());
    // Hashes of a small universe of chains, so workers often share prefixes.
    const chain = (root: number, length: number) => Array.from({ length }, (_, i) => BigInt(root * 1000 + i + 1));
    for (let step = 0; step < 5000; step++) {
      const slot = rand(workers);
      const op = rand(10);
      if (op < 6) {
        const start = rand(4);
        const hashes = chain(rand(5), 12).slice(start, start + 1 + rand(8));
        tree.store(slot, hashes);
        for (const h of hashes) naive[slot].add(h);
      } else if (op < 9) {
        const hashes = chain(rand(5), 12).filter(() => rand(3) === 0);
        tree.remove(slot, hashes);
        for (const h of hashes) naive[slot].delete(h);
      } else {
        tree.clear(slot);
        naive[slot].clear();
      }
      if (step % 50 === 0) {
        const query = chain(rand(5), 1 + rand(12));
        const expected: Record<number, number> = {};
        naive.forEach((set, s) => {
          let n = 0;
          while (n < query.length && set.has(query[n])) n++;
          if (n > 0) expected[s] = n;
        });
        expect(overlaps(tree, query)).toEqual(expected);
        naive.forEach((set, s) => expect(tree.blockCount(s)).toBe(set.size));
        expect(tree.size).toBe(new Set(naive.flatMap((set) => [...set])).size);
      }
    }
  });
});
