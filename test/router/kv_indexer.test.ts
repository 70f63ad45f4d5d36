import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { blockHashes } from "../../src/engine/block_hash.ts";
import { KvIndexer } from "../../src/router/kv/kv_indexer.ts";
import { batch } from "./helpers.ts";

const vectors = JSON.parse(readFileSync(new URL("../vectors/block_hash.json", import.meta.url), "utf8"));

describe("KvIndexer", () => {
  it("applies a snapshot, then live batches in sequence", () => {
    const indexer = new KvIndexer();
    expect(indexer.applyEvents("a", batch(0, ["cleared", { stored: [1n, 2n] }]))).toBe("applied");
    expect(indexer.applyEvents("a", batch(1, [{ stored: [3n], parent: 2n }]))).toBe("applied");
    expect(indexer.applyEvents("a", batch(2, [{ removed: [3n] }]))).toBe("applied");
    expect(indexer.findMatches([1n, 2n, 3n])).toEqual(new Map([["a", 2]]));
    expect(indexer.isSynced("a")).toBe(true);
  });

  it("drops a worker's entries on a sequence gap and ignores batches until the next snapshot", () => {
    const indexer = new KvIndexer();
    indexer.applyEvents("a", batch(5, ["cleared", { stored: [1n, 2n] }]));
    indexer.applyEvents("b", batch(0, ["cleared", { stored: [1n] }]));
    expect(indexer.applyEvents("a", batch(7, [{ stored: [3n] }]))).toBe("gap");
    expect(indexer.blockCount("a")).toBe(0);
    expect(indexer.isSynced("a")).toBe(false);
    expect(indexer.findMatches([1n, 2n])).toEqual(new Map([["b", 1]]));
    expect(indexer.applyEvents("a", batch(8, [{ stored: [4n] }]))).toBe("awaiting_snapshot");
    expect(indexer.blockCount("a")).toBe(0);
    // The resubscription's snapshot restores the worker, whatever its sequence.
    expect(indexer.applyEvents("a", batch(8, [{ stored: [1n, 2n, 3n] }]), { snapshot: true })).toBe("applied");
    expect(indexer.applyEvents("a", batch(9, [{ stored: [4n] }]))).toBe("applied");
    expect(indexer.findMatches([1n, 2n, 3n, 4n]).get("a")).toBe(4);
  });

  it("ignores a batch it already applied", () => {
    const indexer = new KvIndexer();
    indexer.applyEvents("a", batch(0, ["cleared"]));
    indexer.applyEvents("a", batch(1, [{ stored: [1n] }]));
    expect(indexer.applyEvents("a", batch(1, [{ stored: [1n] }]))).toBe("stale");
    expect(indexer.applyEvents("a", batch(2, [{ removed: [1n] }]))).toBe("applied");
    expect(indexer.blockCount("a")).toBe(0);
  });

  it("waits for a snapshot from a worker it has never synced", () => {
    const indexer = new KvIndexer();
    expect(indexer.applyEvents("a", batch(3, [{ stored: [1n] }]))).toBe("awaiting_snapshot");
    expect(indexer.blockCount("a")).toBe(0);
  });

  it("replaces a worker's view with a new snapshot", () => {
    const indexer = new KvIndexer();
    indexer.applyEvents("a", batch(0, ["cleared", { stored: [1n, 2n] }]));
    indexer.applyEvents("a", batch(4, [{ stored: [7n] }]), { snapshot: true });
    expect(indexer.findMatches([1n])).toEqual(new Map());
    expect(indexer.blockCount("a")).toBe(1);
  });

  it("clears on AllBlocksCleared inside a live batch", () => {
    const indexer = new KvIndexer();
    indexer.applyEvents("a", batch(0, ["cleared", { stored: [1n, 2n] }]));
    indexer.applyEvents("a", batch(1, [{ stored: [3n] }, "cleared", { stored: [9n] }]));
    expect(indexer.blockCount("a")).toBe(1);
    expect(indexer.findMatches([9n]).get("a")).toBe(1);
  });

  it("forgets a worker that leaves and reuses its slot", () => {
    const indexer = new KvIndexer();
    indexer.applyEvents("a", batch(0, ["cleared", { stored: [1n] }]));
    indexer.applyEvents("b", batch(0, ["cleared", { stored: [1n] }]));
    indexer.removeWorker("a");
    expect(indexer.workerIds()).toEqual(["b"]);
    indexer.applyEvents("c", batch(0, ["cleared", { stored: [2n] }]));
    expect(indexer.findMatches([1n])).toEqual(new Map([["b", 1]]));
    expect(indexer.findMatches([2n])).toEqual(new Map([["c", 1]]));
  });

  it("matches a prompt by the same chained block hashes the engines publish (test vectors)", () => {
    const indexer = new KvIndexer();
    for (const [i, v] of vectors.block_hash.entries()) {
      const published = v.block_hashes.map((h: string) => BigInt(h));
      const worker = `w${i}`;
      indexer.applyEvents(worker, batch(0, ["cleared", { stored: published }]));
      const routerHashes = blockHashes(v.token_ids, v.block_size);
      expect(indexer.findMatches(routerHashes).get(worker) ?? 0).toBe(published.length);
    }
  });
});
