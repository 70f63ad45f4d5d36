// Decode attention with warps that walk the context on their own: the decode kernel for every grid
// of the shapes it is built for (decode_attention.cu picks it). The grid, the splits and the merge
// are the block kernel's: one block per (row, kv head, split), whose last active block merges the
// partial states. What differs is inside a block. There, each 64-key tile of the block kernel costs
// five block barriers (the slots, QK, the softmax on one warp per group row, PV, the next slots),
// and at batch 256 a block's time is that serial chain, not its loads (bench/CUDA_NOTES.md, session
// 12). Here each warp takes 16-key steps (8-key ones where rows are split and chunks short) of the
// chunk (warp w: steps w, w + 8, ...) with its own online softmax. A step has no block barrier. The next step's K loads are issued once QK has used
// this step's, its V loads once PV has, and its slots are looked up a step ahead. The warps' states
// merge once, at the end.
#include "kernels/cuda/decode_attention_warps.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/paged_kv.cuh"
#include "kernels/cuda/reduce.cuh"

namespace sy::cuda {
namespace {

template <int HD, int K>
struct WarpStepShape {
  static constexpr int KEYS = K;                 // keys a warp takes a step
  static constexpr int QK_PARTS = 32 / KEYS;     // lanes a key in QK: k, k + KEYS, ...
  static constexpr int QK_DIMS = HD / QK_PARTS;  // a key's dims a lane holds in QK
  static constexpr int QK_LOADS = QK_DIMS / 8;   // 16-byte loads
  static constexpr int TPK = HD / 8;             // lanes a key in PV, 8 dims each
  static constexpr int KPI = 32 / TPK;           // keys one PV load instruction covers
  static constexpr int PV_LOADS = KEYS / KPI;
  // 16-key steps: 128 registers (a step's K and V take 64 at head_dim 128), two blocks an SM.
  // 8-key steps: 80, three blocks an SM, twice the steps of a short chunk for the block's warps.
  static constexpr int MIN_BLOCKS = KEYS == 8 ? 3 : 2;
};

template <typename T, int HD, int G, bool FUSED, int KEYS>
__global__ void __launch_bounds__(kDecodeThreads, (WarpStepShape<HD, KEYS>::MIN_BLOCKS))
    decode_warps_kernel(DecodeAttentionArgs<T> a) {
  allow_dependent_launch();  // dependent_launch.cuh: the next kernel may start launching
  using S = WarpStepShape<HD, KEYS>;
  static_assert(S::QK_LOADS >= 1 && S::PV_LOADS >= 1, "a step's loads must cover whole 16-byte pieces");
  constexpr int WARPS = kDecodeThreads / 32;
  __shared__ __align__(16) float qs[G][HD];
  __shared__ float probs[WARPS][G][S::KEYS];
  __shared__ int64_t step_slots[WARPS][S::KEYS];
  __shared__ __align__(16) float warp_acc[WARPS][G][HD];
  __shared__ float warp_m[WARPS][G], warp_l[WARPS][G];
  __shared__ __align__(16) T new_k[FUSED ? HD : 8], new_v[FUSED ? HD : 8];

  const int r = blockIdx.x, g = blockIdx.y, z = blockIdx.z;
  const PagedKv<T>& kv = a.kv;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
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
  const int qk_key = lane % S::KEYS, qk_off = (lane / S::KEYS) * S::QK_DIMS;
  const int pv_key = lane / S::TPK, pv_d = (lane % S::TPK) * 8;

  // The cache offset of this lane's QK key in a step, or -1 past the chunk.
  const auto slot_at = [&](int step) -> int64_t {
    const int key = k_begin + step * S::KEYS + qk_key;
    return key < k_end ? slot_of(table, key, kv.block_size) * kv_row + g * HD : -1;
  };
  uint4 kraw[S::QK_LOADS], vraw[S::PV_LOADS];
  // A step's loads skip the own key, which the previous kernel or this block writes: load_own_key
  // fetches it after the wait.
  const auto load_k = [&](int step, int64_t slot) {
    if (slot < 0 || k_begin + step * S::KEYS + qk_key == own_key) return;
#pragma unroll
    for (int i = 0; i < S::QK_LOADS; ++i) kraw[i] = *reinterpret_cast<const uint4*>(kv.k + slot + qk_off + 8 * i);
  };
  // The V lanes find their keys' slots in the warp's list.
  const auto publish_slots = [&](int64_t slot) {
    if (lane < S::KEYS) step_slots[warp][lane] = slot;
    __syncwarp();
  };
  const auto load_v = [&](int step) {
#pragma unroll
    for (int p = 0; p < S::PV_LOADS; ++p) {
      const int kk = pv_key + p * S::KPI, key = k_begin + step * S::KEYS + kk;
      if (key < k_end && key != own_key) vraw[p] = *reinterpret_cast<const uint4*>(kv.v + step_slots[warp][kk] + pv_d);
    }
  };
  const auto load_own_key = [&](int step, int64_t slot) {
    const int base = k_begin + step * S::KEYS;
    if (own_key < base || own_key >= min(base + S::KEYS, k_end)) return;
    if (base + qk_key == own_key) {
#pragma unroll
      for (int i = 0; i < S::QK_LOADS; ++i) {
        kraw[i] = *reinterpret_cast<const uint4*>(FUSED ? new_k + qk_off + 8 * i : kv.k + slot + qk_off + 8 * i);
      }
    }
#pragma unroll
    for (int p = 0; p < S::PV_LOADS; ++p) {
      const int kk = pv_key + p * S::KPI;
      if (base + kk == own_key) {
        vraw[p] = *reinterpret_cast<const uint4*>(FUSED ? new_v + pv_d : kv.v + step_slots[warp][kk] + pv_d);
      }
    }
  };

  // The first step's loads read only what earlier steps wrote: issued before the wait, so they
  // overlap the previous kernel's tail.
  int64_t slot = warp < steps ? slot_at(warp) : -1;
  if (warp < steps) {
    publish_slots(slot);
    load_k(warp, slot);
    load_v(warp);
  }
  wait_for_prior_kernels();
  stage_group_q<T, HD, FUSED>(a, token, g, group, own_key, owns_new, scale, qs, new_k, new_v);
  __syncthreads();  // q and the own key's K/V are in shared memory

  float m[G], l[G], acc[G][8];
#pragma unroll
  for (int gg = 0; gg < G; ++gg) {
    m[gg] = -INFINITY;
    l[gg] = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[gg][e] = 0.0f;
  }
  for (int step = warp; step < steps; step += WARPS) {
    const int base = k_begin + step * S::KEYS;
    load_own_key(step, slot);
    const int next = step + WARPS;
    const int64_t next_slot = next < steps ? slot_at(next) : -1;

    // QK: lanes k, k + KEYS, ... each dot their part of key k's dims with every group row.
    float s[G];
#pragma unroll
    for (int gg = 0; gg < G; ++gg) s[gg] = 0.0f;
#pragma unroll
    for (int i = 0; i < S::QK_LOADS; ++i) {
      float kf[8];
      to_f32_vec<T, 8>(&kraw[i], kf);
#pragma unroll
      for (int gg = 0; gg < G; ++gg) {
        if (gg < group) {
          const float4 q0 = *reinterpret_cast<const float4*>(&qs[gg][qk_off + 8 * i]);
          const float4 q1 = *reinterpret_cast<const float4*>(&qs[gg][qk_off + 8 * i + 4]);
          s[gg] += q0.x * kf[0] + q0.y * kf[1] + q0.z * kf[2] + q0.w * kf[3] + q1.x * kf[4] + q1.y * kf[5] +
                   q1.z * kf[6] + q1.w * kf[7];
        }
      }
    }
    if (next < steps) load_k(next, next_slot);
    const bool valid = base + qk_key < k_end;
#pragma unroll
    for (int gg = 0; gg < G; ++gg) {
      if (gg < group) {
        float dot = s[gg];
#pragma unroll
        for (int o = S::KEYS; o < 32; o <<= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        const float score = valid ? dot : -INFINITY;
        float top = score;
#pragma unroll
        for (int o = S::KEYS / 2; o > 0; o >>= 1) top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, o));
        const float m_new = fmaxf(m[gg], top);  // finite: the step's first key is in the chunk
        const float p = __expf(score - m_new);
        float sum = p;
#pragma unroll
        for (int o = S::KEYS / 2; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        const float f = __expf(m[gg] - m_new);
        m[gg] = m_new;
        l[gg] = l[gg] * f + sum;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[gg][e] *= f;
        if (lane < S::KEYS) probs[warp][gg][lane] = p;
      }
    }
    __syncwarp();

    // PV: each lane 8 dims of its keys.
#pragma unroll
    for (int p = 0; p < S::PV_LOADS; ++p) {
      const int kk = pv_key + p * S::KPI;
      if (base + kk < k_end) {
        float vf[8];
        to_f32_vec<T, 8>(&vraw[p], vf);
#pragma unroll
        for (int gg = 0; gg < G; ++gg) {
          if (gg < group) {
            const float pr = probs[warp][gg][kk];
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[gg][e] += pr * vf[e];
          }
        }
      }
    }
    if (next < steps) {
      publish_slots(next_slot);  // after every lane's PV: probs are rewritten only past this barrier
      load_v(next);
    }
    slot = next_slot;
  }

  // The lanes holding the same dims of different keys add up (one softmax frame a warp), then the
  // warps' states merge.
#pragma unroll
  for (int o = S::TPK; o < 32; o <<= 1) {
#pragma unroll
    for (int gg = 0; gg < G; ++gg)
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[gg][e] += __shfl_xor_sync(0xffffffffu, acc[gg][e], o);
  }
  if (lane < S::TPK) {
#pragma unroll
    for (int gg = 0; gg < G; ++gg) {
      if (gg < group) {
        *reinterpret_cast<float4*>(&warp_acc[warp][gg][pv_d]) = make_float4(acc[gg][0], acc[gg][1], acc[gg][2], acc[gg][3]);
        *reinterpret_cast<float4*>(&warp_acc[warp][gg][pv_d + 4]) = make_float4(acc[gg][4], acc[gg][5], acc[gg][6], acc[gg][7]);
      }
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int gg = 0; gg < G; ++gg) {
      warp_m[warp][gg] = m[gg];
      warp_l[warp][gg] = l[gg];
    }
  }
  finish_warp_states<T, HD, G, WARPS>(a, r, g, z, token, group, active, warp_acc, warp_m, warp_l);
}

}  // namespace

// Rows cut into splits have short chunks (at batch 8 and a 512-token context, 128 keys: one
// 16-key step for each warp), where 8-key steps keep every warp busy and three blocks fit an SM:
// batch 8 -7% on the H200. Unsplit rows (batch 64 and 256) keep 16-key steps, which were 4-13%
// faster there (bench/CUDA_NOTES.md, "Session 14"). Head dims below 32 have no 8-key build.
template <typename T, int HD, int G>
void launch_decode_warps(const DecodeAttentionArgs<T>& args, dim3 grid, cudaStream_t stream) {
  launch_warp_steps<(HD >= 32)>(args, [&](auto fused, auto keys) {
    launch_dependent(decode_warps_kernel<T, HD, G, decltype(fused)::value, decltype(keys)::value>, grid,
                     dim3(kDecodeThreads), 0, stream, args);
  });
  SY_CUDA_CHECK_LAUNCH(decode_warps_kernel);
}

// Of the build a launch of split rows or of unsplit rows runs, as launch_decode_warps picks it.
template <typename T, int HD, int G>
int decode_warps_blocks_per_sm(bool split_rows) {
  return with_step_keys<(HD >= 32)>(split_rows, [](auto keys) {
    return decode_blocks_per_sm(decode_warps_kernel<T, HD, G, false, decltype(keys)::value>);
  });
}

#define SY_DECODE_WARPS(T, HD, G)                                                                    \
  template void launch_decode_warps<T, HD, G>(const DecodeAttentionArgs<T>&, dim3, cudaStream_t); \
  template int decode_warps_blocks_per_sm<T, HD, G>(bool);
#define SY_DECODE_WARPS_SHAPES(T) \
  SY_DECODE_WARPS(T, 16, 2)       \
  SY_DECODE_WARPS(T, 32, 2)       \
  SY_DECODE_WARPS(T, 64, 2)       \
  SY_DECODE_WARPS(T, 128, 2)      \
  SY_DECODE_WARPS(T, 16, 4)       \
  SY_DECODE_WARPS(T, 32, 4)       \
  SY_DECODE_WARPS(T, 64, 4)
SY_DECODE_WARPS_SHAPES(__nv_bfloat16)
SY_DECODE_WARPS_SHAPES(__half)
#undef SY_DECODE_WARPS_SHAPES
#undef SY_DECODE_WARPS

}  // namespace sy::cuda
