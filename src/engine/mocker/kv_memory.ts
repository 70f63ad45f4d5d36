/**
 * The mocker's stand-in for KV-cache memory, so that disaggregated serving moves real bytes
 * between workers and a wrong transfer shows. Nothing here is a model's KV: computing a token
 * writes a value derived from what real KV depends on, and a block fetched from a prefill
 * worker can be checked against what this engine would have written itself.
 *
 * Layout: two segments (K and V), each `numBlocks` blocks of `kvBytesPerBlock / 2` bytes laid
 * end to end, as a paged KV cache lays out one layer. Each block is split into `blockSize`
 * token slots of whole 32-bit words (slot i of a block of W words: words [⌊iW/B⌋, ⌊(i+1)W/B⌋));
 * every word of a slot holds
 *
 *   slotWord = mix(parent hash of the block, position, token id, segment)
 *
 * where the parent hash is the chained hash of the full block before it (ROOT_PARENT_HASH for
 * a sequence's first block): like real KV, a slot's content depends on its token, its position
 * and everything before the block, so a block of another prefix, another block of the same
 * prefix or a shifted copy all differ.
 */
import { ROOT_PARENT_HASH } from "../block_hash.ts";
import type { KvMemoryLayout } from "../engine.ts";
import { fmix32 } from "./mix.ts";

/** K and V. */
const NUM_SEGMENTS = 2;

/** The first token slot of a block whose bytes are not what computing the tokens writes. */
export interface KvMismatch {
  blockIndex: number;
  blockId: number;
  position: number;
}

export class FakeKvMemory {
  readonly buffer: ArrayBuffer;
  private readonly words: Uint32Array;
  /** Words of one block within one segment. */
  private readonly blockWords: number;

  constructor(
    private readonly numBlocks: number,
    private readonly blockSize: number,
    readonly kvBytesPerBlock: number,
  ) {
    if (!Number.isInteger(kvBytesPerBlock) || kvBytesPerBlock < 8 || kvBytesPerBlock % (4 * NUM_SEGMENTS) !== 0) {
      throw new Error(`mocker option kvBytesPerBlock must be a positive multiple of 8 (K and V halves of whole 32-bit words), got ${kvBytesPerBlock}`);
    }
    const bytes = numBlocks * kvBytesPerBlock;
    try {
      this.buffer = new ArrayBuffer(bytes);
    } catch (err) {
      throw new Error(`the mocker cannot allocate ${bytes} bytes of fake KV memory (${numBlocks} blocks of ${kvBytesPerBlock} bytes): lower numGpuBlocks or kvBytesPerBlock`, { cause: err });
    }
    this.words = new Uint32Array(this.buffer);
    this.blockWords = kvBytesPerBlock / 4 / NUM_SEGMENTS;
  }

  layout(): KvMemoryLayout {
    const blockBytes = this.blockWords * 4;
    return {
      memory: { kind: "host", buffer: this.buffer },
      segments: Array.from({ length: NUM_SEGMENTS }, (_, s) => ({ offset: s * this.numBlocks * blockBytes, blockStride: blockBytes, blockBytes })),
      // Not a model's KV: no real engine's blocks can stand in for these, nor these for theirs.
      dtype: "mocker",
    };
  }

  /**
   * Writes the KV of positions [from, to) of a sequence: `blocks[b]` holds positions
   * [b·B, (b+1)·B), `blockHashes` are the chained hashes of its full blocks.
   */
  write(blocks: readonly { readonly id: number }[], tokenIds: readonly number[], blockHashes: readonly bigint[], from: number, to: number): void {
    this.forEachSlot(blocks, tokenIds, blockHashes, from, to, (start, end, value) => {
      this.words.fill(value, start, end);
      return true;
    });
  }

  /** The first of positions [0, numTokens) whose slot does not hold what `write` would put there. */
  firstMismatch(blocks: readonly { readonly id: number }[], tokenIds: readonly number[], blockHashes: readonly bigint[], numTokens: number): KvMismatch | undefined {
    let mismatch: KvMismatch | undefined;
    this.forEachSlot(blocks, tokenIds, blockHashes, 0, numTokens, (start, end, value, position) => {
      if (this.holds(start, end, value)) return true;
      const blockIndex = Math.floor(position / this.blockSize);
      mismatch = { blockIndex, blockId: blocks[blockIndex].id, position };
      return false;
    });
    return mismatch;
  }

  /** Calls `visit(startWord, endWord, value, position)` for every slot of [from, to) in every segment, until it returns false. */
  private forEachSlot(
    blocks: readonly { readonly id: number }[],
    tokenIds: readonly number[],
    blockHashes: readonly bigint[],
    from: number,
    to: number,
    visit: (start: number, end: number, value: number, position: number) => boolean,
  ): void {
    const B = this.blockSize;
    const W = this.blockWords;
    let parentLo = 0;
    let parentHi = 0;
    let parentOfBlock = -1;
    for (let position = from; position < to; position++) {
      const b = Math.floor(position / B);
      if (b !== parentOfBlock) {
        const parent = b === 0 ? ROOT_PARENT_HASH : blockHashes[b - 1];
        parentLo = Number(parent & 0xffffffffn);
        parentHi = Number(parent >> 32n);
        parentOfBlock = b;
      }
      const slot = position - b * B;
      const start = Math.floor((slot * W) / B);
      const end = Math.floor(((slot + 1) * W) / B);
      if (start === end) continue; // fewer words than slots: this token gets none
      const base = fmix32(parentLo ^ fmix32(parentHi ^ Math.imul(position + 1, 0x9e3779b1)) ^ Math.imul(tokenIds[position] + 1, 0x85ebca77));
      for (let s = 0; s < NUM_SEGMENTS; s++) {
        const blockStart = (s * this.numBlocks + blocks[b].id) * W;
        const value = fmix32(base ^ Math.imul(s + 1, 0xc2b2ae3d));
        if (!visit(blockStart + start, blockStart + end, value, position)) return;
      }
    }
  }

  /** Whether words [start, end) all equal `value`: the first does, and each equals the next (one memcmp). */
  private holds(start: number, end: number, value: number): boolean {
    if (this.words[start] !== value) return false;
    const length = (end - start - 1) * 4;
    return Buffer.from(this.buffer, start * 4, length).equals(Buffer.from(this.buffer, (start + 1) * 4, length));
  }
}
