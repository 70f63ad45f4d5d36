// Prefill attention v7 (prefill_attention_pingpong.cu): a producer warpgroup and two consumers that
// take turns on the tensor cores. Head_dim 128 on an sm_90a build and a compute capability 9.0 GPU
// only; paged_attention_prefill (prefill_attention.cu) decides where it runs.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/kernels.h"

namespace sy::cuda {

/** v7 over `num_tiles` prefill tiles (paged_attention_prefill's arguments), `key_tile` 64 or 128 keys a step. */
template <typename T>
void launch_prefill_pingpong(int key_tile, const T* q, const int32_t* tiles, int num_tiles, const int32_t* positions,
                             const PagedKv<T>& kv, int num_heads, const AttentionOut<T>& out, cudaStream_t stream);

}  // namespace sy::cuda
