// What the attention kernels share about the paged KV cache: the layout is [slot][kv_head][head_dim]
// per layer, slot = block * block_size + offset, and a sequence's blocks are listed in its block
// table.
#pragma once
#include <cstdint>
#include <string>

#include "kernels/cuda/cuda_check.h"

namespace sy::cuda {

/** The cache slot of position j of a sequence whose block table is `table`. */
__device__ __forceinline__ int64_t slot_of(const int32_t* table, int j, int block_size) {
  return static_cast<int64_t>(table[j / block_size]) * block_size + j % block_size;
}

[[noreturn]] inline void throw_unsupported_head_dim(int head_dim) {
  throw CudaError("the CUDA attention kernels support head_dim 16, 32, 64, 128 or 256, not " + std::to_string(head_dim));
}

}  // namespace sy::cuda
