// Warp- and block-wide reductions shared by the kernels, and their 16-bit conversions.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "kernels/cuda/kernels.h"

namespace sy::cuda {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/** Sum over the block; every thread gets it. `scratch` holds 32 floats; blockDim.x % 32 == 0. */
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}

/** block_sum of N values at once (one barrier pair for all); each gets block_sum's arithmetic.
 *  `scratch` holds 32 * N floats. */
template <int N>
__device__ __forceinline__ void block_sum_n(float (&v)[N], float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
  for (int t = 0; t < N; ++t) v[t] = warp_sum(v[t]);
  __syncthreads();
  if (lane == 0) {
#pragma unroll
    for (int t = 0; t < N; ++t) scratch[t * 32 + warp] = v[t];
  }
  __syncthreads();
#pragma unroll
  for (int t = 0; t < N; ++t) v[t] = warp_sum(lane < warps ? scratch[t * 32 + lane] : 0.0f);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
  return warp_max(v);
}

template <typename T>
__device__ __forceinline__ float to_f32(T v);
template <>
__device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <>
__device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }

/** N consecutive 16-bit values of type T (the bits at `raw`, e.g. one vector load) in fp32. */
template <typename T, int N>
__device__ __forceinline__ void to_f32_vec(const void* raw, float* out) {
  const T* h = reinterpret_cast<const T*>(raw);
#pragma unroll
  for (int e = 0; e < N; ++e) out[e] = to_f32(h[e]);
}

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
// fp16 saturates at +-65504 rather than overflowing to inf (NaN stays NaN): a bf16 model served
// in fp16 (--dtype float16) then loses accuracy on an activation past fp16's range instead of
// turning its sequence into NaN.
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) {
  return __float2half(fabsf(v) > kHalfMax ? copysignf(kHalfMax, v) : v);
}

/**
 * A qkv or gate_up product as its readers use it (kernels.h, Product): an fp32 value rounded as
 * from_f32 rounds to 16 bits, or one read from the 16-bit store, whose inf (cuBLAS's epilogue
 * overflows where from_f32 saturates) is taken as +-kHalfMax. Both paths thus give the same value,
 * and a product past fp16's range saturates, as every other fp16 activation does (identity where
 * products are fp32).
 */
template <typename T, typename S>
__device__ __forceinline__ float product_value(S v) {
  if constexpr (!std::is_same_v<S, float>) {
    const float f = to_f32(v);
    return isinf(f) ? copysignf(kHalfMax, f) : f;
  } else if constexpr (std::is_same_v<Product<T>, float>) {
    return v;
  } else {
    return to_f32(from_f32<Product<T>>(v));
  }
}

/** N consecutive products (p aligned to N elements of S) as product_value gives them: one load. */
template <typename T, int N, typename S>
__device__ __forceinline__ void load_products(const S* p, float (&out)[N]) {
  struct alignas(N * sizeof(S)) Vec {
    S e[N];
  };
  const Vec v = *reinterpret_cast<const Vec*>(p);
#pragma unroll
  for (int k = 0; k < N; ++k) out[k] = product_value<T>(v.e[k]);
}

/** Two consecutive products, as load_products gives them. */
template <typename T, typename S>
__device__ __forceinline__ float2 product_pair(const S* p) {
  float v[2];
  load_products<T>(p, v);
  return make_float2(v[0], v[1]);
}

}  // namespace sy::cuda
