// The attention half of a batch-1 decode layer as one kernel: RMSNorm -> qkv -> q/k norm, RoPE
// and the KV store -> attention -> o. Kernel per op, that is three kernels (qkv gemv, decode
// attention, o gemv), and each one's start waits for the whole grid before it: ~19 of a layer's
// ~31 µs on the H200 at batch 1, against ~3 µs of bytes (bench/CUDA_NOTES.md, "Session 13").
//
// What makes one kernel possible is that a KV head's GQA group needs only its own rows of the
// qkv projection: the group's q heads, its k head and its v head. So each KV head gets one
// thread-block cluster (up to 16 blocks, one per SM), and every dependency inside the sublayer
// but the last stays inside a cluster, where a barrier is a hardware cluster barrier and the
// data moves through distributed shared memory:
//   1. every block stages the normed input row (the gemv prologue, gemv_prologue.cuh) and makes
//      its share of the group's qkv rows from weights the copy engine brought into its shared
//      memory before the kernel waited for the one before it (then, in the same memory, its
//      share of the o weights, which land while the attention runs);
//   2. cluster barrier; each block gathers the group's rows from the others, normalizes and
//      rotates q and k (head_norm_rope.cuh, the same functions as the other decode paths), and
//      the block that holds the newest key writes k and v to the cache;
//   3. each block takes one slice of the context (64-key tiles, the first loaded before the
//      wait, the next while the current one is computed) and keeps an online softmax;
//   4. cluster barrier; every block merges the slices' states for the whole group and makes its
//      share of the o projection's rows over the group's columns;
//   5. the groups' parts of a row are added by the last cluster to finish that share (a ticket
//      per share), in group order: no float atomics, so a step's bits do not depend on timing.
// The input rows are rounded as gemv rounds them (round16), so a token's values differ from the
// kernel-per-op path's only by summation order, as they already do between gemv and cuBLAS.
//
// Measured, it is slower than the three kernels it replaces, so it is off by default
// (SWITCHYARD_CUDA_ATTENTION_SUBLAYER=on runs it): on the H200 only 8 clusters of at most 9
// blocks are resident at once, so the qkv weights stream through 72 SMs rather than 132, and each
// block's chain of phases on 8 warps is latency-bound: 23.8 µs a layer, a batch-1 step 1.04 ms
// against 0.92 (bench/CUDA_NOTES.md, "Session 13", with what to try next).
#include <cooperative_groups.h>

#include <algorithm>
#include <string>

#include "kernels/cuda/attention_tile.cuh"
#include "kernels/cuda/bulk_copy.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/fused_shapes.cuh"
#include "kernels/cuda/gemv_prologue.cuh"
#include "kernels/cuda/head_norm_rope.cuh"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/paged_kv.cuh"
#include "kernels/cuda/smem_dot.cuh"

namespace sy::cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = kGemvThreads;
constexpr int kWarps = kThreads / 32;
constexpr int kTileKeys = 64;

/** A block's shares and the carve-up of its dynamic shared memory (bytes), worked out on the host. */
struct Plan {
  int qkv_rows;  // rows of its group's q, k, v list a block makes (the last blocks may make fewer)
  int o_rows;    // rows of the o projection a block makes
  int xs_at, part_at, kv_at, smem;  // the weights at 0: the qkv rows, then the o rows in their place
};

template <typename T>
Plan plan_for(const AttentionSublayer<T>& s, int cluster) {
  const int group = s.num_heads / s.num_kv_heads;
  const int list = (group + 2) * s.head_dim;
  const auto up = [](size_t v) { return static_cast<int>((v + 127) / 128 * 128); };
  Plan p{};
  p.qkv_rows = (list + cluster - 1) / cluster;
  p.o_rows = (s.hidden + cluster - 1) / cluster;
  p.xs_at = std::max(up(static_cast<size_t>(p.qkv_rows) * s.hidden * sizeof(T)),
                     up(static_cast<size_t>(p.o_rows) * group * s.head_dim * sizeof(T)));
  p.part_at = p.xs_at + up(static_cast<size_t>(s.hidden) * sizeof(float));
  p.kv_at = p.part_at + up(static_cast<size_t>(p.qkv_rows) * sizeof(float));
  p.smem = p.kv_at + static_cast<int>(2 * 2 * kTileKeys * s.head_dim * sizeof(T));  // two stages of K and V tiles
  return p;
}

template <typename T>
__device__ __forceinline__ void load8(const T* p, float (&out)[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);  // one 16-byte load
  to_f32_vec<T, 8>(&raw, out);
}

// G: the GQA group size rounded up to 2, 4 or 8 (the register and shared-memory shapes); the
// rows past the real group take no part.
template <typename T, int HD, int G>
__global__ void __launch_bounds__(kThreads, 1) attention_sublayer_kernel(const AttentionSublayer<T> s, const Plan plan) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ __align__(16) float qs[G][HD];      // the group's q heads, normed, rotated, scaled
  __shared__ float sc[G][kTileKeys];             // a tile's scores, then its probabilities
  __shared__ float m_run[G], l_run[G], rescale[G];  // the slice's softmax state (read by the cluster)
  __shared__ __align__(16) float acc_out[G * HD];   // the slice's unnormalized output (read by the cluster)
  __shared__ __align__(16) float attn[G * HD];      // the merged output, the o projection's input
  __shared__ __align__(16) float grp[(G + 2) * HD];  // the group's qkv rows
  __shared__ __align__(16) T new_k[HD], new_v[HD];
  __shared__ float scratch[32];
  __shared__ __align__(8) uint64_t qkv_in, o_in;  // the weight copies' barriers
  __shared__ bool last_part;

  allow_dependent_launch();
  cg::cluster_group cluster = cg::this_cluster();
  const int C = static_cast<int>(cluster.num_blocks()), rank = static_cast<int>(cluster.block_rank());
  const int g = static_cast<int>(blockIdx.x) / C;  // the KV head
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int kvh = s.num_kv_heads, group = s.num_heads / kvh, hidden = s.hidden;
  const int qdim = s.num_heads * HD, list = (group + 2) * HD, ocols = group * HD;
  const int rb = min(list, rank * plan.qkv_rows), re = min(list, rb + plan.qkv_rows);
  const int ob = min(hidden, rank * plan.o_rows), oe = min(hidden, ob + plan.o_rows);
  T* const wqkv = reinterpret_cast<T*>(smem);
  T* const wo = wqkv;  // copied in once the qkv rows are used
  float* const xs = reinterpret_cast<float*>(smem + plan.xs_at);
  float* const part = reinterpret_cast<float*>(smem + plan.part_at);
  T* const kv_tiles = reinterpret_cast<T*>(smem + plan.kv_at);  // [stage][K, V][kTileKeys][HD]

  // The block's qkv weights, which no kernel writes: copied in before the wait. Its rows are
  // the group's list [rb, re) (q heads, then the k head, then the v head): at most three runs of
  // consecutive rows of the projection.
  if (tid == 0) {
    mbarrier_init(&qkv_in);
    mbarrier_init(&o_in, kThreads);  // every thread's cp.async arrival
  }
  if (tid < G) {
    m_run[tid] = -INFINITY;
    l_run[tid] = 0.0f;
    rescale[tid] = 0.0f;
  }
  __syncthreads();
  if (tid == 0) {
    mbarrier_expect_bytes(&qkv_in, static_cast<uint32_t>(re - rb) * hidden * sizeof(T));
    const int bounds[4] = {0, group * HD, (group + 1) * HD, list};
    const int64_t first_row[3] = {static_cast<int64_t>(g) * group * HD, qdim + static_cast<int64_t>(g) * HD,
                                  qdim + static_cast<int64_t>(kvh + g) * HD};
    for (int k = 0; k < 3; ++k) {
      const int b = max(rb, bounds[k]), e = min(re, bounds[k + 1]);
      if (b < e) {
        bulk_copy_to_shared(wqkv + static_cast<int64_t>(b - rb) * hidden, s.qkv + (first_row[k] + b - bounds[k]) * hidden,
                            static_cast<uint32_t>(e - b) * hidden * sizeof(T), &qkv_in, /*read_once=*/true);
      }
    }
  }

  // The block's slice of the context and its first tile of keys and values, all but the step's
  // own key (earlier steps wrote them; the own key is made below and filled in from here).
  const int token = s.rows[0], seq = s.rows[1], ctx = s.rows[2];
  const int chunk = (ctx + C - 1) / C;
  const int k_begin = min(ctx, rank * chunk), k_end = min(ctx, k_begin + chunk);
  const int own_key = ctx - 1;
  const bool owns_new = k_begin <= own_key && own_key < k_end;
  const int tiles = (k_end - k_begin + kTileKeys - 1) / kTileKeys;
  const int32_t* table = s.block_tables + static_cast<int64_t>(seq) * s.table_stride;
  const int64_t kv_row = static_cast<int64_t>(kvh) * HD;
  constexpr int kPieces = HD / 8;  // 16-byte pieces of a key's row
  constexpr int kStage = 2 * kTileKeys * HD;
  // A tile's copies: a thread takes pieces of a few keys, the K and the V piece of each, so each
  // key's block-table lookup is made once per thread (all of them before any copy is issued).
  constexpr int kKeysPerRound = kThreads / kPieces;
  constexpr int kRounds = (kTileKeys + kKeysPerRound - 1) / kKeysPerRound;
  const auto issue_tile = [&](int t) {
    const int base = k_begin + t * kTileKeys, keys = min(kTileKeys, k_end - base);
    T* stage = kv_tiles + (t & 1) * kStage;
    const int piece = tid % kPieces;
    int64_t at[kRounds];
#pragma unroll
    for (int u = 0; u < kRounds; ++u) {
      const int kk = tid / kPieces + u * kKeysPerRound;
      at[u] = kk < keys ? slot_of(table, base + kk, s.block_size) * kv_row + g * HD + piece * 8 : 0;
    }
#pragma unroll
    for (int u = 0; u < kRounds; ++u) {
      const int kk = tid / kPieces + u * kKeysPerRound;
      if (kk < keys && base + kk != own_key) {
        cp_async_16(smem_address(stage + kk * HD + piece * 8), s.k_cache + at[u], true);
        cp_async_16(smem_address(stage + (kTileKeys + kk) * HD + piece * 8), s.v_cache + at[u], true);
      }
    }
    cp_async_commit();
  };
  if (tiles > 0) issue_tile(0);
  const int64_t slot = s.slots[token];

  // 1. The normed input row and the block's qkv rows.
  wait_for_prior_kernels();
  stage_gemv_input<T, 1>(GemvInput{GemvInput::kNorm, s.x, s.delta, nullptr, s.input_norm, s.eps, s.x_out, s.split_qkv},
                         hidden, xs, scratch);
  mbarrier_wait(&qkv_in, 0);
  dot_slice<T, 1>(rows_per_warp(re - rb), wqkv, xs, hidden, 0, re - rb, part);
  cluster.sync();
  // The o rows (the group's columns only) into the same memory, landing while the attention
  // runs: the two shares at once would not fit in shared memory at 9 blocks a cluster (the
  // largest on the H200 that has every cluster resident). 16-byte cp.async from every thread:
  // one bulk copy a 512-byte row, all from one warp, took ~10% of the kernel to issue (ncu).
  {
    const int pieces = ocols / 8;  // 16-byte pieces of a row
    for (int i = tid; i < (oe - ob) * pieces; i += kThreads) {
      const int row = i / pieces, piece = i % pieces;
      cp_async_16(smem_address(wo + static_cast<int64_t>(row) * ocols + piece * 8),
                  s.o + static_cast<int64_t>(ob + row) * qdim + g * ocols + piece * 8, true);
    }
    mbarrier_arrive_after_cp_async(&o_in);  // not a commit group: the tiles' waits do not wait for these
  }

  // 2. The group's rows from every block; q heads into qs, the new k and v where this block holds
  // their key (and into the cache).
  for (int i = tid; i < list; i += kThreads) {
    const int r = i / plan.qkv_rows;
    grp[i] = cluster.map_shared_rank(part, r)[i - r * plan.qkv_rows];
  }
  for (int i = tid; i < (G - group) * HD; i += kThreads) qs[group + i / HD][i % HD] = 0.0f;
  __syncthreads();
  const int pos = ctx - 1;
  const float scale = rsqrtf(static_cast<float>(HD));
  const float* const no_lo = nullptr;
  T* const nk = new_k;
  T* const nv = new_v;
  for (int item = warp; item < group + (owns_new ? 2 : 0); item += kWarps) {
    if (item < group) {
      float* dst = qs[item];
      norm_rope_head<T>(grp + item * HD, no_lo, HD, pos, s.rope, s.q_norm, s.eps, [dst, scale](int i, T a, T b) {
        dst[i] = to_f32(a) * scale;
        dst[i + 1] = to_f32(b) * scale;
      });
    } else if (item == group) {
      T* cache = s.k_cache + (slot * kvh + g) * HD;
      norm_rope_head<T>(grp + group * HD, no_lo, HD, pos, s.rope, s.k_norm, s.eps, [cache, nk](int i, T a, T b) {
        store_pair(cache + i, a, b);
        store_pair(nk + i, a, b);
      });
    } else {
      T* cache = s.v_cache + (slot * kvh + g) * HD;
      v_head<T>(grp + (group + 1) * HD, no_lo, HD, [cache, nv](int i, T a, T b) {
        store_pair(cache + i, a, b);
        store_pair(nv + i, a, b);
      });
    }
  }
  __syncthreads();

  // 3. The slice's attention, tile by tile: scores (HD / 8 lanes a key), the online softmax (a
  // warp a q head), P V (HD / 8 threads a key, 8 dims each, keys spread over the rest).
  constexpr int kLanesPerKey = HD / 8, kKeysPerPass = kThreads / kLanesPerKey;
  const int pv_group = tid / kLanesPerKey, pv_d = (tid % kLanesPerKey) * 8;
  float acc[G][8];
#pragma unroll
  for (int j = 0; j < G; ++j)
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[j][e] = 0.0f;
  for (int t = 0; t < tiles; ++t) {
    const int base = k_begin + t * kTileKeys, keys = min(kTileKeys, k_end - base);
    T* const kt = kv_tiles + (t & 1) * kStage;
    T* const vt = kt + kTileKeys * HD;
    if (t + 1 < tiles) {
      issue_tile(t + 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    if (owns_new && own_key >= base && own_key < base + keys) {
      for (int i = tid; i < HD; i += kThreads) {
        kt[(own_key - base) * HD + i] = new_k[i];
        vt[(own_key - base) * HD + i] = new_v[i];
      }
    }
    __syncthreads();
    for (int k0 = 0; k0 < keys; k0 += kKeysPerPass) {
      const int kk = k0 + tid / kLanesPerKey, off = (tid % kLanesPerKey) * 8;
      float k8[8];
      if (kk < keys) {
        load8(kt + kk * HD + off, k8);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) k8[e] = 0.0f;
      }
      float d[G];
#pragma unroll
      for (int j = 0; j < G; ++j) {
        const float4 a = *reinterpret_cast<const float4*>(&qs[j][off]);
        const float4 b = *reinterpret_cast<const float4*>(&qs[j][off + 4]);
        d[j] = k8[0] * a.x + k8[1] * a.y + k8[2] * a.z + k8[3] * a.w + k8[4] * b.x + k8[5] * b.y + k8[6] * b.z + k8[7] * b.w;
      }
#pragma unroll
      for (int o = kLanesPerKey / 2; o > 0; o >>= 1)
#pragma unroll
        for (int j = 0; j < G; ++j) d[j] += __shfl_xor_sync(0xffffffffu, d[j], o);
      if (tid % kLanesPerKey == 0 && kk < keys) {
#pragma unroll
        for (int j = 0; j < G; ++j)
          if (j < group) sc[j][kk] = d[j];
      }
    }
    __syncthreads();
    for (int j = warp; j < group; j += kWarps) {
      const float v0 = lane < keys ? sc[j][lane] : -INFINITY;
      const float v1 = lane + 32 < keys ? sc[j][lane + 32] : -INFINITY;
      const float m_old = m_run[j], m_new = fmaxf(m_old, warp_max(fmaxf(v0, v1)));
      const float p0 = lane < keys ? __expf(v0 - m_new) : 0.0f;
      const float p1 = lane + 32 < keys ? __expf(v1 - m_new) : 0.0f;
      const float sum = warp_sum(p0 + p1);
      sc[j][lane] = p0;
      sc[j][lane + 32] = p1;
      if (lane == 0) {
        const float r = __expf(m_old - m_new);  // 0 on the first tile
        rescale[j] = r;
        l_run[j] = l_run[j] * r + sum;
        m_run[j] = m_new;
      }
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < G; ++j)
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[j][e] *= rescale[j];
    for (int kk = pv_group; kk < keys; kk += kKeysPerPass) {
      float v8[8];
      load8(vt + kk * HD + pv_d, v8);
#pragma unroll
      for (int j = 0; j < G; ++j) {
        const float p = j < group ? sc[j][kk] : 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[j][e] = fmaf(p, v8[e], acc[j][e]);
      }
    }
    __syncthreads();  // the stage is refilled two tiles on
  }
  // The slice's output: the key groups of a warp by shuffles, then the warps through the tiles'
  // memory (free now).
#pragma unroll
  for (int o = kLanesPerKey; o < 32; o <<= 1)
#pragma unroll
    for (int j = 0; j < G; ++j)
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[j][e] += __shfl_xor_sync(0xffffffffu, acc[j][e], o);
  float* const red = reinterpret_cast<float*>(kv_tiles);  // [kWarps][G * HD]
  static_assert(kWarps * G * HD * sizeof(float) <= 2 * kStage * sizeof(T), "the reduction fits in the tiles");
  if (lane < kLanesPerKey) {
#pragma unroll
    for (int j = 0; j < G; ++j)
#pragma unroll
      for (int e = 0; e < 8; ++e) red[(warp * G + j) * HD + pv_d + e] = acc[j][e];
  }
  __syncthreads();
  for (int i = tid; i < ocols; i += kThreads) {
    float v = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) v += red[w * G * HD + i];
    acc_out[i] = v;
  }
  cluster.sync();

  // 4. The group's merged output (every block the whole of it), rounded as gemv rounds its input,
  // then the block's rows of the o projection over the group's columns.
  for (int i = tid; i < ocols; i += kThreads) {
    const int j = i / HD;
    // Every block's state loaded at once (one round trip to the other SMs, not one per block).
    float mr[kAttentionSublayerMaxCluster], lr[kAttentionSublayerMaxCluster], ar[kAttentionSublayerMaxCluster];
#pragma unroll
    for (int r = 0; r < kAttentionSublayerMaxCluster; ++r) {
      if (r < C) {
        mr[r] = *cluster.map_shared_rank(&m_run[j], r);
        lr[r] = *cluster.map_shared_rank(&l_run[j], r);
        ar[r] = cluster.map_shared_rank(acc_out, r)[i];
      }
    }
    float m_max = -INFINITY;
#pragma unroll
    for (int r = 0; r < kAttentionSublayerMaxCluster; ++r)
      if (r < C) m_max = fmaxf(m_max, mr[r]);
    float l = 0.0f, a = 0.0f;
#pragma unroll
    for (int r = 0; r < kAttentionSublayerMaxCluster; ++r) {
      if (r < C) {
        const float w = __expf(mr[r] - m_max);  // 0 for a slice without keys
        l += w * lr[r];
        a += w * ar[r];
      }
    }
    attn[i] = round16<T>(a / l, s.split_o);
  }
  cluster.sync();  // no block reads another's shared memory after this
  mbarrier_wait(&o_in, 0);
  dot_slice<T, 1>(rows_per_warp(oe - ob), wo, attn, ocols, 0, oe - ob, s.o_parts + static_cast<int64_t>(g) * hidden + ob);

  // 5. The last group to finish rows [ob, oe) adds the groups' parts, in group order.
  __threadfence();
  __syncthreads();
  if (tid == 0) last_part = atomicAdd(&s.tickets[rank], 1) == kvh - 1;
  __syncthreads();
  if (last_part) {
    __threadfence();
    for (int row = ob + tid; row < oe; row += kThreads) {
      float v = 0.0f;
#pragma unroll 8
      for (int h = 0; h < kvh; ++h) v += __ldcg(s.o_parts + static_cast<int64_t>(h) * hidden + row);
      s.out[row] = v;
    }
    if (tid == 0) s.tickets[rank] = 0;
  }
#endif
}

template <typename T>
using SublayerKernel = void (*)(AttentionSublayer<T>, Plan);

template <typename T>
SublayerKernel<T> kernel_for(int head_dim, int group) {
  return fused_kernel_for(head_dim, group, [](auto hd, auto g) -> SublayerKernel<T> {
    return attention_sublayer_kernel<T, decltype(hd)::value, decltype(g)::value>;
  });
}

template <typename T>
cudaLaunchConfig_t launch_config(const AttentionSublayer<T>& s, int cluster, const Plan& plan, cudaStream_t stream,
                                 cudaLaunchAttribute (&attributes)[2]) {
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(s.num_kv_heads * cluster);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = plan.smem;
  config.stream = stream;
  attributes[0].id = cudaLaunchAttributeClusterDimension;
  attributes[0].val.clusterDim.x = cluster;
  attributes[0].val.clusterDim.y = 1;
  attributes[0].val.clusterDim.z = 1;
  attributes[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attributes[1].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attributes;
  config.numAttrs = dependent_launch_enabled() ? 2 : 1;
  return config;
}

}  // namespace

template <typename T>
bool attention_sublayer_prepare(AttentionSublayer<T>* s, int cluster, std::string* why_not) {
  auto no = [why_not](const std::string& why) {
    if (why_not) *why_not = why;
    return false;
  };
  s->cluster = 0;
  if (current_device_attribute(cudaDevAttrComputeCapabilityMajor) < 9) return no("needs Hopper (sm_90) or newer");
  if (s->num_kv_heads <= 0 || s->num_heads % s->num_kv_heads != 0) return no("heads are not a multiple of the kv heads");
  const SublayerKernel<T> kernel = kernel_for<T>(s->head_dim, s->num_heads / s->num_kv_heads);
  if (!kernel) {
    return no("no kernel for head_dim " + std::to_string(s->head_dim) + " with " + std::to_string(s->num_heads) +
              " heads on " + std::to_string(s->num_kv_heads) + " kv heads");
  }
  if (s->hidden % 8 != 0) return no("the hidden size must be a multiple of 8");
  if (cluster != 0 && (cluster < 2 || cluster > kAttentionSublayerMaxCluster)) {
    return no("a cluster of " + std::to_string(cluster) + " blocks: 2 to " + std::to_string(kAttentionSublayerMaxCluster));
  }
  SY_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  cudaFuncAttributes attributes{};
  SY_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  const int limit = current_device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin) - static_cast<int>(attributes.sharedSizeBytes);
  const int sms = current_device_attribute(cudaDevAttrMultiProcessorCount);
  std::string why;  // each size tried, and why it does not do
  const auto add_why = [&why](int c, const std::string& reason) {
    why += (why.empty() ? "" : "; ") + std::to_string(c) + " blocks a cluster: " + reason;
  };
  // The largest cluster first: more blocks stream the weights, and each has less to hold. Any
  // size will do (the shares are rounded up); on the H200 not every GPC has 16 free SMs.
  for (int c = cluster ? cluster : kAttentionSublayerMaxCluster; c >= (cluster ? cluster : 2); --c) {
    if (c * s->num_kv_heads > sms) {
      add_why(c, std::to_string(c * s->num_kv_heads) + " blocks for " + std::to_string(sms) + " SMs");
      continue;
    }
    const Plan plan = plan_for(*s, c);
    if (plan.smem > limit) {
      // Smaller clusters give each block more rows: none fits.
      add_why(c, std::to_string(plan.smem) + " bytes of shared memory a block, " + std::to_string(limit) + " available");
      break;
    }
    SY_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, plan.smem));
    cudaLaunchAttribute launch_attributes[2];
    const cudaLaunchConfig_t config = launch_config(*s, c, plan, nullptr, launch_attributes);
    int resident = 0;
    const cudaError_t asked = cudaOccupancyMaxActiveClusters(&resident, kernel, &config);
    if (asked != cudaSuccess) {
      cudaGetLastError();
      add_why(c, std::string("cannot be launched (") + cudaGetErrorString(asked) + ")");
      continue;
    }
    if (resident < s->num_kv_heads) {
      // Clusters that do not all fit at once would run in two waves.
      add_why(c, std::to_string(resident) + " resident at once, " + std::to_string(s->num_kv_heads) + " needed");
      continue;
    }
    s->cluster = c;
    return true;
  }
  return no(why);
}

template <typename T>
void attention_sublayer(const AttentionSublayer<T>& s, cudaStream_t stream) {
  const SublayerKernel<T> kernel = kernel_for<T>(s.head_dim, s.num_heads / s.num_kv_heads);
  if (!kernel || s.cluster == 0) throw CudaError("attention_sublayer: not prepared for this shape");
  const Plan plan = plan_for(s, s.cluster);
  cudaLaunchAttribute attributes[2];
  const cudaLaunchConfig_t config = launch_config(s, s.cluster, plan, stream, attributes);
  SY_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, s, plan));
  SY_CUDA_CHECK_LAUNCH(attention_sublayer_kernel);
}

template bool attention_sublayer_prepare<__nv_bfloat16>(AttentionSublayer<__nv_bfloat16>*, int, std::string*);
template bool attention_sublayer_prepare<__half>(AttentionSublayer<__half>*, int, std::string*);
template void attention_sublayer<__nv_bfloat16>(const AttentionSublayer<__nv_bfloat16>&, cudaStream_t);
template void attention_sublayer<__half>(const AttentionSublayer<__half>&, cudaStream_t);

}  // namespace sy::cuda
