// Prefill attention on tensor cores with the output in registers (v4, v5, and v6 on Hopper; the
// first version, WMMA with O in shared memory, is paged_attention_prefill_wmma in
// prefill_attention_wmma.cu and still serves head_dim 256; v7, which now serves head_dim 128 on
// Hopper in v6's place, is prefill_attention_pingpong.cu).
//
// A block takes one prefill tile (consecutive query tokens of one sequence, times the GQA group
// of one KV head: 128 (token, head) rows) against 64-key tiles of that sequence's paged cache,
// keys 0..pos for each row. Each of its warps owns one (v4) or two (v5) groups of 16 rows for the
// whole kernel:
//  - Q: the rows as mma.sync A fragments, in registers loaded once (v4) or read from shared
//    memory by ldmatrix (v5);
//  - S = Q Kᵀ: m16n8k16 MMAs, K's fragments by ldmatrix from shared memory;
//  - online softmax in registers (a row lives in the 4 lanes of a quad: two shuffles per
//    reduction), p = exp2(s * scale - max) by one FMA, fp32 running max and sum, O rescaled only
//    when a row's max moved;
//  - O += P V: P converted in registers from S's accumulator layout to A fragments (16-bit,
//    the same rounding as v1), V's fragments by ldmatrix.trans; O stays in fp32 registers.
// K and V tiles are double-buffered in shared memory with cp.async (the next tile loads while
// this one is multiplied); rows are XOR-swizzled by 16-byte chunk so ldmatrix reads are free of
// bank conflicts. Keys past the sequence load as zeros (cp.async zero-fill) and are masked.
//
// Same function as v1, row by row, up to rounding (v1 scales the scores before its exp2): a
// row's result depends only on its own position and the keys, not on the other rows of its tile
// (batch invariance), and a key tile entirely past a row's position leaves that row's state
// exactly unchanged. v4 and v5 do the same arithmetic in the same order, so they give the same
// bits; so does v6 (PrefillShape below), whose warpgroup MMAs give the products mma.sync gives
// (test/native/cuda_prefill_check.cu compares the bits).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cuda/attention_tile.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/paged_kv.cuh"
#include "kernels/cuda/prefill_attention_pingpong.h"
#include "kernels/cuda/store_split.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace sy::cuda {
namespace {

// A block holds 128 (token, head) rows. Each warp owns RG groups of 16 rows (RG = 1: 8 warps, v4;
// RG = 2: 4 warps, v5). Two groups let every K or V fragment read from shared memory feed two
// MMAs instead of one, which halves the ldmatrix traffic per MMA; the price is Q in shared memory
// (its fragments are reloaded each key tile, as there are not registers for two groups of them)
// and half the warps per block, so v5 pays off only on launches that fill the SMs twice over
// (prefill_kernel below; bench/CUDA_NOTES.md, "Session 6").
constexpr int kRows = 128;  // (token, head) rows per block
constexpr int kKeys = 64;   // keys per tile

// WG (v6, sm_90a): v4's rows and warps, the two MMAs as warpgroup MMAs (wgmma) reading K and V
// straight from shared memory, laid out for them: each 64-element half of a key's row is a
// 128-byte row of its own 64-key block ([half][key][64]), swizzled by key % 8. Where v4's eight
// warps each read all of K and V by ldmatrix (256 KB of shared-memory reads per 64-key tile), the
// two warpgroups read them once each (64 KB).
template <int HD, int RG, bool WG = false>
struct PrefillShape {
  static_assert(!WG || (RG == 1 && (HD == 64 || HD == 128)), "wgmma: one row group a warp, 64-element halves");
  static constexpr int WARPS = kRows / (16 * RG);
  static constexpr int THREADS = 32 * WARPS;
  static constexpr bool Q_IN_SMEM = RG > 1;
  static constexpr int CH = HD / 8;                 // 16-byte chunks per K/V/Q row
  static constexpr int SWZ = CH < 8 ? CH - 1 : 7;   // XOR mask of the chunk index
  static constexpr int KS = HD / 16;                // k16 slices of Q Kᵀ
  static constexpr int DN = HD / 8;                 // n8 tiles of O
  static constexpr int JN = kKeys / 8;              // n8 tiles of S
  static constexpr int KK = kKeys / 16;             // k16 slices of P V
  static constexpr size_t TILE_BYTES = kKeys * HD * 2;  // one K or V tile
  static constexpr size_t Q_BYTES = Q_IN_SMEM ? kRows * HD * 2 : 0;
  static constexpr int HALF_BYTES = kKeys * 128;  // WG: one 64-element half of a tile
  // A thread's next key to load is this many bytes further on in a tile (THREADS / CH keys on).
  static constexpr int PASS_BYTES = (THREADS / CH) * (WG ? 128 : HD * 2);
  static constexpr size_t ALIGN_SLACK = WG ? 1024 : 0;  // wgmma's swizzle atoms start on 1024 bytes
  // K/V stages: v6 loads tiles LOAD_AHEAD ahead and keeps two more (the tile being multiplied
  // and the one before, whose P V may still run); v4 and v5 double-buffer.
  static constexpr int LOAD_AHEAD = 2;
  static constexpr int STAGES = WG ? LOAD_AHEAD + 2 : 2;
  static constexpr size_t SMEM_BYTES = 2 * STAGES * TILE_BYTES + Q_BYTES + ALIGN_SLACK;  // K and V a stage; Q
};

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t address, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                                  uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(address));
}

template <typename T, int HD, int RG, bool WG>
__global__ void __launch_bounds__(PrefillShape<HD, RG, WG>::THREADS, RG)
    prefill_mma_kernel(const T* q, const int32_t* tiles, int num_tiles, const int32_t* positions, PagedKv<T> kv,
                       int num_heads, AttentionOut<T> out) {
  using S = PrefillShape<HD, RG, WG>;
  extern __shared__ __align__(128) unsigned char smem[];
  // [stage][K, V][key][HD] (WG: [stage][K, V][half][key][64]), then Q [row][HD] (RG > 1); each
  // row's 16-byte chunks swizzled.
  const uint32_t smem_base = WG ? (smem_address(smem) + 1023u) & ~1023u : smem_address(smem);
  const uint32_t q_smem = smem_base + 2 * S::STAGES * S::TILE_BYTES;

  // Tiles come longest first (order_prefill_tiles), each with all its KV heads.
  const int tile = blockIdx.x / kv.num_kv_heads;
  const int seq = tiles[3 * tile], t0 = tiles[3 * tile + 1], nt = tiles[3 * tile + 2];
  const int g = blockIdx.x % kv.num_kv_heads;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int quad_row = lane >> 2, quad_col = lane & 3;
  const int group = num_heads / kv.num_kv_heads;
  const int valid_rows = nt * group;
  const int32_t* table = kv.block_tables + static_cast<int64_t>(seq) * kv.table_stride;
  const int first_pos = positions[t0];
  const int max_pos = positions[t0 + nt - 1];  // consecutive positions
  const int key_tiles = max_pos / kKeys + 1;

  // Row r of the block is token t0 + r / group, query head g * group + r % group; rows past the
  // tile compute as its last row (no NaN) and are not stored.
  const auto clamp_row = [&](int r) { return r < valid_rows ? r : valid_rows - 1; };
  const auto q_offset = [&](int rr) {  // (token * num_heads + head) * HD
    return (static_cast<int64_t>(t0 + rr / group) * num_heads + g * group + rr % group) * HD;
  };
  // This thread's rows: quad_row and quad_row + 8 of each of its warp's RG groups of 16 (their
  // positions and offsets are recomputed where needed, as two groups leave no registers to hold them).
  const auto thread_row = [&](int gi, int h) { return (warp * RG + gi) * 16 + quad_row + 8 * h; };

  // A thread always loads the same 16-byte chunk of every (THREADS / CH)-th key, so its column
  // offset and swizzle are fixed (key % 8 is too: THREADS / CH is a multiple of the swizzle
  // period). Positions map to slots by shift and mask when block_size is a power of two. Against
  // a division and a remainder per 16 bytes, v4 gained 16% (bench/CUDA_NOTES.md, "Session 6").
  constexpr int kKeysPerPass = S::THREADS / S::CH;
  constexpr int kPasses = (kKeys + kKeysPerPass - 1) / kKeysPerPass;
  static_assert(kKeysPerPass % (S::SWZ + 1) == 0 && (!WG || kKeysPerPass % 8 == 0),
                "a thread's keys share one swizzle");
  const int my_chunk = tid % S::CH, my_key = tid / S::CH;
  const int64_t my_column = g * HD + my_chunk * 8;
  const uint32_t my_dst =
      WG ? smem_base + (my_chunk / 8) * S::HALF_BYTES + my_key * 128 + swizzle(my_key, my_chunk % 8, 7) * 16
         : smem_base + my_key * HD * 2 + swizzle(my_key, my_chunk, S::SWZ) * 16;
  const int bs = kv.block_size;
  const bool bs_pow2 = (bs & (bs - 1)) == 0;
  const int bs_shift = __ffs(bs) - 1;
  // v6 looks up a tile's slots (block-table entry times block_size plus the offset, or -1 past
  // the last key) a step before its copies are issued, so that a copy costs only its address:
  // the table load, the division and the 64-bit slot arithmetic of each copy had sat in front of
  // every step's Q Kᵀ. With the lookups moved behind the step's softmax too, the kernel took 5-9%
  // less time (bench/CUDA_NOTES.md, "Session 9"). v4 and v5 look up as they go (a run of v4 with
  // the entries ahead, and its softmax split differently, was 10% slower).
  const auto slot_of = [&](int j) {  // position j's cache slot
    return bs_pow2 ? table[j >> bs_shift] * bs + (j & (bs - 1)) : table[j / bs] * bs + j % bs;
  };
  auto fetch_slots = [&](int kt, int (&slots)[kPasses]) {
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      const int j = kt * kKeys + my_key + p * kKeysPerPass;
      slots[p] = j > max_pos ? -1 : slot_of(j);
    }
  };
  const int kv_row = kv.num_kv_heads * HD;
  auto load_tile = [&](int kt, int stage, const int (&slots)[kPasses]) {
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      const int key = my_key + p * kKeysPerPass;
      if (kPasses == 1 && key >= kKeys) break;  // more threads than chunks (head_dim 16, v4)
      const uint32_t dst = my_dst + stage * 2 * S::TILE_BYTES + p * S::PASS_BYTES;
      const int j = kt * kKeys + key;
      const int slot = WG ? slots[p] : j <= max_pos ? slot_of(j) : -1;
      const bool valid = slot >= 0;
      const int64_t off = static_cast<int64_t>(valid ? slot : 0) * kv_row + my_column;
      cp_async_16(dst, kv.k + off, valid);
      cp_async_16(dst + S::TILE_BYTES, kv.v + off, valid);
    }
    cp_async_commit();
  };

  // Q fragments (A operand, row-major 16 x 16 per k16 slice): in registers, loaded once (RG = 1),
  // or in shared memory, read by ldmatrix each key tile (RG > 1; loaded with the first K/V tile).
  constexpr int QF = S::Q_IN_SMEM ? 1 : S::KS;
  uint32_t qf[QF][4];
  if constexpr (S::Q_IN_SMEM) {
#pragma unroll 4
    for (int i = tid; i < kRows * S::CH; i += S::THREADS) {
      const int r = i / S::CH, c = i % S::CH;
      cp_async_16(q_smem + r * HD * 2 + swizzle(r, c, S::SWZ) * 16, q + q_offset(clamp_row(r)) + c * 8, true);
    }
  } else {
#pragma unroll
    for (int ks = 0; ks < S::KS; ++ks) {
      const int col = ks * 16 + quad_col * 2;
      const T* row0 = q + q_offset(clamp_row(thread_row(0, 0))) + col;
      const T* row1 = q + q_offset(clamp_row(thread_row(0, 1))) + col;
      qf[ks][0] = *reinterpret_cast<const uint32_t*>(row0);
      qf[ks][1] = *reinterpret_cast<const uint32_t*>(row1);
      qf[ks][2] = *reinterpret_cast<const uint32_t*>(row0 + 8);
      qf[ks][3] = *reinterpret_cast<const uint32_t*>(row1 + 8);
    }
  }

  float o[RG][S::DN][4];
  float m_run[RG][2], l_run[RG][2];
#pragma unroll
  for (int gi = 0; gi < RG; ++gi) {
#pragma unroll
    for (int dn = 0; dn < S::DN; ++dn) o[gi][dn][0] = o[gi][dn][1] = o[gi][dn][2] = o[gi][dn][3] = 0.0f;
    m_run[gi][0] = m_run[gi][1] = -INFINITY;
    l_run[gi][0] = l_run[gi][1] = 0.0f;
  }
  const float scale_log2 = rsqrtf(static_cast<float>(HD)) * 1.4426950408889634f;

  // ldmatrix lanes: lane l gives the address of row (l % 8) of matrix l / 8.
  const int lm_row = lane & 7, lm_matrix = lane >> 3;

  // S = Q Kᵀ by mma.sync: B fragments of two key n8 tiles per ldmatrix.x4 (matrices: keys of tile
  // 2jp (+8 for 2jp+1), d chunk 2ks (+1)), each used by the warp's RG groups.
  auto qk_mma = [&](uint32_t k_tile, float (&s)[RG][S::JN][4]) {
#pragma unroll
    for (int gi = 0; gi < RG; ++gi) {
#pragma unroll
      for (int jn = 0; jn < S::JN; ++jn) s[gi][jn][0] = s[gi][jn][1] = s[gi][jn][2] = s[gi][jn][3] = 0.0f;
    }
#pragma unroll
    for (int ks = 0; ks < S::KS; ++ks) {
      uint32_t a[RG][4];
#pragma unroll
      for (int gi = 0; gi < RG; ++gi) {
        if constexpr (S::Q_IN_SMEM) {
          // matrices: rows 0-7 / 8-15 of the group, d chunk 2ks / 2ks + 1 (a0..a3 of the fragment)
          const int row = (warp * RG + gi) * 16 + (lm_matrix & 1) * 8 + lm_row;
          const int chunk = 2 * ks + (lm_matrix >> 1);
          ldmatrix_x4(q_smem + row * HD * 2 + swizzle(row, chunk, S::SWZ) * 16, a[gi][0], a[gi][1], a[gi][2],
                      a[gi][3]);
        } else {
          a[gi][0] = qf[ks][0], a[gi][1] = qf[ks][1], a[gi][2] = qf[ks][2], a[gi][3] = qf[ks][3];
        }
      }
#pragma unroll
      for (int jp = 0; jp < S::JN / 2; ++jp) {
        const int key = (2 * jp + (lm_matrix >> 1)) * 8 + lm_row;
        const int chunk = 2 * ks + (lm_matrix & 1);
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4(k_tile + key * HD * 2 + swizzle(key, chunk, S::SWZ) * 16, b0, b1, b2, b3);
#pragma unroll
        for (int gi = 0; gi < RG; ++gi) {
          mma_16816<T>(s[gi][2 * jp], a[gi], b0, b1);
          mma_16816<T>(s[gi][2 * jp + 1], a[gi], b2, b3);
        }
      }
    }
  };
  // O += P V by mma.sync: B fragments of two d n8 tiles per ldmatrix.x4.trans (matrices: keys
  // 16kk (+8), d chunk dn (+1)), each used by the warp's RG groups.
  auto pv_mma = [&](uint32_t v_tile, const uint32_t (&pf)[RG][S::KK][4]) {
#pragma unroll
    for (int kk = 0; kk < S::KK; ++kk) {
#pragma unroll
      for (int dp = 0; dp < S::DN / 2; ++dp) {
        const int key = kk * 16 + (lm_matrix & 1) * 8 + lm_row;
        const int chunk = 2 * dp + (lm_matrix >> 1);
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4_trans(v_tile + key * HD * 2 + swizzle(key, chunk, S::SWZ) * 16, b0, b1, b2, b3);
#pragma unroll
        for (int gi = 0; gi < RG; ++gi) {
          mma_16816<T>(o[gi][2 * dp], pf[gi][kk], b0, b1);
          mma_16816<T>(o[gi][2 * dp + 1], pf[gi][kk], b2, b3);
        }
      }
    }
  };
  // The same two products by wgmma (attention_tile.cuh), issued only (wgmma_commit and wgmma_wait
  // finish them). They give the mma.sync products' values (cuda_prefill_check).
  auto issue_qk_wgmma = [&](uint32_t k_tile, float (&s)[S::JN][4]) {
    if constexpr (WG) sy::cuda::issue_qk_wgmma<T>(s, qf, k_tile, S::HALF_BYTES);
  };
  auto issue_pv_wgmma = [&](uint32_t v_tile, const uint32_t (&pf)[S::KK][4]) {
    if constexpr (WG) sy::cuda::issue_pv_wgmma<T>(o[0], pf, v_tile, S::HALF_BYTES);
  };

  // Online softmax of key tile kt for row group gi, in three parts: softmax_max masks s, moves the
  // running max, rescales the running sum and gives O's factors; rescale_o applies those to O;
  // softmax_exp adds p to the running sum and leaves P as A fragments of P V. Element (jn, e) of
  // s is key kt * 64 + jn * 8 + quad_col * 2 + (e & 1) of row half e >> 1. Masking is needed only where the
  // tile reaches past the first row's position. The running max is kept in log2 units (max of the
  // raw scores times scale_log2, the same as the max of the scaled scores), so that
  // p = 2^(s * scale_log2 - m) is one FMA and an exp2.
  auto softmax_max = [&](int gi, int kt, float (&s)[S::JN][4], float (&factor)[2]) {
    const int base = kt * kKeys;
    const bool needs_mask = base + kKeys - 1 > first_pos;
    if (needs_mask) {
      const int row_pos[2] = {first_pos + clamp_row(thread_row(gi, 0)) / group,
                              first_pos + clamp_row(thread_row(gi, 1)) / group};
      mask_keys_past_rows(s, base, quad_col, row_pos);
    }
    float m_raw[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) m_raw[h] = thread_row_max(s, h);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      // finite from the first tile on: key 0 is before every row
      const float m_new = fmaxf(m_run[gi][h], quad_max(m_raw[h]) * scale_log2);
      factor[h] = m_new == m_run[gi][h] ? 1.0f : fast_exp2(m_run[gi][h] - m_new);
      m_run[gi][h] = m_new;
      l_run[gi][h] *= factor[h];
    }
  };
  // P as A fragments of P V: k16 slice kk covers S's n8 tiles 2kk and 2kk + 1. The running sum
  // takes p before its rounding to 16 bits, as v1 did.
  auto softmax_exp = [&](int gi, const float (&s)[S::JN][4], uint32_t (&pf)[S::KK][4]) {
#pragma unroll
    for (int jn = 0; jn < S::JN; ++jn) {
      float p[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        p[e] = fast_exp2(fmaf(s[jn][e], scale_log2, -m_run[gi][e >> 1]));
        l_run[gi][e >> 1] += p[e];
      }
      pf[jn / 2][(jn & 1) * 2 + 0] = pack2<T>(p[0], p[1]);
      pf[jn / 2][(jn & 1) * 2 + 1] = pack2<T>(p[2], p[3]);
    }
  };
  // O times the factors softmax_max gave (row half h by factor[h]). Once the rows' maxima settle,
  // most tiles leave them unchanged: then O needs no rescale (a factor of exactly 1), which the
  // warp skips together.
  auto rescale_o = [&](int gi, const float (&factor)[2]) {
    if (__any_sync(0xffffffffu, factor[0] != 1.0f || factor[1] != 1.0f)) {
#pragma unroll
      for (int dn = 0; dn < S::DN; ++dn) {
        o[gi][dn][0] *= factor[0];
        o[gi][dn][1] *= factor[0];
        o[gi][dn][2] *= factor[1];
        o[gi][dn][3] *= factor[1];
      }
    }
  };

  const auto k_tile_at = [&](int stage) { return smem_base + stage * 2 * S::TILE_BYTES; };
  int slots[kPasses] = {};  // v6: the slots of the next tile to load (fetch_slots)
  if constexpr (WG) fetch_slots(0, slots);
  load_tile(0, 0, slots);
  if constexpr (!WG) {
    // Two stages: tile kt + 1 loads while tile kt is multiplied.
    for (int kt = 0; kt < key_tiles; ++kt) {
      const int stage = kt & 1;
      if (kt + 1 < key_tiles) {
        load_tile(kt + 1, stage ^ 1, slots);
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      float s[RG][S::JN][4];
      qk_mma(k_tile_at(stage), s);
      uint32_t pf[RG][S::KK][4];
#pragma unroll
      for (int gi = 0; gi < RG; ++gi) {
        float factor[2];
        softmax_max(gi, kt, s[gi], factor);
        rescale_o(gi, factor);
        softmax_exp(gi, s[gi], pf[gi]);
      }
      pv_mma(k_tile_at(stage) + S::TILE_BYTES, pf);
      __syncthreads();  // every warp is done with this stage before it is refilled
    }
  } else {
    // S a tile ahead, P V a tile behind: while a warpgroup's softmax of tile kt runs, the tensor
    // cores run its P V of tile kt - 1 and Q Kᵀ of tile kt + 1. Tile kt + D (D = LOAD_AHEAD)
    // loads meanwhile, into the stage of tile kt - 2, whose P V was done before this step's
    // barrier. Every step commits one group of copies (empty past the last tile), so "tile
    // kt + 1 has landed" is always the same wait. P V reads its P from registers as it runs, so
    // P alternates between two register sets (the loop is unrolled by two for it, and for S's).
    constexpr int D = S::LOAD_AHEAD;
#pragma unroll
    for (int t = 1; t < D; ++t) {
      if (t < key_tiles) {
        fetch_slots(t, slots);
        load_tile(t, t, slots);
      } else {
        cp_async_commit();
      }
    }
    if (D < key_tiles) fetch_slots(D, slots);
    cp_async_wait<D - 1>();  // tile 0
    fence_shared_for_wgmma();
    __syncthreads();
    float s_a[S::JN][4], s_b[S::JN][4];
    uint32_t pf_a[S::KK][4], pf_b[S::KK][4];
    issue_qk_wgmma(k_tile_at(0), s_a);
    wgmma_wait<0>();
    wgmma_pin(s_a);
    // Tile kt's softmax, then its P V, once the P V before it is done: at that wait, `pending`
    // groups issued after that P V may still run (1: the next tile's Q Kᵀ; 0 in the last step).
    const auto softmax_and_pv = [&](auto pending, int kt, float (&s)[S::JN][4], uint32_t (&pf)[S::KK][4]) {
      float factor[2];
      softmax_max(0, kt, s, factor);
      softmax_exp(0, s, pf);
      wgmma_wait<decltype(pending)::value>();
      wgmma_pin(o[0]);  // O is ours to rescale
      rescale_o(0, factor);
      issue_pv_wgmma(k_tile_at(kt % S::STAGES) + S::TILE_BYTES, pf);
    };
    // A step with a next tile. Every step issues and waits the same way, so that ptxas can tell
    // which products are done at each wait (where the steps differed, it serialized the wgmmas).
    const auto step = [&](int kt, float (&s)[S::JN][4], float (&s_next)[S::JN][4], uint32_t (&pf)[S::KK][4]) {
      cp_async_wait<D - 2>();  // tile kt + 1
      fence_shared_for_wgmma();
      __syncthreads();
      // The copies of tile kt + D go first: issued after the softmax, they arrived too late
      // (four prompts 13% slower); issued after Q Kᵀ, they needed S's registers twice (spills).
      // The next tile's slot lookups, whose results wait a step anyway, go last.
      if (kt + D < key_tiles) {
        load_tile(kt + D, (kt + D) % S::STAGES, slots);
      } else {
        cp_async_commit();
      }
      issue_qk_wgmma(k_tile_at((kt + 1) % S::STAGES), s_next);
      softmax_and_pv(std::integral_constant<int, 1>{}, kt, s, pf);
      if (kt + D + 1 < key_tiles) fetch_slots(kt + D + 1, slots);
      wgmma_wait<1>();  // Q Kᵀ of tile kt + 1; P V of tile kt may still run
      wgmma_pin(s_next);
    };
    const auto last_step = [&](int kt, float (&s)[S::JN][4], uint32_t (&pf)[S::KK][4]) {
      softmax_and_pv(std::integral_constant<int, 0>{}, kt, s, pf);
    };
    int kt = 0;
    for (; kt + 2 < key_tiles; kt += 2) {
      step(kt, s_a, s_b, pf_a);
      step(kt + 1, s_b, s_a, pf_b);
    }
    if (kt + 1 < key_tiles) {
      step(kt, s_a, s_b, pf_a);
      last_step(kt + 1, s_b, pf_b);
    } else {
      last_step(kt, s_a, pf_a);
    }
    wgmma_wait<0>();
    wgmma_pin(o[0]);
  }

#pragma unroll
  for (int gi = 0; gi < RG; ++gi) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float l = quad_sum(l_run[gi][h]);
      const int r = thread_row(gi, h);
      if (r >= valid_rows) continue;
      const float inv = 1.0f / l;
      const int64_t dst = q_offset(r) + quad_col * 2;
#pragma unroll
      for (int dn = 0; dn < S::DN; ++dn) {
        store_attention_pair(out, dst + dn * 8, o[gi][dn][2 * h] * inv, o[gi][dn][2 * h + 1] * inv);
      }
    }
  }
}

/** Lets the kernel have its shared memory (past the default 48 KB); once per instantiation, before any capture. */
template <typename T, int HD, int RG, bool WG>
void allow_shared_memory() {
  static const bool set = [] {
    SY_CUDA_CHECK(cudaFuncSetAttribute(prefill_mma_kernel<T, HD, RG, WG>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(PrefillShape<HD, RG, WG>::SMEM_BYTES)));
    return true;
  }();
  (void)set;
}

template <typename T, int HD, int RG, bool WG = false>
void launch_prefill_rows(const T* q, const int32_t* tiles, int num_tiles, const int32_t* positions,
                         const PagedKv<T>& kv, int num_heads, const AttentionOut<T>& out, cudaStream_t stream) {
  using S = PrefillShape<HD, RG, WG>;
  allow_shared_memory<T, HD, RG, WG>();
  prefill_mma_kernel<T, HD, RG, WG><<<num_tiles * kv.num_kv_heads, S::THREADS, S::SMEM_BYTES, stream>>>(
      q, tiles, num_tiles, positions, kv, num_heads, out);
  SY_CUDA_CHECK_LAUNCH(prefill_mma_kernel);
}

}  // namespace

namespace {

enum class PrefillKernel { kWmma, kRows16, kRows32, kWgmma };

const std::string& wanted_kernel() {
  static const std::string wanted = [] {
    const char* v = std::getenv("SWITCHYARD_CUDA_PREFILL");
    return std::string(v ? v : "");
  }();
  return wanted;
}

bool runs_wmma(int head_dim) { return wanted_kernel() == "wmma" || head_dim > 128; }

int sm_count() {
  static const int count = [] {
    int device = 0, n = 0;
    SY_CUDA_CHECK(cudaGetDevice(&device));
    SY_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    return std::max(n, 1);
  }();
  return count;
}

// wgmma exists on compute capability 9.0 only (sm_90a), and the build must have compiled it.
bool device_has_wgmma() {
  static const bool has = [] {
    int device = 0, major = 0, minor = 0;
    SY_CUDA_CHECK(cudaGetDevice(&device));
    SY_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    SY_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    return kWgmmaBuilt && major == 9 && minor == 0;
  }();
  return has;
}

bool runs_wgmma(int head_dim) {
  const std::string& w = wanted_kernel();
  return w != "mma16" && w != "mma32" && !runs_wmma(head_dim) && head_dim == 128 && device_has_wgmma();
}

// v7 (prefill_attention_pingpong.cu) runs wherever v6 could, with 128-key tiles, unless
// SWITCHYARD_CUDA_PREFILL asks for v6 ("wgmma") or for v7 with 64-key tiles ("pingpong64", which
// gives v6's bits). Returns the key tile, or 0 where v7 does not run.
int pingpong_key_tile(int head_dim) {
  if (!runs_wgmma(head_dim)) return 0;
  const std::string& w = wanted_kernel();
  return w == "wgmma" ? 0 : w == "pingpong64" ? 64 : 128;
}

// The kernel a launch of `blocks` blocks runs: v1 (WMMA, 64-row tiles) for head_dim 256; v5 (two
// blocks an SM, each with twice the MMAs per ldmatrix) for launches of more than two blocks an
// SM; v4 (8 warps of one row group, one block an SM) for smaller ones. In a single wave of v5 an
// SM's two blocks are not the longest and the shortest but whatever the hardware pairs: one
// 2048-token prompt (256 blocks) takes 0.107 ms in v5 and 0.083 ms in v4, whose greedy
// longest-first second wave balances the SMs; four prompts (1024 blocks) 0.260 ms in v5 and 0.312
// in v4 (H200). SWITCHYARD_CUDA_PREFILL=wmma | mma16 | mma32 forces one wherever it can run (for
// comparisons); any other value is the default. On an sm_90a build and a compute capability 9.0
// GPU, head_dim 128 runs v7 (prefill_attention_pingpong.cu; "wgmma" forces v6, "pingpong64" v7
// with v6's 64-key tiles and bits); head_dim 64 passes v6's check with today's loop but is left
// to v4/v5 (see wgmma_block_fills_sm).
PrefillKernel rows_kernel_for(int blocks) {
  if (wanted_kernel() == "mma16") return PrefillKernel::kRows16;
  if (wanted_kernel() == "mma32") return PrefillKernel::kRows32;
  return blocks > 2 * sm_count() ? PrefillKernel::kRows32 : PrefillKernel::kRows16;
}

PrefillKernel prefill_kernel(int head_dim, int blocks) {
  if (runs_wmma(head_dim)) return PrefillKernel::kWmma;
  if (runs_wgmma(head_dim)) return PrefillKernel::kWgmma;
  return rows_kernel_for(blocks);
}

// v6 was checked only where one block fills an SM (its registers see to that: over 200 a thread
// at head_dim 128). With head_dim 64 and two blocks an SM, an earlier version gave wrong results
// that were not explained; should a build ever fit two, the mma.sync kernels serve instead.
template <typename T, int HD>
bool wgmma_block_fills_sm() {
  static const bool fills = [] {
    allow_shared_memory<T, HD, 1, true>();
    int blocks = 0;
    SY_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, prefill_mma_kernel<T, HD, 1, true>,
                                                                PrefillShape<HD, 1, true>::THREADS,
                                                                PrefillShape<HD, 1, true>::SMEM_BYTES));
    return blocks == 1;
  }();
  return fills;
}

template <typename T, int HD>
void launch_prefill_mma(const T* q, const int32_t* tiles, int num_tiles, const int32_t* positions,
                        const PagedKv<T>& kv, int num_heads, const AttentionOut<T>& out, cudaStream_t stream) {
  const int blocks = num_tiles * kv.num_kv_heads;
  PrefillKernel kernel = prefill_kernel(HD, blocks);
  if (kernel == PrefillKernel::kWgmma) {
    if constexpr (HD == 128) {
      if (const int key_tile = pingpong_key_tile(HD)) {
        return launch_prefill_pingpong<T>(key_tile, q, tiles, num_tiles, positions, kv, num_heads, out, stream);
      }
      if (wgmma_block_fills_sm<T, HD>()) {
        return launch_prefill_rows<T, HD, 1, true>(q, tiles, num_tiles, positions, kv, num_heads, out, stream);
      }
    }
    kernel = rows_kernel_for(blocks);
  }
  if (kernel == PrefillKernel::kRows16) {
    return launch_prefill_rows<T, HD, 1>(q, tiles, num_tiles, positions, kv, num_heads, out, stream);
  }
  launch_prefill_rows<T, HD, 2>(q, tiles, num_tiles, positions, kv, num_heads, out, stream);
}

}  // namespace

const char* prefill_kernel_name(int head_dim) {
  if (runs_wmma(head_dim)) return "wmma";
  if (const int key_tile = pingpong_key_tile(head_dim)) return key_tile == 64 ? "pingpong64" : "pingpong128";
  if (runs_wgmma(head_dim)) return "wgmma";
  if (wanted_kernel() == "mma16" || wanted_kernel() == "mma32") return wanted_kernel().c_str();
  return "mma16 or mma32 by launch size";
}

int prefill_tile_tokens(int group, int head_dim) { return (runs_wmma(head_dim) ? 64 : kRows) / group; }

void order_prefill_tiles(int32_t* tiles, int num_tiles, const int32_t* positions) {
  std::vector<std::array<int32_t, 3>> sorted(num_tiles);
  for (int i = 0; i < num_tiles; ++i) sorted[i] = {tiles[3 * i], tiles[3 * i + 1], tiles[3 * i + 2]};
  const auto last_position = [positions](const std::array<int32_t, 3>& t) { return positions[t[1] + t[2] - 1]; };
  std::stable_sort(sorted.begin(), sorted.end(),
                   [&](const auto& a, const auto& b) { return last_position(a) > last_position(b); });
  for (int i = 0; i < num_tiles; ++i) std::copy(sorted[i].begin(), sorted[i].end(), tiles + 3 * i);
}

template <typename T>
void paged_attention_prefill(const T* q, const int32_t* tiles, int num_tiles, const int32_t* positions,
                             const PagedKv<T>& kv, int num_heads, const AttentionOut<T>& out, cudaStream_t stream) {
  if (num_tiles == 0) return;
  if (runs_wmma(kv.head_dim)) {
    return paged_attention_prefill_wmma<T>(q, tiles, num_tiles, positions, kv, num_heads, out, stream);
  }
  switch (kv.head_dim) {
    case 16: return launch_prefill_mma<T, 16>(q, tiles, num_tiles, positions, kv, num_heads, out, stream);
    case 32: return launch_prefill_mma<T, 32>(q, tiles, num_tiles, positions, kv, num_heads, out, stream);
    case 64: return launch_prefill_mma<T, 64>(q, tiles, num_tiles, positions, kv, num_heads, out, stream);
    case 128: return launch_prefill_mma<T, 128>(q, tiles, num_tiles, positions, kv, num_heads, out, stream);
    default: throw_unsupported_head_dim(kv.head_dim);
  }
}

template void paged_attention_prefill<__nv_bfloat16>(const __nv_bfloat16*, const int32_t*, int, const int32_t*,
                                                     const PagedKv<__nv_bfloat16>&, int,
                                                     const AttentionOut<__nv_bfloat16>&, cudaStream_t);
template void paged_attention_prefill<__half>(const __half*, const int32_t*, int, const int32_t*,
                                              const PagedKv<__half>&, int, const AttentionOut<__half>&,
                                              cudaStream_t);

}  // namespace sy::cuda
