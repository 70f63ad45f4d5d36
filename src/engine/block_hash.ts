/**
 * The block hash shared by every engine (mocker, native CPU, native CUDA) and the router.
 *
 * A KV-cache block holds the KV of `blockSize` consecutive tokens. Only full blocks are hashed.
 * The hash of block i depends on every token before it, through chaining:
 *
 *   hash(block_0) = XXH64(le64(0)             || le32(t_0) .. le32(t_{B-1}),      seed = BLOCK_HASH_SEED)
 *   hash(block_i) = XXH64(le64(hash(block_{i-1})) || le32(t_{iB}) .. le32(t_{iB+B-1}), seed = BLOCK_HASH_SEED)
 *
 * XXH64 is the 64-bit xxHash (version 0.8 specification); le64/le32 are little-endian
 * encodings. Two requests share block i exactly when they share the first (i+1)*B tokens. The
 * test vectors in test/vectors/block_hash.json pin this function for other languages (the C++
 * engine reads the same file).
 */
import xxhash from "xxhash-wasm";

/** ASCII "SWITCHYD" read as a big-endian u64. */
export const BLOCK_HASH_SEED = 0x5357495443485944n;

/** The parent hash used for the first block of a sequence. */
export const ROOT_PARENT_HASH = 0n;

const { h64Raw } = await xxhash();

/** XXH64 of raw bytes, exposed for the spec's own vectors. */
export function xxh64(bytes: Uint8Array, seed: bigint): bigint {
  return h64Raw(bytes, seed);
}

/** Hash of one full block given its parent's hash (ROOT_PARENT_HASH for the first block). */
export function blockHash(parentHash: bigint, blockTokenIds: ArrayLike<number>): bigint {
  const bytes = new Uint8Array(8 + 4 * blockTokenIds.length);
  const view = new DataView(bytes.buffer);
  view.setBigUint64(0, parentHash, true);
  for (let i = 0; i < blockTokenIds.length; i++) view.setUint32(8 + 4 * i, blockTokenIds[i], true);
  return h64Raw(bytes, BLOCK_HASH_SEED);
}

/**
 * Chained hashes of the full blocks of `tokenIds` (a trailing partial block is not hashed).
 * `parentHash` continues an existing chain, e.g. to hash blocks appended during decode.
 */
export function blockHashes(tokenIds: ArrayLike<number>, blockSize: number, parentHash = ROOT_PARENT_HASH): bigint[] {
  const fullBlocks = Math.floor(tokenIds.length / blockSize);
  const bytes = new Uint8Array(8 + 4 * blockSize);
  const view = new DataView(bytes.buffer);
  const hashes: bigint[] = new Array(fullBlocks);
  let parent = parentHash;
  for (let b = 0; b < fullBlocks; b++) {
    view.setBigUint64(0, parent, true);
    const start = b * blockSize;
    for (let i = 0; i < blockSize; i++) view.setUint32(8 + 4 * i, tokenIds[start + i], true);
    parent = h64Raw(bytes, BLOCK_HASH_SEED);
    hashes[b] = parent;
  }
  return hashes;
}
