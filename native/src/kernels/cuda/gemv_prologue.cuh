// The prologue of the gemv kernels: the fp32 input rows a gemv multiplies, staged in shared
// memory and rounded as the cuBLAS path rounds its inputs. Read directly, or made by a fused
// RMSNorm of (residual + delta) or SiLU(gate) * up. Used by gemv.cu and by the persistent decode
// step (decode_step.cu), so a row gets the same bits from either. Blocks of kGemvThreads threads.
#pragma once
#include "kernels/cuda/activation.cuh"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/reduce.cuh"

namespace sy::cuda {

constexpr int kGemvThreads = 256;

// The input rounded to the model's 16-bit type (or to hi + lo, where that GEMM's input is
// split), exactly as the cuBLAS path's inputs are (add_rmsnorm, silu_mul and the attention
// kernels' stores compute the same expressions): a decode row then gets the same
// logits up to summation order whether its step runs here or through cuBLAS (a step mixed with
// prefill tokens), so seeded sampling does not depend on what shares the batch. Keeping the
// input in fp32 passed the tiny-Qwen3 comparison but broke that test (bench/CUDA_NOTES.md).
template <typename T>
__device__ __forceinline__ float round16(float v, bool split) {
  const float hi = to_f32(from_f32<T>(v));
  return split ? hi + to_f32(from_f32<T>(v - hi)) : hi;  // hi + lo is exact in fp32
}

// Input elements a thread of the prologue holds in registers: one row of up to kStaged * kGemvThreads
// (3072) elements is staged with every load of a pass issued before any is used, so a pass costs
// one L2 round trip instead of one per element a thread takes (stage_input_rows below, whose
// loads the compiler keeps in order around the shared-memory stores). Thread tid takes elements
// tid, tid + kGemvThreads, ... in both, so the sums (the norm's ss) add in the same order as
// add_rmsnorm's.
constexpr int kStaged = 12;

template <typename T>
__device__ __forceinline__ void stage_input_row(const GemvInput& x, int in, float* dst, float* scratch) {
  const int tid = threadIdx.x;
  if (x.mode == GemvInput::kNorm) {
    const int64_t src = (x.rows ? x.rows[0] : 0) * static_cast<int64_t>(in);
    const float* __restrict__ xr = x.x + src;
    const float* __restrict__ dr = x.delta ? x.delta + src : nullptr;
    const float* __restrict__ wr = x.weight;
    float v[kStaged], d[kStaged];
#pragma unroll
    for (int j = 0; j < kStaged; ++j) {
      const int i = tid + j * kGemvThreads;
      if (i < in) {
        v[j] = xr[i];
        d[j] = dr ? dr[i] : 0.0f;
      }
    }
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < kStaged; ++j) {
      const int i = tid + j * kGemvThreads;
      if (i < in) {
        if (dr) v[j] += d[j];
        ss += v[j] * v[j];
      }
    }
    if (x.x_out && blockIdx.x == 0) {
#pragma unroll
      for (int j = 0; j < kStaged; ++j)
        if (tid + j * kGemvThreads < in) x.x_out[src + tid + j * kGemvThreads] = v[j];
    }
    // The norm weight after the reduction, all loads at once (a second round trip): loaded with
    // x and delta it would stay live across the reduction, in registers the preloaded first
    // weights need too (not measured the other way).
    float w[kStaged];
#pragma unroll
    for (int j = 0; j < kStaged; ++j) {
      const int i = tid + j * kGemvThreads;
      if (i < in) w[j] = wr[i];
    }
    ss = block_sum(ss, scratch);
    const float inv = rsqrtf(ss / static_cast<float>(in) + x.eps);
#pragma unroll
    for (int j = 0; j < kStaged; ++j) {
      const int i = tid + j * kGemvThreads;
      if (i < in) dst[i] = round16<T>(w[j] * (v[j] * inv), x.split);
    }
  } else if (x.mode == GemvInput::kSilu) {
    const float* __restrict__ g = x.x;
    float a[kStaged], u[kStaged];
#pragma unroll
    for (int j = 0; j < kStaged; ++j) {
      const int i = tid + j * kGemvThreads;
      if (i < in) {  // gate_up from gemv, in fp32: rounded as cuBLAS steps store it
        a[j] = product_value<T>(g[i]);
        u[j] = product_value<T>(g[in + i]);
      }
    }
#pragma unroll
    for (int j = 0; j < kStaged; ++j) {
      const int i = tid + j * kGemvThreads;
      if (i < in) dst[i] = round16<T>(silu_times(a[j], u[j]), x.split);
    }
  } else {
    const float* __restrict__ src = x.x;
    float v[kStaged];
#pragma unroll
    for (int j = 0; j < kStaged; ++j) {
      const int i = tid + j * kGemvThreads;
      if (i < in) v[j] = src[i];
    }
#pragma unroll
    for (int j = 0; j < kStaged; ++j) {
      const int i = tid + j * kGemvThreads;
      if (i < in) dst[i] = round16<T>(v[j], x.split);
    }
  }
}

// The prologue for NT rows at once (and for one row longer than kStaged * kGemvThreads): thread tid
// takes elements tid, tid + kGemvThreads, ... of every row, the rows' loads of an element issued
// together, and the NT norms reduced with one barrier pair. Taking the rows one after another
// instead costs NT rounds of loads and reductions, which at 8 rows made the gemv slower than
// cuBLAS.
template <typename T, int NT>
__device__ __forceinline__ void stage_input_rows(const GemvInput& x, int in, float* xs, float* scratch) {
  const int tid = threadIdx.x;
  if (x.mode == GemvInput::kNorm) {
    int64_t src[NT];
    float ss[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      src[t] = (x.rows ? x.rows[t] : t) * static_cast<int64_t>(in);
      ss[t] = 0.0f;
    }
    for (int i = tid; i < in; i += kGemvThreads) {
      float v[NT];
#pragma unroll
      for (int t = 0; t < NT; ++t) v[t] = x.x[src[t] + i];
      if (x.delta) {
        float d[NT];
#pragma unroll
        for (int t = 0; t < NT; ++t) d[t] = x.delta[src[t] + i];
#pragma unroll
        for (int t = 0; t < NT; ++t) v[t] += d[t];
      }
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        if (x.x_out && blockIdx.x == 0) x.x_out[src[t] + i] = v[t];
        xs[t * in + i] = v[t];
        ss[t] += v[t] * v[t];
      }
    }
    block_sum_n<NT>(ss, scratch);
    float inv[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) inv[t] = rsqrtf(ss[t] / static_cast<float>(in) + x.eps);
    for (int i = tid; i < in; i += kGemvThreads) {
      const float w = x.weight[i];
#pragma unroll
      for (int t = 0; t < NT; ++t) xs[t * in + i] = round16<T>(w * (xs[t * in + i] * inv[t]), x.split);
    }
  } else if (x.mode == GemvInput::kSilu) {
    for (int i = tid; i < in; i += kGemvThreads) {
      float a[NT], u[NT];
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        const float* g = x.x + static_cast<int64_t>(t) * 2 * in;
        a[t] = product_value<T>(g[i]);
        u[t] = product_value<T>(g[in + i]);
      }
#pragma unroll
      for (int t = 0; t < NT; ++t) xs[t * in + i] = round16<T>(silu_times(a[t], u[t]), x.split);
    }
  } else {
    for (int i = tid; i < in; i += kGemvThreads) {
      float v[NT];
#pragma unroll
      for (int t = 0; t < NT; ++t) v[t] = x.x[static_cast<int64_t>(t) * in + i];
#pragma unroll
      for (int t = 0; t < NT; ++t) xs[t * in + i] = round16<T>(v[t], x.split);
    }
  }
}

/**
 * The NT input rows of a gemv into xs ([NT][in] fp32, shared memory), as every gemv stages them:
 * staged in registers only for one row, where the prologue dominates; from two rows on the main
 * loop needs the registers (ptxas then spills it). Ends with the block's barrier.
 */
template <typename T, int NT>
__device__ __forceinline__ void stage_gemv_input(const GemvInput& x, int in, float* xs, float* scratch) {
  if (NT == 1 && in <= kStaged * kGemvThreads) {
    stage_input_row<T>(x, in, xs, scratch);
  } else {
    stage_input_rows<T, NT>(x, in, xs, scratch);
  }
  __syncthreads();
}

}  // namespace sy::cuda
