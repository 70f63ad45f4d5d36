/**
 * The mocker's paged KV cache: a fixed pool of blocks with prefix caching, reference counts
 * and LRU eviction, shaped after vLLM v1's block pool. No KV is stored; what is simulated is
 * which block holds which chained block hash, because that is what the router sees through
 * KV events.
 *
 * Invariants:
 * - A block is in use (refCount > 0), free and cached (refCount 0, has a hash; reusable by a
 *   prefix hit), or free and empty.
 * - `cached` maps each cached hash to exactly one block. When a block fills with a hash that
 *   another block already caches (two requests computed the same prefix concurrently), it is
 *   not cached a second time and no event is sent, so a subscriber that replays the events
 *   into a set of hashes holds exactly the keys of `cached`.
 * - A fresh block comes from the empty free blocks first; only when none is left is the least
 *   recently freed cached block evicted (BlockRemoved). vLLM keeps one queue for both kinds;
 *   taking empty blocks first keeps cached prefixes around longer and evicts only when a
 *   fresh block is really needed.
 * - A request frees its blocks last block first, so the tail of a sequence is evicted before
 *   its head: an evicted head would make every block after it unreachable by prefix lookup.
 */
import type { KvEvent } from "../engine.ts";

export interface KvBlock {
  readonly id: number;
  refCount: number;
  /** Set while the block is cached. */
  hash?: bigint;
  /** The hash of the block before it in its sequence; undefined for a sequence's first block. */
  parentHash?: bigint;
  /** The block's tokens, kept for BlockStored events and snapshots while cached. */
  tokenIds?: number[];
  // Links of the LRU list of free cached blocks.
  prev?: KvBlock;
  next?: KvBlock;
}

export interface BlockPoolOptions {
  numBlocks: number;
  blockSize: number;
  enablePrefixCaching: boolean;
}

/** Doubly linked list of free cached blocks, least recently freed at the head. */
class LruList {
  private head?: KvBlock;
  private tail?: KvBlock;
  size = 0;

  pushTail(block: KvBlock): void {
    block.prev = this.tail;
    block.next = undefined;
    if (this.tail) this.tail.next = block;
    else this.head = block;
    this.tail = block;
    this.size++;
  }

  remove(block: KvBlock): void {
    if (block.prev) block.prev.next = block.next;
    else this.head = block.next;
    if (block.next) block.next.prev = block.prev;
    else this.tail = block.prev;
    block.prev = block.next = undefined;
    this.size--;
  }

  popHead(): KvBlock | undefined {
    const block = this.head;
    if (block) this.remove(block);
    return block;
  }

  *[Symbol.iterator](): IterableIterator<KvBlock> {
    for (let b = this.head; b; b = b.next) yield b;
  }
}

export class BlockPool {
  readonly numBlocks: number;
  readonly blockSize: number;
  readonly enablePrefixCaching: boolean;
  private readonly blocks: KvBlock[];
  /** Free blocks without a hash; taken before any cached block is evicted. */
  private readonly emptyFree: KvBlock[];
  private readonly cachedFree = new LruList();
  private readonly cached = new Map<bigint, KvBlock>();
  private pendingEvents: KvEvent[] = [];
  private usedBlocks = 0;
  /** Prefix cache lookups, counted in tokens as vLLM's prefix cache hit rate is. */
  prefixCacheQueryTokens = 0;
  prefixCacheHitTokens = 0;

  constructor(options: BlockPoolOptions) {
    if (!Number.isInteger(options.numBlocks) || options.numBlocks < 1) {
      throw new Error(`numBlocks must be a positive integer, got ${options.numBlocks}`);
    }
    if (!Number.isInteger(options.blockSize) || options.blockSize < 1) {
      throw new Error(`blockSize must be a positive integer, got ${options.blockSize}`);
    }
    this.numBlocks = options.numBlocks;
    this.blockSize = options.blockSize;
    this.enablePrefixCaching = options.enablePrefixCaching;
    this.blocks = Array.from({ length: options.numBlocks }, (_, id) => ({ id, refCount: 0 }));
    // Reversed so that pop() hands out block 0 first; only cosmetic.
    this.emptyFree = [...this.blocks].reverse();
  }

  /** Blocks held by at least one request. */
  get numUsedBlocks(): number {
    return this.usedBlocks;
  }

  /** Blocks a request could get now: empty ones plus evictable cached ones. */
  get numFreeBlocks(): number {
    return this.numBlocks - this.usedBlocks;
  }

  get numCachedBlocks(): number {
    return this.cached.size;
  }

  cachedHashes(): Set<bigint> {
    return new Set(this.cached.keys());
  }

  /** Free cached blocks in eviction order (next to be evicted first); for tests and debugging. */
  evictionOrder(): bigint[] {
    return [...this.cachedFree].map((b) => b.hash!);
  }

  /**
   * The longest run of cached blocks matching `hashes` from the start. Does not take
   * references: call `touch` once the request is sure to be admitted.
   */
  longestCachedPrefix(hashes: readonly bigint[]): KvBlock[] {
    if (!this.enablePrefixCaching) return [];
    const hit: KvBlock[] = [];
    for (const hash of hashes) {
      const block = this.cached.get(hash);
      if (!block) break;
      hit.push(block);
    }
    return hit;
  }

  recordPrefixLookup(queryTokens: number, hitTokens: number): void {
    this.prefixCacheQueryTokens += queryTokens;
    this.prefixCacheHitTokens += hitTokens;
  }

  /** How many of `blocks` sit in the free lists (and would stop being allocatable once touched). */
  countFree(blocks: readonly KvBlock[]): number {
    let n = 0;
    for (const b of blocks) if (b.refCount === 0) n++;
    return n;
  }

  /** Takes a reference on each block (prefix hit); a free cached block leaves the LRU list. */
  touch(blocks: readonly KvBlock[]): void {
    for (const block of blocks) {
      if (block.refCount === 0) {
        this.cachedFree.remove(block);
        this.usedBlocks++;
      }
      block.refCount++;
    }
  }

  /** `n` fresh blocks with one reference each, evicting cached blocks as needed. */
  allocate(n: number): KvBlock[] {
    if (n > this.numFreeBlocks) {
      throw new Error(`cannot allocate ${n} KV blocks: only ${this.numFreeBlocks} of ${this.numBlocks} are free`);
    }
    const out: KvBlock[] = new Array(n);
    let evicted: bigint[] | undefined;
    for (let i = 0; i < n; i++) {
      let block = this.emptyFree.pop();
      if (!block) {
        block = this.cachedFree.popHead()!;
        (evicted ??= []).push(block.hash!);
        this.uncache(block);
      }
      block.refCount = 1;
      out[i] = block;
    }
    this.usedBlocks += n;
    if (evicted) this.pendingEvents.push({ type: "removed", blockHashes: evicted });
    return out;
  }

  /**
   * Drops one reference from each block of a request's block table. Walks the table from its
   * end, so the sequence's last block becomes the first to be evicted.
   */
  free(blockTable: readonly KvBlock[]): void {
    for (let i = blockTable.length - 1; i >= 0; i--) {
      const block = blockTable[i];
      if (block.refCount <= 0) throw new Error(`KV block ${block.id} freed more often than referenced`);
      if (--block.refCount > 0) continue;
      this.usedBlocks--;
      if (block.hash !== undefined) this.cachedFree.pushTail(block);
      else this.emptyFree.push(block);
    }
  }

  /**
   * Caches blocks that have just become full, in sequence order, and queues the BlockStored
   * events. `hashes[i]` is the chained hash of `blocks[i]`, `parentHash` the hash of the block
   * before `blocks[0]` (undefined when it starts the sequence) and `tokenIds` the tokens of
   * all the blocks, blockSize each.
   */
  cacheFullBlocks(blocks: readonly KvBlock[], hashes: readonly bigint[], parentHash: bigint | undefined, tokenIds: readonly number[]): void {
    if (!this.enablePrefixCaching) return;
    const bs = this.blockSize;
    let run: { hashes: bigint[]; parent: bigint | undefined; start: number } | undefined;
    const flush = (end: number) => {
      if (!run) return;
      this.pendingEvents.push({
        type: "stored",
        blockHashes: run.hashes,
        ...(run.parent !== undefined ? { parentBlockHash: run.parent } : {}),
        tokenIds: tokenIds.slice(run.start * bs, end * bs),
        blockSize: bs,
      });
      run = undefined;
    };
    let parent = parentHash;
    for (let i = 0; i < blocks.length; i++) {
      const block = blocks[i];
      const hash = hashes[i];
      if (block.hash !== undefined) throw new Error(`KV block ${block.id} is already cached`);
      if (this.cached.has(hash)) {
        // Another block already holds this prefix: the duplicate stays uncached.
        flush(i);
      } else {
        block.hash = hash;
        block.parentHash = parent;
        block.tokenIds = tokenIds.slice(i * bs, (i + 1) * bs) as number[];
        this.cached.set(hash, block);
        run ??= { hashes: [], parent, start: i };
        run.hashes.push(hash);
      }
      parent = hash;
    }
    flush(blocks.length);
  }

  /**
   * Forgets every cached hash (AllBlocksCleared). Like vLLM, refuses while any block is in
   * use, since a running request's blocks cannot lose their contents; returns whether it reset.
   */
  resetPrefixCache(): boolean {
    if (this.usedBlocks > 0) return false;
    for (const block of this.cachedFree) this.emptyFree.push(block);
    while (this.cachedFree.popHead());
    for (const block of this.cached.values()) this.uncache(block);
    this.pendingEvents.push({ type: "cleared" });
    return true;
  }

  /** Events queued since the last call, in the order the pool changed. */
  drainEvents(): KvEvent[] {
    const events = this.pendingEvents;
    this.pendingEvents = [];
    return events;
  }

  /**
   * Events that rebuild the cached contents from nothing: AllBlocksCleared, then BlockStored
   * events walking each chain from its root, so parents always come before children. A chain
   * without branches becomes one event.
   */
  snapshot(): KvEvent[] {
    const events: KvEvent[] = [{ type: "cleared" }];
    const children = new Map<bigint, KvBlock[]>();
    const roots: KvBlock[] = [];
    for (const block of this.cached.values()) {
      const parent = block.parentHash;
      if (parent === undefined || !this.cached.has(parent)) {
        roots.push(block);
      } else {
        let list = children.get(parent);
        if (!list) children.set(parent, (list = []));
        list.push(block);
      }
    }
    const stack = [...roots].reverse();
    while (stack.length > 0) {
      let block = stack.pop()!;
      const event = {
        type: "stored" as const,
        blockHashes: [] as bigint[],
        ...(block.parentHash !== undefined ? { parentBlockHash: block.parentHash } : {}),
        tokenIds: [] as number[],
        blockSize: this.blockSize,
      };
      for (;;) {
        event.blockHashes.push(block.hash!);
        event.tokenIds.push(...block.tokenIds!);
        const next = children.get(block.hash!);
        if (!next) break;
        if (next.length === 1) {
          block = next[0];
          continue;
        }
        for (let i = next.length - 1; i >= 0; i--) stack.push(next[i]);
        break;
      }
      events.push(event);
    }
    return events;
  }

  private uncache(block: KvBlock): void {
    this.cached.delete(block.hash!);
    block.hash = undefined;
    block.parentHash = undefined;
    block.tokenIds = undefined;
  }
}
