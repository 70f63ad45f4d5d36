// Per-head RMSNorm and RoPE of one q or k head, and the v head as the cache stores it, each done
// by one warp. Two kernels compute them: the q/k norm + RoPE + KV store pass (elementwise.cu) and
// the decode attention kernel that does the same work itself in pure decode steps
// (decode_attention.cu). Both call these functions, and their roundings are spelled out (no
// contraction left to the compiler), so a token's q, k and v have the same bits whichever kernel
// made them: seeded sampling does not depend on whether the step was a pure decode step.
#pragma once
#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda/store_split.cuh"

namespace sy::cuda {

// Lane l's share of a head: the pairs 2l + 64j and their RoPE partners half elements on (float2
// loads), so rotation needs no exchange between lanes. STEPS = 2 covers head_dim up to 256
// (64 elements a step), 1 up to 128.

/** A q or k head's products as this lane holds them (src_lo's added when not null). */
template <typename T, int STEPS, typename S>
__device__ __forceinline__ void load_head_pairs(const S* src, const S* src_lo, int head_dim, float2 (&a)[STEPS],
                                                float2 (&b)[STEPS]) {
  const int lane = threadIdx.x & 31, half = head_dim / 2;
#pragma unroll
  for (int j = 0; j < STEPS; ++j) {
    const int i = 2 * lane + 64 * j;
    if (i < half) {
      a[j] = product_pair<T>(src + i);
      b[j] = product_pair<T>(src + half + i);
      if (src_lo) {
        const float2 la = product_pair<T>(src_lo + i);
        const float2 lb = product_pair<T>(src_lo + half + i);
        a[j] = make_float2(a[j].x + la.x, a[j].y + la.y);
        b[j] = make_float2(b[j].x + lb.x, b[j].y + lb.y);
      }
    }
  }
}

/** What the lane needs besides the head: the norm weight (1 where null) and the angles' cos and sin at pos. */
template <int STEPS>
struct NormRopeParams {
  float2 na[STEPS], nb[STEPS];
  float4 cs[STEPS];  // cos and sin of angles i and i + 1
};

template <int STEPS>
__device__ __forceinline__ void load_norm_rope_params(int head_dim, int pos, const float* rope, const float* norm,
                                                      NormRopeParams<STEPS>& p) {
  const int lane = threadIdx.x & 31, half = head_dim / 2;
  const float* rope_row = rope + static_cast<int64_t>(pos) * head_dim;  // (cos, sin) of each of half angles
#pragma unroll
  for (int j = 0; j < STEPS; ++j) {
    const int i = 2 * lane + 64 * j;
    if (i < half) {
      p.na[j] = norm ? *reinterpret_cast<const float2*>(norm + i) : make_float2(1.0f, 1.0f);
      p.nb[j] = norm ? *reinterpret_cast<const float2*>(norm + half + i) : make_float2(1.0f, 1.0f);
      p.cs[j] = *reinterpret_cast<const float4*>(rope_row + 2 * i);
    }
  }
}

/**
 * RMSNorm (when `has_norm`) and RoPE of a loaded head: calls emit(i, a, b) for every even element
 * i with the T-rounded results of elements i and i + 1.
 */
template <typename T, int STEPS, typename Emit>
__device__ __forceinline__ void finish_norm_rope_head(const float2 (&a)[STEPS], const float2 (&b)[STEPS],
                                                      const NormRopeParams<STEPS>& p, int head_dim, bool has_norm,
                                                      float eps, Emit emit) {
  const int lane = threadIdx.x & 31, half = head_dim / 2;
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < STEPS; ++j) {
    if (2 * lane + 64 * j < half) {
      ss = __fmaf_rn(a[j].x, a[j].x, ss);
      ss = __fmaf_rn(a[j].y, a[j].y, ss);
      ss = __fmaf_rn(b[j].x, b[j].x, ss);
      ss = __fmaf_rn(b[j].y, b[j].y, ss);
    }
  }
  ss = warp_sum(ss);
  const float inv = has_norm ? rsqrtf(ss / static_cast<float>(head_dim) + eps) : 1.0f;
  const auto normed = [&](float v, float w) { return has_norm ? __fmul_rn(w, __fmul_rn(v, inv)) : v; };
  // Hugging Face's rotation (cos and sin of the fp32 product of position and inv_freq, from the
  // table): element i becomes x_i cos - x_{i+half} sin, element i + half x_{i+half} cos + x_i sin.
  const auto rotate = [&](float x, float y, float c, float s, T& out_x, T& out_y) {
    out_x = from_f32<T>(__fmaf_rn(x, c, -__fmul_rn(y, s)));
    out_y = from_f32<T>(__fmaf_rn(y, c, __fmul_rn(x, s)));
  };
#pragma unroll
  for (int j = 0; j < STEPS; ++j) {
    const int i = 2 * lane + 64 * j;
    if (i >= half) break;
    T lo0, hi0, lo1, hi1;
    rotate(normed(a[j].x, p.na[j].x), normed(b[j].x, p.nb[j].x), p.cs[j].x, p.cs[j].y, lo0, hi0);
    rotate(normed(a[j].y, p.na[j].y), normed(b[j].y, p.nb[j].y), p.cs[j].z, p.cs[j].w, lo1, hi1);
    emit(i, lo0, lo1);
    emit(i + half, hi0, hi1);
  }
}

/** The v head as the cache stores it, from load_head_pairs: emit(i, a, b) as finish_norm_rope_head calls it. */
template <typename T, int STEPS, typename Emit>
__device__ __forceinline__ void finish_v_head(const float2 (&a)[STEPS], const float2 (&b)[STEPS], int head_dim,
                                              Emit emit) {
  const int lane = threadIdx.x & 31, half = head_dim / 2;
#pragma unroll
  for (int j = 0; j < STEPS; ++j) {
    const int i = 2 * lane + 64 * j;
    if (i >= half) break;
    emit(i, from_f32<T>(a[j].x), from_f32<T>(a[j].y));
    emit(i + half, from_f32<T>(b[j].x), from_f32<T>(b[j].y));
  }
}

/**
 * src: the head's head_dim products (kernels.h, Product: S is Product<T>, or fp32 rounded as
 * Product<T>; head_dim a multiple of 4, at most 256; src aligned to two elements), plus src_lo's
 * when not null (the lo half of a split GEMM input's product). norm: the per-head RMSNorm weight,
 * or null for none. rope: the cos/sin table (rope_table, kernels.h). Calls emit(i, a, b) for every
 * even element i with the T-rounded results of elements i and i + 1, v = RoPE(norm(src)) at
 * position pos. Every load (the head, the norm weight, the angles' cos and sin) is issued before
 * any is used: one memory round trip.
 */
template <typename T, typename S, typename Emit>
__device__ __forceinline__ void norm_rope_head(const S* src, const S* src_lo, int head_dim, int pos, const float* rope,
                                               const float* norm, float eps, Emit emit) {
  float2 a[2], b[2];
  NormRopeParams<2> p;
  load_head_pairs<T>(src, src_lo, head_dim, a, b);
  load_norm_rope_params(head_dim, pos, rope, norm, p);
  finish_norm_rope_head<T>(a, b, p, head_dim, norm != nullptr, eps, emit);
}

/**
 * The v head: calls emit(i, a, b) for every even element i with T(src[i] + src_lo[i]) and the same
 * of element i + 1 (T(src[i]) when src_lo is null; products as norm_rope_head takes them, head_dim
 * even).
 */
template <typename T, typename S, typename Emit>
__device__ __forceinline__ void v_head(const S* src, const S* src_lo, int head_dim, Emit emit) {
  for (int i = 2 * (threadIdx.x & 31); i < head_dim; i += 64) {
    float2 v = product_pair<T>(src + i);
    if (src_lo) {
      const float2 l = product_pair<T>(src_lo + i);
      v = make_float2(v.x + l.x, v.y + l.y);
    }
    emit(i, from_f32<T>(v.x), from_f32<T>(v.y));
  }
}

}  // namespace sy::cuda
