/**
 * One request as the mocker's scheduler sees it: its tokens (prompt, then outputs), the KV
 * blocks that hold them and how many of them have their KV computed.
 *
 * Token positions: `tokenIds[0 .. numComputedTokens)` have KV in `blockTable`; the last
 * sampled token has none until the next step computes it. Full blocks are hashed as soon as
 * their tokens are known (`blockHashes`), and cached in the pool once their KV is computed
 * (`numStoredBlocks` counts those already handed to the pool).
 */
import { blockHash, ROOT_PARENT_HASH } from "../block_hash.ts";
import type { RemotePrefill, SamplingParams } from "../engine.ts";
import type { KvBlock } from "./block_pool.ts";

/** "fetching": admitted with blocks reserved for a remote prefill's KV, taking no step until it arrives. */
export type SequenceStatus = "waiting" | "fetching" | "running" | "finished";

export class Sequence {
  readonly requestId: string;
  readonly sampling: SamplingParams;
  readonly numPromptTokens: number;
  /** Prompt then outputs. */
  readonly tokenIds: number[];
  /** Chained hashes of every full block of `tokenIds`. */
  readonly blockHashes: bigint[] = [];
  blockTable: KvBlock[] = [];
  numComputedTokens = 0;
  /** Full blocks at the start of `blockTable` already cached (or offered to the cache). */
  numStoredBlocks = 0;
  /** Prompt tokens served by the prefix cache when first scheduled; -1 before that. */
  numCachedTokens = -1;
  status: SequenceStatus = "waiting";
  numPreemptions = 0;
  /** Set until the prompt's KV, computed by another worker, has been fetched or given up on. */
  remotePrefill?: RemotePrefill;

  constructor(
    requestId: string,
    promptTokenIds: readonly number[],
    sampling: SamplingParams,
    private readonly blockSize: number,
  ) {
    this.requestId = requestId;
    this.sampling = sampling;
    this.numPromptTokens = promptTokenIds.length;
    this.tokenIds = [...promptTokenIds];
    this.hashNewFullBlocks();
  }

  get numTokens(): number {
    return this.tokenIds.length;
  }

  get numOutputTokens(): number {
    return this.tokenIds.length - this.numPromptTokens;
  }

  get outputTokenIds(): number[] {
    return this.tokenIds.slice(this.numPromptTokens);
  }

  get lastTokenId(): number {
    return this.tokenIds[this.tokenIds.length - 1];
  }

  /** True while the next step would compute KV of prompt tokens (or recompute after preemption). */
  get isPrefilling(): boolean {
    return this.numComputedTokens < this.numTokens - 1 || this.numOutputTokens === 0;
  }

  appendToken(tokenId: number): void {
    this.tokenIds.push(tokenId);
    this.hashNewFullBlocks();
  }

  /** Forgets all KV (preemption by recomputation): the tokens stay, everything is computed again. */
  resetComputed(): void {
    this.blockTable = [];
    this.numComputedTokens = 0;
    this.numStoredBlocks = 0;
  }

  private hashNewFullBlocks(): void {
    const bs = this.blockSize;
    const full = Math.floor(this.tokenIds.length / bs);
    for (let b = this.blockHashes.length; b < full; b++) {
      const parent = b === 0 ? ROOT_PARENT_HASH : this.blockHashes[b - 1];
      this.blockHashes.push(blockHash(parent, this.tokenIds.slice(b * bs, (b + 1) * bs)));
    }
  }
}
