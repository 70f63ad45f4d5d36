// The decode attention of one (row, kv head, split) block, shared by the decode attention kernel
// (decode_attention.cu) and the persistent decode step (decode_step.cu). See decode_attention.cu
// for the algorithm; what differs between the two callers is what a block waits for before it
// reads q (or the QKV projection): `wait_for_inputs` is the previous kernel there, a grid-wide
// barrier here. Everything issued before it reads only what earlier steps wrote. Blocks of
// kDecodeThreads threads; returns early (without calling wait_for_inputs) when the block's split
// holds no keys.
#pragma once
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "kernels/cuda/head_norm_rope.cuh"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/paged_kv.cuh"
#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda/store_split.cuh"

namespace sy::cuda {

/**
 * What a caller that runs every layer's attention for the same row knows before a layer starts
 * (the persistent decode step): the row, and the block's first tile's slot offsets (slot *
 * kv_heads * head_dim + g * head_dim) in shared memory, so its first K/V loads wait on no other
 * load. Only for the item whose first tile they are.
 */
struct DecodeItemHint {
  int token, seq, ctx;
  const int64_t* first_slots;  // may be null
};

/** What a decode attention block reads and writes (paged_attention_decode's parameters). */
template <typename T>
struct DecodeAttentionArgs {
  const T* q;
  const int32_t* rows;
  PagedKv<T> kv;
  int num_heads;
  int splits;
  float* partials;
  int* counters;
  AttentionOut<T> out;
  DecodeFusion<T> fuse;
};

constexpr int kKeyTile = 64;
// 256 threads: at batch 1 a decode block's time is its warps' serial instruction chains (ncu:
// 1 warp per scheduler, ~11 cycles an instruction), so more warps per tile shorten it.
constexpr int kDecodeThreads = 256;
constexpr int kMaxGroup = 8;

/**
 * The keys a split of a decode row takes: ceil(ctx / splits) rounded up to whole 64-key tiles, so
 * a context of one tile is one block's work whatever `splits` is (short contexts give the same
 * bits at any batch size). ceil(ctx / chunk) splits have keys.
 */
__device__ __forceinline__ int decode_chunk(int ctx, int splits) {
  return ((ctx + splits - 1) / splits + kKeyTile - 1) / kKeyTile * kKeyTile;
}

/**
 * Whether the warp-stepped and tensor-core kernels take 8-key steps where a launch splits rows
 * (their chunks are short there); SWITCHYARD_CUDA_DECODE_STEP_KEYS=16 says no, for measuring.
 */
inline bool short_decode_steps_allowed() {
  static const bool allowed = [] {
    const char* v = std::getenv("SWITCHYARD_CUDA_DECODE_STEP_KEYS");
    return !(v && std::strcmp(v, "16") == 0);
  }();
  return allowed;
}

/**
 * f(keys) for the step size of the warp-stepped or tensor-core build a launch runs, as a
 * std::integral_constant: 8-key steps where its rows are split and chunks short (when the kernel
 * has them, SHORT_STEPS), 16-key steps where not. The launch and the occupancy query
 * (splits_for's slots) both take it from here.
 */
template <bool SHORT_STEPS, typename F>
decltype(auto) with_step_keys(bool split_rows, F&& f) {
  if constexpr (SHORT_STEPS) {
    if (split_rows && short_decode_steps_allowed()) return f(std::integral_constant<int, 8>{});
  }
  return f(std::integral_constant<int, 16>{});
}

/**
 * Launches the build of a warp-stepped or tensor-core decode kernel a launch needs: `launch`
 * receives FUSED (the step makes q itself: args.fuse.qkv) and the step size (with_step_keys) as
 * std::integral_constant values.
 */
template <bool SHORT_STEPS, typename T, typename Launch>
void launch_warp_steps(const DecodeAttentionArgs<T>& args, Launch&& launch) {
  with_step_keys<SHORT_STEPS>(args.splits > 1, [&](auto keys) {
    if (args.fuse.qkv) launch(std::true_type{}, keys);
    else launch(std::false_type{}, keys);
  });
}

/** How many blocks of a decode kernel (kDecodeThreads threads, static shared memory) an SM runs at once. */
template <typename Kernel>
int decode_blocks_per_sm(Kernel kernel) {
  int blocks = 0;
  SY_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kDecodeThreads, 0));
  return blocks;
}

/** The output dims a thread holds at the end of a decode block: tid, tid + kDecodeThreads, ... */
template <int HD>
__host__ __device__ constexpr int decode_dims_per_thread() {
  return (HD + kDecodeThreads - 1) / kDecodeThreads;
}

template <int HD>
struct DecodeShape {
  static constexpr int EPL = HD >= 64 ? 8 : 4;         // elements per lane: one 16- or 8-byte load
  static constexpr int LPK = HD / EPL;                 // lanes per key in QK
  static constexpr int KPP = (kDecodeThreads / 32) * (32 / LPK);  // keys per pass in QK
  static constexpr int QK_PASSES = kKeyTile / KPP;
  static constexpr int TPK = HD / 8;                   // threads per key in PV (8 dims each)
  static constexpr int KG = kDecodeThreads / TPK;      // keys per pass in PV
  static constexpr int PV_PASSES = (kKeyTile + KG - 1) / KG;
};

// The step's q, k and v heads of a kv group, normalized, rotated and stored by the decode kernel
// itself (pure decode steps: `fuse.qkv` not null). Warps take items: the group's q heads into
// `qs`, then, in the block whose chunk ends at the new key, the kv head's k and v into the cache
// and into `new_k`/`new_v`, from where this block's own tile reads them (the cache stores may not
// be visible to its loads yet).
template <typename T, int HD>
__device__ __forceinline__ void fused_qkv_prologue(const DecodeFusion<T>& fuse, int token, int num_heads, int num_kv_heads,
                                                   int g, int group, int pos, bool owns_new, float scale,
                                                   float (*qs)[HD], T* new_k, T* new_v) {
  const int warp = threadIdx.x >> 5;
  const int heads_total = num_heads + 2 * num_kv_heads;
  const float* row = fuse.qkv + static_cast<int64_t>(token) * heads_total * HD;
  const float* row_lo = fuse.qkv_lo ? fuse.qkv_lo + static_cast<int64_t>(token) * heads_total * HD : nullptr;
  const auto lo_at = [row_lo](int64_t i) { return row_lo ? row_lo + i : nullptr; };
  const int64_t slot = fuse.slots[token];
  const int items = group + (owns_new ? 2 : 0);
  for (int item = warp; item < items; item += kDecodeThreads / 32) {
    if (item < group) {
      float* dst = qs[item];
      const int64_t at = (g * group + item) * HD;
      norm_rope_head<T>(row + at, lo_at(at), HD, pos, fuse.rope, fuse.q_norm, fuse.eps,
                        [dst, scale](int i, T a, T b) {
                          dst[i] = to_f32(a) * scale;
                          dst[i + 1] = to_f32(b) * scale;
                        });
    } else if (item == group) {
      T* cache = fuse.k_cache + (slot * num_kv_heads + g) * HD;
      const int64_t at = (num_heads + g) * HD;
      norm_rope_head<T>(row + at, lo_at(at), HD, pos, fuse.rope, fuse.k_norm, fuse.eps,
                        [cache, new_k](int i, T a, T b) {
                          store_pair(cache + i, a, b);
                          store_pair(new_k + i, a, b);
                        });
    } else {
      T* cache = fuse.v_cache + (slot * num_kv_heads + g) * HD;
      const int64_t at = (num_heads + num_kv_heads + g) * HD;
      v_head<T>(row + at, lo_at(at), HD, [cache, new_v](int i, T a, T b) {
        store_pair(cache + i, a, b);
        store_pair(new_v + i, a, b);
      });
    }
  }
}

// The group's q rows in `qs` (fp32, times the softmax scale), for either decode kernel once its
// inputs are ready: made from the QKV projection with the step's own k and v (FUSED:
// fused_qkv_prologue), or read from q.
template <typename T, int HD, bool FUSED>
__device__ __forceinline__ void stage_group_q(const DecodeAttentionArgs<T>& a, int token, int g, int group, int own_key,
                                              bool owns_new, float scale, float (*qs)[HD], T* new_k, T* new_v) {
  if constexpr (FUSED) {
    fused_qkv_prologue<T, HD>(a.fuse, token, a.num_heads, a.kv.num_kv_heads, g, group, own_key, owns_new, scale, qs,
                              new_k, new_v);
  } else {
    for (int i = threadIdx.x; i < group * HD; i += kDecodeThreads) {
      qs[i / HD][i % HD] = to_f32(a.q[(static_cast<int64_t>(token) * a.num_heads + g * group) * HD + i]) * scale;
    }
  }
}

// The end of a decode block, however it went over its chunk. `m_run` and `l_run` (shared memory)
// hold each group row's running max and sum; `mine[gg][j]` is this thread's unnormalised output
// at dim tid + j * kDecodeThreads. A context of one chunk is written by its block directly;
// otherwise each block stores its partial state and the last active block of the (row, kv head)
// to finish (a per-(row, kv head) counter) merges them all, so no second kernel is launched.
template <typename T, int HD, int G>
__device__ __forceinline__ void finish_decode_block(const DecodeAttentionArgs<T>& a, int r, int g, int z, int token,
                                                    int group, int active, const float* m_run, const float* l_run,
                                                    const float (&mine)[G][decode_dims_per_thread<HD>()]) {
  constexpr int DPT = decode_dims_per_thread<HD>();
  const int num_heads = a.num_heads, splits = a.splits;
  float* partials = a.partials;
  const AttentionOut<T>& out = a.out;
  const int tid = threadIdx.x;
  __shared__ bool last_block;
  if (active == 1) {
    for (int gg = 0; gg < group; ++gg)
#pragma unroll
      for (int j = 0; j < DPT; ++j) {
        const int d = tid + j * kDecodeThreads;
        // Same arithmetic as the merge below with one split.
        if (d < HD) {
          store_attention(out, (static_cast<int64_t>(token) * num_heads + g * group + gg) * HD + d,
                          mine[gg][j] / l_run[gg]);
        }
      }
    return;
  }
  for (int gg = 0; gg < group; ++gg) {
    float* part = partials + ((static_cast<int64_t>(r) * num_heads + g * group + gg) * splits + z) * (HD + 2);
    if (tid == 0) {
      part[0] = m_run[gg];
      part[1] = l_run[gg];
    }
#pragma unroll
    for (int j = 0; j < DPT; ++j) {
      const int d = tid + j * kDecodeThreads;
      if (d < HD) part[2 + d] = mine[gg][j];
    }
  }
  // The last active block of this (row, kv head) merges:
  // out = Σ_z acc_z e^(m_z - M) / Σ_z l_z e^(m_z - M).
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    int* counter = a.counters + static_cast<int64_t>(r) * a.kv.num_kv_heads + g;
    last_block = atomicAdd(counter, 1) == active - 1;
    if (last_block) *counter = 0;  // ready for the next launch (kernel boundaries order it)
  }
  __syncthreads();
  if (!last_block) return;
  __threadfence();
  // Each thread merges its dims: the splits' m, l (the same for every thread: broadcast loads) and
  // its acc values, sixteen splits' loads issued together (one round trip up to 16 splits), folded
  // in online.
  for (int gg = 0; gg < group; ++gg) {
    const int h = g * group + gg;
    const float* part = partials + (static_cast<int64_t>(r) * num_heads + h) * splits * (HD + 2);
    for (int d = tid; d < HD; d += kDecodeThreads) {
      float M = -INFINITY, den = 0.0f, num = 0.0f;
      for (int z0 = 0; z0 < active; z0 += 16) {
        float mz[16], lz[16], az[16];
#pragma unroll
        for (int k = 0; k < 16; ++k) {
          if (z0 + k < active) {
            const float* pz = part + (z0 + k) * (HD + 2);
            mz[k] = __ldcg(pz);
            lz[k] = __ldcg(pz + 1);
            az[k] = __ldcg(pz + 2 + d);
          }
        }
#pragma unroll
        for (int k = 0; k < 16; ++k) {
          if (z0 + k < active) {  // every active split has a finite m
            const float m_new = fmaxf(M, mz[k]);
            const float f = __expf(M - m_new), w = __expf(mz[k] - m_new);
            den = den * f + lz[k] * w;
            num = num * f + az[k] * w;
            M = m_new;
          }
        }
      }
      store_attention(out, (static_cast<int64_t>(token) * num_heads + h) * HD + d, num / den);
    }
  }
}

// The end of a decode block whose warps each kept their own softmax state over their own keys
// (the warp-stepped and tensor-core kernels): warp w's state for group row gg is warp_m[w][gg],
// warp_l[w][gg] and its unnormalised output warp_acc[w][gg][·] (shared memory, every warp's
// written, zeros and -inf for a warp without keys). They merge as M = max_w m_w,
// l = Σ_w l_w e^(m_w - M), acc = Σ_w acc_w e^(m_w - M), then end as finish_decode_block.
template <typename T, int HD, int G, int WARPS>
__device__ __forceinline__ void finish_warp_states(const DecodeAttentionArgs<T>& a, int r, int g, int z, int token,
                                                   int group, int active, const float (*warp_acc)[G][HD],
                                                   const float (*warp_m)[G], const float (*warp_l)[G]) {
  constexpr int DPT = decode_dims_per_thread<HD>();
  __shared__ float warp_f[WARPS][G];
  __shared__ float m_run[G], l_run[G];
  const int tid = threadIdx.x;
  __syncthreads();  // every warp's state is in shared memory
  if (tid < group) {
    float top = -INFINITY;
    for (int w = 0; w < WARPS; ++w) top = fmaxf(top, warp_m[w][tid]);  // finite: warp 0 has keys
    float sum = 0.0f;
    for (int w = 0; w < WARPS; ++w) {
      const float f = __expf(warp_m[w][tid] - top);  // 0 for a warp without keys
      warp_f[w][tid] = f;
      sum += warp_l[w][tid] * f;
    }
    m_run[tid] = top;
    l_run[tid] = sum;
  }
  __syncthreads();
  float mine[G][DPT];
#pragma unroll
  for (int gg = 0; gg < G; ++gg) {
#pragma unroll
    for (int j = 0; j < DPT; ++j) {
      const int d = threadIdx.x + j * kDecodeThreads;
      float v = 0.0f;
      if (gg < group && d < HD) {
#pragma unroll
        for (int w = 0; w < WARPS; ++w) v += warp_acc[w][gg][d] * warp_f[w][gg];
      }
      mine[gg][j] = v;
    }
  }
  finish_decode_block<T, HD, G>(a, r, g, z, token, group, active, m_run, l_run, mine);
}

// Decode: block (r, g, z) takes keys [z * chunk, (z + 1) * chunk) of row r's context for the GQA
// group of kv head g, chunk = ceil(ctx / splits), in 64-key tiles. Every load of a tile is
// issued before its arithmetic (16-byte K and V loads together, slots staged in shared memory),
// so a block costs a few memory latencies. The softmax state (m, l, acc) stays in registers
// across tiles. Only the `active` = ceil(ctx / chunk) blocks with keys take part: the others
// leave at once, a context of one chunk is written by its block directly, and otherwise the last
// active block to finish (a per-(row, kv head) counter) merges the partial states, so no second
// kernel is launched. G: the GQA group size rounded up to 2, 4 or 8 (registers and shared
// memory per group row are sized by it).
template <typename T, int HD, int G, bool FUSED, typename WaitForInputs>
__device__ __forceinline__ void decode_attention_block(const DecodeAttentionArgs<T>& a, int r, int g, int z,
                                                       WaitForInputs wait_for_inputs,
                                                       const DecodeItemHint* hint = nullptr) {
  const int32_t* rows = a.rows;
  const PagedKv<T>& kv = a.kv;
  const int num_heads = a.num_heads, splits = a.splits;
  using S = DecodeShape<HD>;
  constexpr int WARPS = kDecodeThreads / 32;
  // K and V of a tile in flight together, where the registers allow (not at head_dim 256).
  constexpr bool kVWithK = S::QK_PASSES + S::PV_PASSES <= 16;
  __shared__ float qs[G][HD];
  __shared__ float sc[G][kKeyTile];
  __shared__ int64_t slot_s[kKeyTile];
  __shared__ float m_run[G], l_run[G], rescale[G];
  __shared__ __align__(16) float red[kDecodeThreads * 8];  // PV partial sums of one group row, [key group][HD]
  __shared__ __align__(16) T new_k[FUSED ? HD : 8], new_v[FUSED ? HD : 8];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int group = num_heads / kv.num_kv_heads;
  // The row's context length comes with it: one round trip before the block table, not two.
  const int token = hint ? hint->token : rows[3 * r], seq = hint ? hint->seq : rows[3 * r + 1],
            ctx = hint ? hint->ctx : rows[3 * r + 2];
  const int chunk = decode_chunk(ctx, splits), active = (ctx + chunk - 1) / chunk;
  if (z >= active) return;  // no keys here; the counter counts active blocks only
  const int k_begin = z * chunk, k_end = min(ctx, k_begin + chunk);
  const bool owns_new = FUSED && k_end == ctx;  // this block makes the step's own key
  const int32_t* table = kv.block_tables + static_cast<int64_t>(seq) * kv.table_stride;
  const int64_t kv_row = static_cast<int64_t>(kv.num_kv_heads) * HD;
  const float scale = rsqrtf(static_cast<float>(HD));

  // One tile's slots, then its K and V loads, all but the step's own key (position ctx - 1): the
  // other keys were written by earlier steps, so the first tile's loads are issued before the
  // wait for the previous kernel (dependent_launch.cuh) and overlap its tail. The own key is
  // filled in after it (`load_own_key`): from this block's shared memory when it made it, else
  // from the cache, where the previous kernel wrote it.
  const int own_key = ctx - 1;
  const int qk_key0 = warp * (32 / S::LPK) + lane / S::LPK, off = (lane % S::LPK) * S::EPL;
  const int pv_key = tid / S::TPK, pv_d = (tid % S::TPK) * 8;
  using Raw = typename std::conditional<S::EPL == 8, uint4, uint2>::type;
  Raw kraw[S::QK_PASSES];
  uint4 vraw[S::PV_PASSES];
  int base = k_begin, tile_keys = min(kKeyTile, k_end - base);
  auto stage_slots = [&]() {
    if (tid < tile_keys) {
      slot_s[tid] = hint && hint->first_slots && base == k_begin ? hint->first_slots[tid]
                                                                  : slot_of(table, base + tid, kv.block_size) * kv_row + g * HD;
    }
  };
  auto load_k = [&]() {
#pragma unroll
    for (int p = 0; p < S::QK_PASSES; ++p) {
      const int kk = qk_key0 + p * S::KPP;
      if (kk < tile_keys && base + kk != own_key) kraw[p] = *reinterpret_cast<const Raw*>(kv.k + slot_s[kk] + off);
    }
  };
  auto load_v = [&]() {
#pragma unroll
    for (int p = 0; p < S::PV_PASSES; ++p) {
      const int kk = pv_key + p * S::KG;
      if (kk < tile_keys && base + kk != own_key) vraw[p] = *reinterpret_cast<const uint4*>(kv.v + slot_s[kk] + pv_d);
    }
  };
  // The own key's K and/or V, if it is in this tile.
  auto load_own_key = [&](bool k_too, bool v_too) {
    if (own_key < base || own_key - base >= tile_keys) return;
    if (k_too) {
#pragma unroll
      for (int p = 0; p < S::QK_PASSES; ++p) {
        const int kk = qk_key0 + p * S::KPP;
        if (base + kk == own_key) kraw[p] = *reinterpret_cast<const Raw*>(FUSED ? new_k + off : kv.k + slot_s[kk] + off);
      }
    }
    if (!v_too) return;
#pragma unroll
    for (int p = 0; p < S::PV_PASSES; ++p) {
      const int kk = pv_key + p * S::KG;
      if (base + kk == own_key) vraw[p] = *reinterpret_cast<const uint4*>(FUSED ? new_v + pv_d : kv.v + slot_s[kk] + pv_d);
    }
  };
  stage_slots();
  __syncthreads();
  load_k();
  if constexpr (kVWithK) load_v();

  // q (or qkv) comes from the previous kernel (or phase).
  wait_for_inputs();
  stage_group_q<T, HD, FUSED>(a, token, g, group, own_key, owns_new, scale, qs, new_k, new_v);
  if (tid < G) {
    m_run[tid] = -INFINITY;
    l_run[tid] = 0.0f;
  }
  float acc[G][8];
#pragma unroll
  for (int gg = 0; gg < G; ++gg)
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[gg][e] = 0.0f;

  while (true) {
    __syncthreads();  // q, the own key and the running state (first tile), the slots (later ones) are in place
    load_own_key(true, kVWithK);
    // QK: the loads were issued before, the dots here.
#pragma unroll
    for (int p = 0; p < S::QK_PASSES; ++p) {
      const int kk = qk_key0 + p * S::KPP;
      float kf[S::EPL];
      to_f32_vec<T, S::EPL>(&kraw[p], kf);
#pragma unroll
      for (int gg = 0; gg < G; ++gg) {
        if (gg < group) {
          float dot = 0.0f;
#pragma unroll
          for (int e = 0; e < S::EPL; ++e) dot += qs[gg][off + e] * kf[e];
#pragma unroll
          for (int o = S::LPK / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
          if (lane % S::LPK == 0) sc[gg][kk] = kk < tile_keys ? dot : -INFINITY;
        }
      }
    }
    __syncthreads();
    for (int gg = warp; gg < group; gg += WARPS) {
      const float s0 = sc[gg][lane], s1 = sc[gg][lane + 32];
      const float m_old = m_run[gg];
      const float m_new = fmaxf(m_old, warp_max(fmaxf(s0, s1)));  // finite: key `base` < ctx
      const float p0 = __expf(s0 - m_new), p1 = __expf(s1 - m_new);
      sc[gg][lane] = p0;
      sc[gg][lane + 32] = p1;
      const float sum = warp_sum(p0 + p1);
      if (lane == 0) {
        const float f = __expf(m_old - m_new);
        m_run[gg] = m_new;
        l_run[gg] = l_run[gg] * f + sum;
        rescale[gg] = f;
      }
    }
    __syncthreads();
    // PV: each thread 8 dims of its keys.
    if constexpr (!kVWithK) {
      load_v();
      load_own_key(false, true);
    }
#pragma unroll
    for (int gg = 0; gg < G; ++gg) {
      if (gg < group) {
        const float f = rescale[gg];
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[gg][e] *= f;
      }
    }
#pragma unroll
    for (int p = 0; p < S::PV_PASSES; ++p) {
      const int kk = pv_key + p * S::KG;
      if (kk < tile_keys) {
        float vf[8];
        to_f32_vec<T, 8>(&vraw[p], vf);
#pragma unroll
        for (int gg = 0; gg < G; ++gg) {
          if (gg < group) {
            const float pr = sc[gg][kk];
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[gg][e] += pr * vf[e];
          }
        }
      }
    }
    base += kKeyTile;
    if (base >= k_end) break;
    __syncthreads();  // sc and slot_s are rewritten for the next tile
    tile_keys = min(kKeyTile, k_end - base);
    stage_slots();
    __syncthreads();
    load_k();
    if constexpr (kVWithK) load_v();
  }

  // Sum the key groups' accumulators, one group row at a time; thread t holds dims t, t + 256, ...
  constexpr int DPT = decode_dims_per_thread<HD>();
  float mine[G][DPT];
#pragma unroll
  for (int gg = 0; gg < G; ++gg) {
    if (gg < group) {
#pragma unroll
      for (int e = 0; e < 8; ++e) red[pv_key * HD + pv_d + e] = acc[gg][e];
      __syncthreads();
#pragma unroll
      for (int j = 0; j < DPT; ++j) {
        const int d = tid + j * kDecodeThreads;
        float s = 0.0f;
        if (d < HD)
          for (int k = 0; k < S::KG; ++k) s += red[k * HD + d];
        mine[gg][j] = s;
      }
      __syncthreads();
    }
  }
  finish_decode_block<T, HD, G>(a, r, g, z, token, group, active, m_run, l_run, mine);
}

}  // namespace sy::cuda
