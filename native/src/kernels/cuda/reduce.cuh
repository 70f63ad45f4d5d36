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
 * A qkv or gate_up product as its readers use it (kernels.h, Product): read from the 16-bit
 * store, or an fp32 value rounded as that store (cuBLAS's epilogue) rounds it: to nearest, past
 * fp16's range to inf, not saturated as from_f32 does (identity where products are fp32).
 */
template <typename T, typename S>
__device__ __forceinline__ float product_value(S v) {
  if constexpr (!std::is_same_v<S, float>) {
    return to_f32(v);
  } else if constexpr (std::is_same_v<Product<T>, float>) {
    return v;
  } else {
    return __half2float(__float2half_rn(v));
  }
}

/** Two consecutive products (p 4- or 8-byte aligned by its type) as product_value gives them. */
template <typename T, typename S>
__device__ __forceinline__ float2 product_pair(const S* p) {
  if constexpr (std::is_same_v<S, float>) {
    const float2 v = *reinterpret_cast<const float2*>(p);
    return make_float2(product_value<T>(v.x), product_value<T>(v.y));
  } else {
    struct alignas(4) Pair {
      S a, b;
    };
    const Pair v = *reinterpret_cast<const Pair*>(p);
    return make_float2(to_f32(v.a), to_f32(v.b));
  }
}

}  // namespace sy::cuda
