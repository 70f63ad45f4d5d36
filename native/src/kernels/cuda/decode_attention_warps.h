// The warp-stepped decode attention kernel (decode_attention_warps.cu), which
// paged_attention_decode (decode_attention.cu) launches for the shapes it is built for.
#pragma once
#include <cuda_runtime.h>

#include "kernels/cuda/decode_attention.cuh"

namespace sy::cuda {

/** The shapes it is built for (group: the GQA group rounded up to 2, 4 or 8): a step's K and V
 *  loads and the group rows' sums fit in the registers of two blocks an SM. */
__host__ __device__ constexpr bool has_warps_build(int head_dim, int group) {
  return (group == 2 && head_dim <= 128) || (group == 4 && head_dim <= 64);
}

/** Launches it over `grid` (rows, kv heads, splits), as paged_attention_decode's own kernel would be. */
template <typename T, int HD, int G>
void launch_decode_warps(const DecodeAttentionArgs<T>& args, dim3 grid, cudaStream_t stream);

/** How many of its blocks an SM runs at once, in a launch of split rows or of unsplit ones. */
template <typename T, int HD, int G>
int decode_warps_blocks_per_sm(bool split_rows);

}  // namespace sy::cuda
