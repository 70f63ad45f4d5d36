// Decode attention on tensor cores: the warp-stepped kernel's grid, splits, warp steps and merge
// (decode_attention_warps.cu), with a step's Q Kᵀ and P V as mma.sync instead of per-lane dot
// products. At batch 256 the warp-stepped kernel spent ~1000 instructions a 16-key step on 8 KB of
// K and V (conversions, FMA chains, shared-memory q reads) and read at ~65% of DRAM peak, bound by
// neither its bytes nor its issue rate: a latency chain. Here a 16-key step is 16 MMAs, 32 register
// transposes and a softmax of two scores a lane, and the kernel reads at ~79% of DRAM peak
// (bench/CUDA_NOTES.md, "Session 15").
//
// The fragments come straight from 16-byte global loads, since a dot product does not care in
// which order its dims are summed, nor P V in which order its keys are:
//  - Q Kᵀ, keys as the M rows: lane (row8 = lane / 4, quad = lane % 4) loads dims
//    [quad * HD / 4, +HD / 4) of keys row8 and row8 + 8. In k16 slice j its A registers are the
//    words holding dims +4j..+4j+3, which stand for the slice's columns 2·quad, +1, +8, +9; q's B
//    fragment takes the same dims. The MMA's 8 columns are the group's q rows as hi and lo 16-bit
//    halves (column 2h + part), so q keeps ~16 bits of mantissa and the MMA's fp32 sums are the
//    only other rounding. Lane quad < group ends with head quad's scores of its two keys.
//  - P V as O ᵀ = Vᵀ Pᵀ, dims as the M rows: lane loads dims [32dg + 8·quad, +8) of its two keys,
//    four 8x8 matrices (key, dim pair) whose transposes (movmatrix) are Vᵀ's A fragments for dims
//    32dg + 8(row8 / 2) + 2w + row8 % 2. P's B fragment (P as hi and lo again) is gathered from
//    the score lanes by four shuffles.
// Where a launch splits rows (short chunks), steps are 8 keys at three blocks an SM, as in the
// warp-stepped kernel: Sᵀ = q Kᵀ with q's hi and lo rows as A (rows 8-15 zero) against key row8
// as B's column, hi + lo added by one shuffle, and P V by m16n8k8, P's fragment being the lane's
// own probabilities. Built for head_dim 64 and 128 at GQA groups 2 and 4 (has_mma_build).
#include "kernels/cuda/decode_attention_mma.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/attention_tile.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/paged_kv.cuh"
#include "kernels/cuda/reduce.cuh"

namespace sy::cuda {
namespace {

template <int HD, int K>
struct MmaStepShape {
  static constexpr int KEYS = K;             // keys a warp takes a step
  static constexpr int NH = K / 8;           // keys a lane loads a step: row8 (+ 8)
  static constexpr int KS = HD / 16;         // k16 slices of Q Kᵀ
  static constexpr int ROW_LOADS = HD / 32;  // 16-byte loads of a lane's HD / 4 dims of a K row
  static constexpr int DG = HD / 32;         // 32-dim groups of P V: one 16-byte V load a key each
  // 16-key steps: 128 registers (two keys' K and V a lane), two blocks an SM. 8-key steps: one
  // key's, three blocks an SM, for the short chunks of split rows.
  static constexpr int MIN_BLOCKS = K == 8 ? 3 : 2;
};

__device__ __forceinline__ uint32_t transpose_8x8(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

__device__ __forceinline__ uint16_t bits_of(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
__device__ __forceinline__ uint16_t bits_of(__half v) { return __half_as_ushort(v); }

/** x and y rounded to 16 bits (the hi half), or what that rounding left (the lo half), as one register. */
template <typename T>
__device__ __forceinline__ uint32_t pack_part(float x, float y, bool lo) {
  const T hx = from_f32<T>(x), hy = from_f32<T>(y);
  const T px = lo ? from_f32<T>(x - to_f32(hx)) : hx, py = lo ? from_f32<T>(y - to_f32(hy)) : hy;
  return static_cast<uint32_t>(bits_of(px)) | (static_cast<uint32_t>(bits_of(py)) << 16);
}

template <typename T, int HD, int G, bool FUSED, int KEYS>
__global__ void __launch_bounds__(kDecodeThreads, (MmaStepShape<HD, KEYS>::MIN_BLOCKS))
    decode_mma_kernel(DecodeAttentionArgs<T> a) {
  allow_dependent_launch();  // dependent_launch.cuh: the next kernel may start launching
  using S = MmaStepShape<HD, KEYS>;
  constexpr int WARPS = kDecodeThreads / 32;
  constexpr unsigned kAll = 0xffffffffu;
  __shared__ __align__(16) float qs[G][HD];
  __shared__ uint2 qfrag[S::KS][32];
  __shared__ __align__(16) float warp_acc[WARPS][G][HD];
  __shared__ float warp_m[WARPS][G], warp_l[WARPS][G];
  __shared__ __align__(16) T new_k[FUSED ? HD : 8], new_v[FUSED ? HD : 8];

  const int r = blockIdx.x, g = blockIdx.y, z = blockIdx.z;
  const PagedKv<T>& kv = a.kv;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int row8 = lane >> 2, quad = lane & 3;  // the MMA fragments' group and thread-in-group
  const int group = a.num_heads / kv.num_kv_heads;
  const int token = a.rows[3 * r], seq = a.rows[3 * r + 1], ctx = a.rows[3 * r + 2];
  const int chunk = decode_chunk(ctx, a.splits), active = (ctx + chunk - 1) / chunk;
  if (z >= active) return;  // no keys here; the counter counts active blocks only
  const int k_begin = z * chunk, k_end = min(ctx, k_begin + chunk);
  const int steps = (k_end - k_begin + S::KEYS - 1) / S::KEYS;
  const int own_key = ctx - 1;                  // the step's own key: made by this kernel or the one before
  const bool owns_new = FUSED && k_end == ctx;  // this block makes it (fused_qkv_prologue)
  const int32_t* table = kv.block_tables + static_cast<int64_t>(seq) * kv.table_stride;
  const int64_t kv_row = static_cast<int64_t>(kv.num_kv_heads) * HD;
  const float scale = rsqrtf(static_cast<float>(HD));
  const int k_dim = quad * (HD / 4);  // this lane's first K dim in Q Kᵀ
  const int v_dim = 8 * quad;         // its first V dim in each 32-dim group

  // Lane's keys of a step: row8 (and row8 + 8 in 16-key steps); their cache offsets, or -1 past the chunk.
  const auto key_of = [&](int step, int h) { return k_begin + step * S::KEYS + row8 + 8 * h; };
  const auto slot_at = [&](int step, int h) -> int64_t {
    const int key = key_of(step, h);
    return key < k_end ? slot_of(table, key, kv.block_size) * kv_row + g * HD : -1;
  };
  struct Slots {
    int64_t of[S::NH];
  };
  const auto slots_at = [&](int step) {
    Slots sl;
#pragma unroll
    for (int h = 0; h < S::NH; ++h) sl.of[h] = slot_at(step, h);
    return sl;
  };
  const auto no_slots = [] {
    Slots sl;
#pragma unroll
    for (int h = 0; h < S::NH; ++h) sl.of[h] = -1;
    return sl;
  };
  uint4 kraw[S::NH][S::ROW_LOADS], vraw[S::NH][S::DG];
  // A step's loads skip the own key, which the previous kernel or this block writes (load_own_key
  // fetches it after the wait), and give zeros past the chunk (P is 0 there, and 0 · NaN is not).
  const auto load_k = [&](int step, const Slots& sl) {
#pragma unroll
    for (int h = 0; h < S::NH; ++h) {
      const bool skip = sl.of[h] < 0 || key_of(step, h) == own_key;
#pragma unroll
      for (int i = 0; i < S::ROW_LOADS; ++i) {
        kraw[h][i] = skip ? make_uint4(0, 0, 0, 0) : *reinterpret_cast<const uint4*>(kv.k + sl.of[h] + k_dim + 8 * i);
      }
    }
  };
  const auto load_v = [&](int step, const Slots& sl, int dg) {
#pragma unroll
    for (int h = 0; h < S::NH; ++h) {
      const bool skip = sl.of[h] < 0 || key_of(step, h) == own_key;
      vraw[h][dg] = skip ? make_uint4(0, 0, 0, 0) : *reinterpret_cast<const uint4*>(kv.v + sl.of[h] + 32 * dg + v_dim);
    }
  };
  const auto load_own_key = [&](int step, const Slots& sl) {
#pragma unroll
    for (int h = 0; h < S::NH; ++h) {
      if (key_of(step, h) != own_key) continue;
#pragma unroll
      for (int i = 0; i < S::ROW_LOADS; ++i) {
        kraw[h][i] = *reinterpret_cast<const uint4*>(FUSED ? new_k + k_dim + 8 * i : kv.k + sl.of[h] + k_dim + 8 * i);
      }
#pragma unroll
      for (int dg = 0; dg < S::DG; ++dg) {
        vraw[h][dg] = *reinterpret_cast<const uint4*>(FUSED ? new_v + 32 * dg + v_dim : kv.v + sl.of[h] + 32 * dg + v_dim);
      }
    }
  };

  // The first step's loads read only what earlier steps wrote: issued before the wait, so they
  // overlap the previous kernel's tail.
  Slots sl = no_slots();
  if (warp < steps) {
    sl = slots_at(warp);
    load_k(warp, sl);
#pragma unroll
    for (int dg = 0; dg < S::DG; ++dg) load_v(warp, sl, dg);
  }
  wait_for_prior_kernels();
  stage_group_q<T, HD, FUSED>(a, token, g, group, own_key, owns_new, scale, qs, new_k, new_v);
  __syncthreads();  // q and the own key's K/V are in shared memory

  // q's fragments, the same for every warp (in shared memory: registers are K's, V's and O's):
  // lane `lane` of slice j holds dims quad * HD / 4 + 4j.. of q row row8, which is group row
  // row8 / 2's hi (even) or lo (odd) half. 16-key steps take them as B (q rows as columns),
  // 8-key steps as A's rows 0-7 (rows 8-15 zero).
  const int col_head = row8 >> 1;
  const bool col_lo = row8 & 1;
  for (int i = tid; i < S::KS * 32; i += kDecodeThreads) {
    const int j = i / 32, fl = i % 32, fh = (fl >> 2) >> 1, d = (fl & 3) * (HD / 4) + 4 * j;
    const bool flo = (fl >> 2) & 1;
    qfrag[j][fl] = fh < group ? make_uint2(pack_part<T>(qs[fh][d], qs[fh][d + 1], flo),
                                           pack_part<T>(qs[fh][d + 2], qs[fh][d + 3], flo))
                              : make_uint2(0u, 0u);
  }
  __syncthreads();

  // O fragments (both step sizes): group row quad's hi and lo columns for dims
  // 32dg + 8(row8 / 2) + 4p + row8 % 2 (+2).
  float acc[S::DG][2][4];
#pragma unroll
  for (int dg = 0; dg < S::DG; ++dg)
#pragma unroll
    for (int p = 0; p < 2; ++p)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[dg][p][e] = 0.0f;
  // The softmax state a lane keeps: of group row quad (16-key steps) or row8 / 2 (8-key steps).
  float m = -INFINITY, l = 0.0f;
  // A step of that online softmax over the lane's two scores, the step's other keys being in lanes
  // `lane ^ o` for o = xor_first, 2·xor_first, ..., xor_last: their probabilities in p0 and p1;
  // returns the factor of the old state (m and l move on).
  const auto softmax_step = [&](float s0, float s1, int xor_first, int xor_last, float& p0, float& p1) {
    float top = fmaxf(s0, s1);
#pragma unroll
    for (int o = xor_first; o <= xor_last; o <<= 1) top = fmaxf(top, __shfl_xor_sync(kAll, top, o));
    const float m_new = fmaxf(m, top);  // finite: the step's first key is in the chunk
    p0 = __expf(s0 - m_new);
    p1 = __expf(s1 - m_new);
    float sum = p0 + p1;
#pragma unroll
    for (int o = xor_first; o <= xor_last; o <<= 1) sum += __shfl_xor_sync(kAll, sum, o);
    const float f = __expf(m - m_new);
    m = m_new;
    l = l * f + sum;
    return f;
  };
  const auto rescale = [&](float f) {
    if (__any_sync(kAll, f != 1.0f)) {
#pragma unroll
      for (int dg = 0; dg < S::DG; ++dg)
#pragma unroll
        for (int p = 0; p < 2; ++p)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[dg][p][e] *= f;
    }
  };

  for (int step = warp; step < steps; step += WARPS) {
    load_own_key(step, sl);
    const int next = step + WARPS;
    const Slots next_sl = next < steps ? slots_at(next) : no_slots();

    if constexpr (KEYS == 16) {
      // S = K qᵀ: keys row8 and row8 + 8 as rows, q's hi and lo rows as columns.
      float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int j = 0; j < S::KS; ++j) {
        const int i = j / 2, w = 2 * (j % 2);
        const uint32_t af[4] = {word_of(kraw[0][i], w), word_of(kraw[1][i], w), word_of(kraw[0][i], w + 1),
                                word_of(kraw[1][i], w + 1)};
        const uint2 qb = qfrag[j][lane];
        mma_16816<T>(s, af, qb.x, qb.y);
      }
      if (next < steps) load_k(next, next_sl);

      // The online softmax of group row quad over the step's keys, two a lane (the other keys in
      // the lanes of the same quad).
      const float s0 = key_of(step, 0) < k_end ? s[0] + s[1] : -INFINITY;
      const float s1 = key_of(step, 1) < k_end ? s[2] + s[3] : -INFINITY;
      float p0, p1;
      rescale(softmax_step(s0, s1, 4, 16, p0, p1));

      // P's B fragment: keys 2·quad, +1, +8, +9 of column row8, from the lanes holding group row
      // col_head's scores of keys k (lane 4(k % 8) + col_head, p0 or p1 by k / 8).
      const int src = 8 * quad + col_head;
      const float x0 = __shfl_sync(kAll, p0, src), x1 = __shfl_sync(kAll, p0, src + 4);
      const float x2 = __shfl_sync(kAll, p1, src), x3 = __shfl_sync(kAll, p1, src + 4);
      const uint32_t pb0 = col_head < group ? pack_part<T>(x0, x1, col_lo) : 0u;
      const uint32_t pb1 = col_head < group ? pack_part<T>(x2, x3, col_lo) : 0u;

      // O ᵀ += Vᵀ Pᵀ, a 32-dim group at a time; its next V loads go out once it is transposed.
#pragma unroll
      for (int dg = 0; dg < S::DG; ++dg) {
        uint32_t t[2][4];
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int w = 0; w < 4; ++w) t[h][w] = transpose_8x8(word_of(vraw[h][dg], w));
        if (next < steps) load_v(next, next_sl, dg);
#pragma unroll
        for (int p = 0; p < 2; ++p) {
          const uint32_t af[4] = {t[0][2 * p], t[0][2 * p + 1], t[1][2 * p], t[1][2 * p + 1]};
          mma_16816<T>(acc[dg][p], af, pb0, pb1);
        }
      }
    } else {
      // Sᵀ = q Kᵀ: q's hi and lo rows as rows (row8 = 2h + part), key row8 as column row8.
      float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int j = 0; j < S::KS; ++j) {
        const int i = j / 2, w = 2 * (j % 2);
        const uint2 qa = qfrag[j][lane];
        const uint32_t af[4] = {qa.x, 0u, qa.y, 0u};
        mma_16816<T>(s, af, word_of(kraw[0][i], w), word_of(kraw[0][i], w + 1));
      }
      if (next < steps) load_k(next, next_sl);

      // Lane (row8, quad) holds row row8's part of keys 2·quad, +1: hi + lo from the lane 4 on.
      // The online softmax of group row row8 / 2 over the step's 8 keys, two a lane.
      const int key0 = k_begin + step * S::KEYS + 2 * quad;
      const float h0 = s[0] + __shfl_xor_sync(kAll, s[0], 4), h1 = s[1] + __shfl_xor_sync(kAll, s[1], 4);
      const float s0 = key0 < k_end ? h0 : -INFINITY, s1 = key0 + 1 < k_end ? h1 : -INFINITY;
      float p0, p1;
      const float f = softmax_step(s0, s1, 1, 2, p0, p1);  // the other keys in the row's lanes
      // O's columns are group row quad's: its factor from a lane that keeps that row (row8 = 2·quad).
      rescale(__shfl_sync(kAll, f, 8 * quad));

      // P's B fragment (k8 x n8): keys 2·quad, +1 of column row8, this lane's own p0, p1.
      const uint32_t pb = col_head < group ? pack_part<T>(p0, p1, col_lo) : 0u;

      // O ᵀ += Vᵀ Pᵀ by m16n8k8, a 32-dim group at a time.
#pragma unroll
      for (int dg = 0; dg < S::DG; ++dg) {
        uint32_t t[4];
#pragma unroll
        for (int w = 0; w < 4; ++w) t[w] = transpose_8x8(word_of(vraw[0][dg], w));
        if (next < steps) load_v(next, next_sl, dg);
#pragma unroll
        for (int p = 0; p < 2; ++p) mma_1688<T>(acc[dg][p], t[2 * p], t[2 * p + 1], pb);
      }
    }
    sl = next_sl;
  }

  // Each lane's O values are whole sums over the warp's keys: hi + lo per dim, then the warps merge.
  if (quad < group) {
#pragma unroll
    for (int dg = 0; dg < S::DG; ++dg) {
#pragma unroll
      for (int p = 0; p < 2; ++p) {
        const int d = 32 * dg + 8 * (row8 >> 1) + 4 * p + (row8 & 1);
        warp_acc[warp][quad][d] = acc[dg][p][0] + acc[dg][p][1];
        warp_acc[warp][quad][d + 2] = acc[dg][p][2] + acc[dg][p][3];
      }
    }
  }
  // Group row quad's softmax state: this lane's (16-key steps) or lane 8·quad's (8-key steps).
  const float m_q = KEYS == 16 ? m : __shfl_sync(kAll, m, 8 * quad);
  const float l_q = KEYS == 16 ? l : __shfl_sync(kAll, l, 8 * quad);
  if (quad < group && row8 == 0) {
    warp_m[warp][quad] = m_q;
    warp_l[warp][quad] = l_q;
  }
  finish_warp_states<T, HD, G, WARPS>(a, r, g, z, token, group, active, warp_acc, warp_m, warp_l);
}

}  // namespace

// As the warp-stepped kernel: 8-key steps (three blocks an SM) where rows are split and chunks
// short, 16-key steps where not.
template <typename T, int HD, int G>
void launch_decode_mma(const DecodeAttentionArgs<T>& args, dim3 grid, cudaStream_t stream) {
  launch_warp_steps<true>(args, [&](auto fused, auto keys) {
    launch_dependent(decode_mma_kernel<T, HD, G, decltype(fused)::value, decltype(keys)::value>, grid,
                     dim3(kDecodeThreads), 0, stream, args);
  });
  SY_CUDA_CHECK_LAUNCH(decode_mma_kernel);
}

// Of the build a launch of split rows or of unsplit rows runs, as launch_decode_mma picks it.
template <typename T, int HD, int G>
int decode_mma_blocks_per_sm(bool split_rows) {
  return with_step_keys<true>(split_rows, [](auto keys) {
    return decode_blocks_per_sm(decode_mma_kernel<T, HD, G, false, decltype(keys)::value>);
  });
}

#define SY_DECODE_MMA(T, HD, G)                                                                    \
  template void launch_decode_mma<T, HD, G>(const DecodeAttentionArgs<T>&, dim3, cudaStream_t); \
  template int decode_mma_blocks_per_sm<T, HD, G>(bool);
#define SY_DECODE_MMA_SHAPES(T) \
  SY_DECODE_MMA(T, 64, 2)       \
  SY_DECODE_MMA(T, 128, 2)      \
  SY_DECODE_MMA(T, 64, 4)       \
  SY_DECODE_MMA(T, 128, 4)
SY_DECODE_MMA_SHAPES(__nv_bfloat16)
SY_DECODE_MMA_SHAPES(__half)
#undef SY_DECODE_MMA_SHAPES
#undef SY_DECODE_MMA

}  // namespace sy::cuda
