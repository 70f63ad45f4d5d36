// Per-head RMSNorm and RoPE of one q or k head, done by one warp. Two kernels compute it: the
// q/k norm + RoPE + KV store pass (elementwise.cu) and the decode attention kernel that does the
// same work itself in pure decode steps (decode_attention.cu). Both call this function, and its
// roundings are spelled out (no contraction left to the compiler), so a token's q and k have the
// same bits whichever kernel made them: seeded sampling does not depend on whether the step
// was a pure decode step.
#pragma once
#include "kernels/cuda/reduce.cuh"

namespace sy::cuda {

/**
 * src: the head's head_dim fp32 values (head_dim <= 256, even). norm: the per-head RMSNorm weight,
 * or null for none. buf: head_dim floats of shared memory owned by this warp. Calls emit(i, v)
 * for every element i with its T-rounded result, v = RoPE(norm(src))[i] at position pos.
 */
template <typename T, typename Emit>
__device__ __forceinline__ void norm_rope_head(const float* src, int head_dim, float pos, const float* inv_freq,
                                               const float* norm, float eps, float* buf, Emit emit) {
  constexpr int kMaxPerLane = 8;
  const int lane = threadIdx.x & 31, half = head_dim / 2;
  // Every load first (the head, the norm weight, the frequencies): one memory round trip.
  float v[kMaxPerLane], nw[kMaxPerLane], freq[kMaxPerLane / 2];
#pragma unroll
  for (int j = 0; j < kMaxPerLane; ++j) {
    const int i = lane + 32 * j;
    if (i < head_dim) {
      v[j] = src[i];
      nw[j] = norm ? norm[i] : 1.0f;
    }
    if (j < kMaxPerLane / 2 && i < half) freq[j] = inv_freq[i];
  }
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < kMaxPerLane; ++j)
    if (lane + 32 * j < head_dim) ss = __fmaf_rn(v[j], v[j], ss);
  ss = warp_sum(ss);
  const float inv = norm ? rsqrtf(ss / static_cast<float>(head_dim) + eps) : 1.0f;
#pragma unroll
  for (int j = 0; j < kMaxPerLane; ++j) {
    const int i = lane + 32 * j;
    if (i < head_dim) buf[i] = norm ? __fmul_rn(nw[j], __fmul_rn(v[j], inv)) : v[j];
  }
  __syncwarp();  // the RoPE partner of element i is i + half, another lane's when half % 32 != 0
#pragma unroll
  for (int j = 0; j < kMaxPerLane / 2; ++j) {
    const int i = lane + 32 * j;
    if (i >= half) break;
    // Hugging Face's angle: fp32 product of position and inv_freq, then cos/sin.
    float s, c;
    sincosf(__fmul_rn(pos, freq[j]), &s, &c);
    const float a = buf[i], b = buf[i + half];
    emit(i, from_f32<T>(__fmaf_rn(a, c, -__fmul_rn(b, s))));
    emit(i + half, from_f32<T>(__fmaf_rn(b, c, __fmul_rn(a, s))));
  }
  __syncwarp();  // buf may be reused by the caller
}

}  // namespace sy::cuda
