/**
 * Which worker holds which KV-cache block: the prefix tree of every worker's cached blocks,
 * keyed by chained block hash.
 *
 * Because hash(block_i) commits to every token before it (src/engine/block_hash.ts), a block
 * hash names one node of the prefix tree of all token sequences: the path from the root is
 * implied by the hash itself. So the tree is kept as a map from hash to node, with the parent
 * edges left implicit, and a lookup walks the request's own hash chain: block i of the request
 * is found in O(1) instead of by descending i levels. A node records the set of workers
 * holding that block as a bitset over worker slots (small integers the caller assigns), which
 * makes a match a word-wise AND per block whatever the number of workers.
 *
 * A worker's overlap with a request is the number of leading request blocks it holds, counted
 * from block 0 without a hole: KV of block i is useless without the blocks before it.
 *
 * Invariants: a node exists iff at least one worker holds its block; `blockCount(slot)` equals
 * the number of nodes whose bitset has `slot`.
 */

interface BlockNode {
  /** Bit s of word s >> 5 is set when worker slot s holds this block. */
  holders: number[];
  holderCount: number;
}

export class PrefixTree {
  private readonly nodes = new Map<bigint, BlockNode>();
  private readonly counts: number[] = [];

  /** Distinct blocks held by at least one worker. */
  get size(): number {
    return this.nodes.size;
  }

  /** Blocks held by one worker slot. */
  blockCount(slot: number): number {
    return this.counts[slot] ?? 0;
  }

  /** (worker, block) pairs over all workers. */
  totalEntries(): number {
    let total = 0;
    for (const count of this.counts) total += count ?? 0;
    return total;
  }

  /** Records that `slot` holds each block; storing a block twice is a no-op. */
  store(slot: number, blockHashes: readonly bigint[]): void {
    const word = slot >> 5;
    const bit = 1 << (slot & 31);
    let added = 0;
    for (let i = 0; i < blockHashes.length; i++) {
      const hash = blockHashes[i];
      let node = this.nodes.get(hash);
      if (node === undefined) {
        node = { holders: [], holderCount: 0 };
        this.nodes.set(hash, node);
      }
      const holders = node.holders;
      while (holders.length <= word) holders.push(0);
      if ((holders[word] & bit) === 0) {
        holders[word] |= bit;
        node.holderCount++;
        added++;
      }
    }
    this.counts[slot] = (this.counts[slot] ?? 0) + added;
  }

  /** Records that `slot` no longer holds these blocks; unknown blocks are ignored. */
  remove(slot: number, blockHashes: readonly bigint[]): void {
    const word = slot >> 5;
    const bit = 1 << (slot & 31);
    let removed = 0;
    for (let i = 0; i < blockHashes.length; i++) {
      const hash = blockHashes[i];
      const node = this.nodes.get(hash);
      if (node === undefined || word >= node.holders.length || (node.holders[word] & bit) === 0) continue;
      node.holders[word] &= ~bit;
      removed++;
      if (--node.holderCount === 0) this.nodes.delete(hash);
    }
    if (removed > 0) this.counts[slot] -= removed;
  }

  /**
   * Drops every block of `slot`. This scans the tree (O(nodes)); it runs on a worker's
   * AllBlocksCleared, gap, reconnect or departure, never per request.
   */
  clear(slot: number): void {
    if (this.blockCount(slot) === 0) return;
    const word = slot >> 5;
    const bit = 1 << (slot & 31);
    for (const [hash, node] of this.nodes) {
      if (word >= node.holders.length || (node.holders[word] & bit) === 0) continue;
      node.holders[word] &= ~bit;
      if (--node.holderCount === 0) this.nodes.delete(hash);
    }
    this.counts[slot] = 0;
  }

  /** Whether `slot` holds the block. */
  holds(slot: number, blockHash: bigint): boolean {
    const node = this.nodes.get(blockHash);
    const word = slot >> 5;
    return node !== undefined && word < node.holders.length && (node.holders[word] & (1 << (slot & 31))) !== 0;
  }

  /**
   * Calls `onOverlap(slot, blocks)` once for every slot holding at least block 0 of the
   * request, with the number of leading request blocks that slot holds.
   */
  match(blockHashes: readonly bigint[], onOverlap: (slot: number, blocks: number) => void): void {
    if (blockHashes.length === 0) return;
    const first = this.nodes.get(blockHashes[0]);
    if (first === undefined) return;
    // `active` holds the slots that hold every block so far; a slot leaving it at block i has
    // overlap i.
    const active = first.holders.slice();
    let depth = 1;
    for (; depth < blockHashes.length; depth++) {
      const node = this.nodes.get(blockHashes[depth]);
      let any = 0;
      for (let w = 0; w < active.length; w++) {
        const before = active[w];
        if (before === 0) continue;
        const after = node !== undefined && w < node.holders.length ? before & node.holders[w] : 0;
        if (after !== before) {
          reportBits(before & ~after, w, depth, onOverlap);
          active[w] = after;
        }
        any |= after;
      }
      if (any === 0) return;
    }
    for (let w = 0; w < active.length; w++) if (active[w] !== 0) reportBits(active[w], w, depth, onOverlap);
  }
}

function reportBits(bits: number, word: number, blocks: number, onOverlap: (slot: number, blocks: number) => void): void {
  while (bits !== 0) {
    const low = bits & -bits;
    onOverlap(word * 32 + 31 - Math.clz32(low), blocks);
    bits ^= low;
  }
}
