#include "engine/block_hash.h"

#include <cstring>

#include "util/xxh64.h"

namespace sy {

uint64_t block_hash(uint64_t parent_hash, const int32_t* tokens, int block_size) {
  // Little-endian host: the in-memory bytes are the le64/le32 encodings.
  std::vector<uint8_t> bytes(8 + 4 * static_cast<size_t>(block_size));
  std::memcpy(bytes.data(), &parent_hash, 8);
  std::memcpy(bytes.data() + 8, tokens, 4 * static_cast<size_t>(block_size));
  return xxh64(bytes.data(), bytes.size(), kBlockHashSeed);
}

}  // namespace sy
