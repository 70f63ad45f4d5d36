// The tensor-core decode attention kernel (decode_attention_mma.cu), which paged_attention_decode
// (decode_attention.cu) launches for the shapes it is built for unless told otherwise.
#pragma once
#include <cuda_runtime.h>

#include "kernels/cuda/decode_attention.cuh"

namespace sy::cuda {

/** The shapes it is built for (group: the GQA group rounded up to 2, 4 or 8): K rows and V columns
 *  in whole 32-dim pieces, and the group's q rows as hi and lo halves in the 8 columns of an MMA. */
__host__ __device__ constexpr bool has_mma_build(int head_dim, int group) {
  return (head_dim == 64 || head_dim == 128) && (group == 2 || group == 4);
}

/** Launches it over `grid` (rows, kv heads, splits), as paged_attention_decode's own kernel would be. */
template <typename T, int HD, int G>
void launch_decode_mma(const DecodeAttentionArgs<T>& args, dim3 grid, cudaStream_t stream);

/** How many of its blocks an SM runs at once, in a launch of split rows or of unsplit ones. */
template <typename T, int HD, int G>
int decode_mma_blocks_per_sm(bool split_rows);

}  // namespace sy::cuda
