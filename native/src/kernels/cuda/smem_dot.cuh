// Dot products of weight rows held in shared memory with an fp32 input row, also in shared
// memory: the projections of the kernels that copy their share of a projection's weights in
// before they need it (the persistent decode step, decode_step.cu; the attention sublayer,
// attention_sublayer.cu). Blocks of kGemvThreads threads.
#pragma once
#include "kernels/cuda/gemv_prologue.cuh"
#include "kernels/cuda/reduce.cuh"

namespace sy::cuda {

constexpr int kSmemDotWarps = kGemvThreads / 32;

/**
 * y[row] = w[row] · xs for rows [rb, re), w holding exactly those rows in shared memory. Each warp
 * takes R rows at a time (one read of xs serves R rows); every row is summed as gemv_kernel sums
 * it: WS partial sums, partial s over the 8-wide groups k = (32 s + lane) * 8 + j * 256 WS, each
 * group a fused dot in element order added to the partial in j order, the partials reduced over
 * the warp and then added in s order. The chains that order leaves independent run side by side:
 * R rows x WS partials x two groups j, all their loads issued first. (One row and one partial at a
 * time, a warp waited on each load and each 8-long FMA chain: 1.5-2.7 µs a phase, traced.)
 */
template <typename T, int R, int WS>
__device__ __forceinline__ void dot_rows(const T* w, const float* xs, int in, int rb, int re, float* y) {
  constexpr int U = 2;  // groups j in flight per partial
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int step = 256 * WS;
  const int groups = (in + step - 1) / step;  // groups j of the longest partial
  for (int row = rb + warp * R; row < re; row += kSmemDotWarps * R) {
    const T* wr[R];  // rows past the slice read its last row (not stored): no branch before the loads
#pragma unroll
    for (int q = 0; q < R; ++q) wr[q] = w + (min(row + q, re - 1) - rb) * in;
    float acc[WS][R];
#pragma unroll
    for (int s = 0; s < WS; ++s)
#pragma unroll
      for (int q = 0; q < R; ++q) acc[s][q] = 0.0f;
    for (int j0 = 0; j0 < groups; j0 += U) {
      float4 x[U][WS][2];
      uint4 raw[U][WS][R];
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int s = 0; s < WS; ++s) {
          const int k = min((s * 32 + lane) * 8 + (j0 + u) * step, in - 8);  // past the end: any valid group, unused
          x[u][s][0] = *reinterpret_cast<const float4*>(xs + k);
          x[u][s][1] = *reinterpret_cast<const float4*>(xs + k + 4);
#pragma unroll
          for (int q = 0; q < R; ++q) raw[u][s][q] = *reinterpret_cast<const uint4*>(wr[q] + k);
        }
      float d[U][WS][R];
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int s = 0; s < WS; ++s)
#pragma unroll
          for (int q = 0; q < R; ++q) {
            const T* wh = reinterpret_cast<const T*>(&raw[u][s][q]);
            const float4 a = x[u][s][0], b = x[u][s][1];
            float v = __fmul_rn(to_f32(wh[0]), a.x);
            v = __fmaf_rn(to_f32(wh[1]), a.y, v);
            v = __fmaf_rn(to_f32(wh[2]), a.z, v);
            v = __fmaf_rn(to_f32(wh[3]), a.w, v);
            v = __fmaf_rn(to_f32(wh[4]), b.x, v);
            v = __fmaf_rn(to_f32(wh[5]), b.y, v);
            v = __fmaf_rn(to_f32(wh[6]), b.z, v);
            d[u][s][q] = __fmaf_rn(to_f32(wh[7]), b.w, v);
          }
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int s = 0; s < WS; ++s) {
          if ((s * 32 + lane) * 8 + (j0 + u) * step < in) {
#pragma unroll
            for (int q = 0; q < R; ++q) acc[s][q] = __fadd_rn(acc[s][q], d[u][s][q]);
          }
        }
    }
    // warp_sum of every (partial, row), the shuffles of all of them interleaved.
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
#pragma unroll
      for (int s = 0; s < WS; ++s)
#pragma unroll
        for (int q = 0; q < R; ++q) acc[s][q] += __shfl_xor_sync(0xffffffffu, acc[s][q], o);
    if (lane == 0) {
#pragma unroll
      for (int q = 0; q < R; ++q) {
        // gemv writes one warp's sum as it is, and adds several warps' to 0.0f in order.
        float total = WS == 1 ? acc[0][q] : 0.0f;
#pragma unroll
        for (int s = 0; s < WS && WS > 1; ++s) total = __fadd_rn(total, acc[s][q]);
        if (row + q < re) y[row + q] = total;
      }
    }
  }
}

/** Rows a warp takes at once for a slice of `rows`: the fewest rounds of the block's warps, then the most rows. */
__device__ __forceinline__ int rows_per_warp(int rows) {
  int best = 1, best_cost = (rows + kSmemDotWarps - 1) / kSmemDotWarps;
  for (int r = 2; r <= 4; ++r) {
    const int cost = ((rows + r - 1) / r + kSmemDotWarps - 1) / kSmemDotWarps * r;
    if (cost <= best_cost) {
      best = r;
      best_cost = cost;
    }
  }
  return best;
}

template <typename T, int WS>
__device__ __forceinline__ void dot_slice(int rows_at_once, const T* w, const float* xs, int in, int rb, int re, float* y) {
  switch (rows_at_once) {
    case 1: return dot_rows<T, 1, WS>(w, xs, in, rb, re, y);
    case 2: return dot_rows<T, 2, WS>(w, xs, in, rb, re, y);
    case 3: return dot_rows<T, 3, WS>(w, xs, in, rb, re, y);
    default: return dot_rows<T, 4, WS>(w, xs, in, rb, re, y);
  }
}

}  // namespace sy::cuda
