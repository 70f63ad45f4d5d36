// Pieces the tensor-core attention kernels share (prefill_attention.cu, prefill_attention_pingpong.cu,
// decode_attention_mma.cu): shared-memory rows swizzled by 16-byte chunk, cp.async copies into
// them, the mma.sync and wgmma issue of Q Kᵀ and P V, and the arithmetic of an online softmax whose
// rows live in the four lanes of an MMA accumulator's quad.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/bulk_copy.cuh"
#include "kernels/cuda/cp_async.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace sy::cuda {

/** Chunk `chunk` of row `row` lives at chunk ^ (row & mask): rows read by column hit every bank. */
__device__ __forceinline__ int swizzle(int row, int chunk, int mask) { return chunk ^ (row & mask); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t address, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(address));
}

/** Two fp32 values as one register of two 16-bit values (x in the low half). */
template <typename T>
__device__ __forceinline__ uint32_t pack2(float x, float y) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    __nv_bfloat162 v = __floats2bfloat162_rn(x, y);
    return *reinterpret_cast<uint32_t*>(&v);
  } else {
    __half2 v = __floats2half2_rn(x, y);
    return *reinterpret_cast<uint32_t*>(&v);
  }
}

/** 32-bit word i (0-3) of a 16-byte load: two 16-bit values of an MMA fragment. */
__device__ __forceinline__ uint32_t word_of(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

/** d += a · b for one m16n8k16 tile, 16-bit inputs, fp32 accumulators. */
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

/** d += a · b for one m16n8k8 tile, 16-bit inputs, fp32 accumulators. */
template <typename T>
__device__ __forceinline__ void mma_1688(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t b) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(b));
  } else {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(b));
  }
}

/** 2^x (the SFU's approximation; 2^-inf = 0). */
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

/**
 * Issues S = Q Kᵀ by wgmma (sm_90a) for one warpgroup's 64 rows against a K tile of 8·JN keys laid
 * out [half][key][64] (each 64-element half of a key's row a 128-byte row, halves `half_bytes`
 * apart, swizzled by key % 8): K is K-major for B, so a k16 slice of d is 32 bytes into a half's
 * rows. Q is in A fragments (qf[ks], k16 slice ks of d). Committed as one group.
 */
template <typename T, int JN, int KS>
__device__ __forceinline__ void issue_qk_wgmma(float (&s)[JN][4], const uint32_t (&qf)[KS][4], uint32_t k_tile,
                                               uint32_t half_bytes) {
  wgmma_pin(s);
  wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
    const uint32_t slice = k_tile + (ks / 4) * half_bytes + (ks % 4) * 32;
    wgmma_rs<T, JN, 0>(s, qf[ks], wgmma_descriptor(slice, 16, 1024), ks > 0);
  }
  wgmma_commit();
}

/**
 * Issues O += P V by wgmma for one warpgroup's 64 rows, V laid out as issue_qk_wgmma's K: V is
 * MN-major (d contiguous), a k16 slice is 16 keys, the two halves of d `half_bytes` apart along n.
 * P is in A fragments (pf[kk], keys 16kk..16kk + 15). Committed as one group.
 */
template <typename T, int DN, int KK>
__device__ __forceinline__ void issue_pv_wgmma(float (&o)[DN][4], const uint32_t (&pf)[KK][4], uint32_t v_tile,
                                               uint32_t half_bytes) {
  wgmma_pin(o);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < KK; ++kk) {
    wgmma_rs<T, DN, 1>(o, pf[kk], wgmma_descriptor(v_tile + kk * 16 * 128, half_bytes, 1024), 1);
  }
  wgmma_commit();
}

/**
 * Masks the scores of keys past each row's position: element (jn, e) of an S accumulator of a
 * quad's two rows is key base + 8jn + 2·quad_col + (e & 1) of row half e >> 1, at row_pos[e >> 1].
 */
template <int JN>
__device__ __forceinline__ void mask_keys_past_rows(float (&s)[JN][4], int base, int quad_col, const int (&row_pos)[2]) {
#pragma unroll
  for (int jn = 0; jn < JN; ++jn) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (base + jn * 8 + quad_col * 2 + (e & 1) > row_pos[e >> 1]) s[jn][e] = -INFINITY;
    }
  }
}

/**
 * The largest score of row half h (0 or 1) among a thread's elements of an S accumulator, by a
 * tree rather than a chain of dependent fmaxf (max is exact in any order: the same value).
 */
template <int JN>
__device__ __forceinline__ float thread_row_max(const float (&s)[JN][4], int h) {
  float t[JN];
#pragma unroll
  for (int jn = 0; jn < JN; ++jn) t[jn] = fmaxf(s[jn][2 * h], s[jn][2 * h + 1]);
#pragma unroll
  for (int level = 1; level < JN; level *= 2) {
#pragma unroll
    for (int jn = 0; jn < JN; jn += 2 * level) t[jn] = fmaxf(t[jn], t[jn + level]);
  }
  return t[0];
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

/**
 * One row of an accumulator fragment regathered within its quad, so that a thread can store 8
 * consecutive columns at once. Before: thread q (lane % 4) holds columns 8 dn + 2q and 8 dn + 2q + 1
 * of every 8-column block dn, in v[dn]. After: for each g, v[4g .. 4g + 3] hold all 8 columns of
 * block 4g + q, in order. A 4 x 4 transpose of pairs per g, as two butterfly stages (lane bits 0,
 * then 1): a thread swaps the pairs whose index bit differs from its own lane bit with its partner.
 * Every lane of the warp must call it (full-warp shuffles).
 */
template <int DN>
__device__ __forceinline__ void quad_gather_columns(float (&v)[DN][2], int q) {
  static_assert(DN % 4 == 0, "8-column blocks in groups of four");
#pragma unroll
  for (int bit = 1; bit <= 2; bit <<= 1) {
    const bool mine_high = (q & bit) != 0;
#pragma unroll
    for (int g = 0; g < DN; g += 4) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (j & bit) continue;  // j: the pair with the bit clear, j + bit: its partner index
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float send = mine_high ? v[g + j][e] : v[g + j + bit][e];
          const float got = __shfl_xor_sync(0xffffffffu, send, bit);
          if (mine_high) {
            v[g + j][e] = got;
          } else {
            v[g + j + bit][e] = got;
          }
        }
      }
    }
  }
}

}  // namespace sy::cuda
