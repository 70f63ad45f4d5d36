// XXH64, the 64-bit xxHash, written from the xxHash specification (version 0.8). Used for
// the chained KV-cache block hash shared with the TypeScript side (src/engine/block_hash.ts).
#pragma once
#include <cstddef>
#include <cstdint>

namespace sy {

uint64_t xxh64(const void* data, size_t length, uint64_t seed);

}  // namespace sy
