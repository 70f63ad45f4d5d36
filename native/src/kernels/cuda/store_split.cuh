// Stores of fp32 results as the 16-bit inputs of the next GEMM: hi = T(v), and lo = T(v - hi)
// when that GEMM's input is split, so that hi + lo carries v to ~16 significant bits through two
// 16-bit GEMMs (bench/CUDA_NOTES.md, "the split").
#pragma once
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/reduce.cuh"

namespace sy::cuda {

/** y[i] = T(v), and y_lo[i] = T(v - y[i]) when y_lo is not null. */
template <typename T>
__device__ __forceinline__ void store_split(float v, T* y, T* y_lo, int64_t i) {
  const T hi = from_f32<T>(v);
  y[i] = hi;
  if (y_lo) y_lo[i] = from_f32<T>(v - to_f32(hi));
}

/** store_split of v[0..N-1] at i..i + N - 1 (y + i and y_lo + i aligned to N elements), as one write each. */
template <int N, typename T>
__device__ __forceinline__ void store_split_n(const float (&v)[N], T* y, T* y_lo, int64_t i) {
  struct alignas(N * sizeof(T)) Vec {
    T e[N];
  };
  Vec hi, lo;
#pragma unroll
  for (int k = 0; k < N; ++k) {
    hi.e[k] = from_f32<T>(v[k]);
    lo.e[k] = from_f32<T>(v[k] - to_f32(hi.e[k]));
  }
  *reinterpret_cast<Vec*>(y + i) = hi;
  if (y_lo) *reinterpret_cast<Vec*>(y_lo + i) = lo;
}

/** Stores a and b at dst[0] and dst[1] (dst 4-byte aligned) as one 32-bit write. */
template <typename T>
__device__ __forceinline__ void store_pair(T* dst, T a, T b) {
  struct alignas(4) Pair {
    T a, b;
  };
  *reinterpret_cast<Pair*>(dst) = Pair{a, b};
}

/** Element i of an attention output (kernels.h, AttentionOut). */
template <typename T>
__device__ __forceinline__ void store_attention(const AttentionOut<T>& out, int64_t i, float v) {
  if (out.f32) {
    out.f32[i] = v;
  } else {
    store_split(v, out.hi, out.lo, i);
  }
}

/** Elements i and i + 1 (i even) of an attention output. */
template <typename T>
__device__ __forceinline__ void store_attention_pair(const AttentionOut<T>& out, int64_t i, float a, float b) {
  if (out.f32) {
    *reinterpret_cast<float2*>(out.f32 + i) = make_float2(a, b);
    return;
  }
  const float v[2] = {a, b};
  store_split_n<2>(v, out.hi, out.lo, i);
}

}  // namespace sy::cuda
