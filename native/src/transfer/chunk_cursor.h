// Where a network backend (TCP, UCX) is in issuing a READ: its block pairs walked in order, in
// chunks of at most the backend's chunk size, one chunk per request or get. The read is fully
// issued once the cursor is past its last pair.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "transfer/backend.h"

namespace sy::transfer {

struct Chunk {
  const ResolvedBlock& remote;
  const ResolvedBlock& local;
  uint64_t offset;  // within both blocks
  uint64_t length;
};

class ChunkCursor {
 public:
  /** Every chunk of `job` has been handed out. */
  bool done(const ReadJob& job) const { return block_ == job.remote.size(); }

  /** The next chunk of `job` (not done), and the cursor moved past it. */
  Chunk next(const ReadJob& job, uint64_t chunk_bytes) {
    const ResolvedBlock& remote = job.remote[block_];
    const Chunk chunk{remote, job.local[block_], offset_, std::min(chunk_bytes, remote.length - offset_)};
    offset_ += chunk.length;
    if (offset_ == remote.length) {
      block_++;
      offset_ = 0;
    }
    return chunk;
  }

 private:
  size_t block_ = 0;
  uint64_t offset_ = 0;  // within job.remote[block_]
};

}  // namespace sy::transfer
