// The chained KV-cache block hash shared with the TypeScript side (src/engine/block_hash.ts):
//   hash(block_i) = XXH64(le64(hash(block_{i-1})) || le32(tokens of block i), seed = "SWITCHYD")
// with hash(block_{-1}) = 0. Two sequences share block i exactly when they share its tokens
// and every token before them.
#pragma once
#include <cstdint>
#include <vector>

namespace sy {

constexpr uint64_t kBlockHashSeed = 0x5357495443485944ULL;  // ASCII "SWITCHYD", big-endian
constexpr uint64_t kRootParentHash = 0;

uint64_t block_hash(uint64_t parent_hash, const int32_t* tokens, int block_size);

}  // namespace sy
