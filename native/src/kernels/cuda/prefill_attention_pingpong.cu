// Prefill attention v7 (sm_90a, head_dim 128): v6's work and arithmetic with the block split by
// role, after FlashAttention-3's structure (bench/CUDA_NOTES.md, "Session 11").
//
// One block an SM, each walking a list of work items (a prefill tile of 128 (token, head) rows, as
// v6's blocks, against one KV head). A block is three warpgroups:
//  - a producer, which copies each item's Q, then its K/V tiles of KN keys, into shared memory
//    with cp.async (K/V into a ring of stages). Completions reach the consumers through "full"
//    mbarriers (each producer thread's arrival fires once its own copies land); a stage or the Q
//    buffer is refilled once the consumers' arrivals on its "empty" mbarrier say they are done
//    with it. So the next item's Q and first tiles load while the consumers finish this one. It
//    runs on 40 registers;
//  - two consumers of 64 rows each (232 registers), which take turns issuing their MMAs: consumer
//    c issues Q Kᵀ of tile kt and P V of tile kt - 1, passes the turn (a named barrier the other
//    waits on), waits for its products, and runs the softmax of tile kt while the other's MMAs
//    keep the tensor cores busy.
// v6 had every warp copy and both warpgroups meet at a block-wide barrier each 64-key step, so
// their softmaxes ran side by side while the tensor cores waited; and each block started cold.
//
// The arithmetic is v6's, row by row and in the same order: with KN = 64 the output has v6's bits
// (test/native/cuda_prefill_check.cu compares them). KN = 128 halves the per-tile costs (waits,
// turns, issue) per key; its online softmax takes 128 keys a step, so its bits differ from v6's by
// rounding. A row's result still depends only on its own position and the keys (tiles start at
// multiples of KN from key 0 whatever the launch), so batch invariance holds for either.
#include "kernels/cuda/prefill_attention_pingpong.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/attention_tile.cuh"
#include "kernels/cuda/bulk_copy.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/paged_kv.cuh"
#include "kernels/cuda/store_split.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace sy::cuda {
namespace {

constexpr int kHeadDim = 128;
constexpr int kThreads = 384;
constexpr int kProducerRegisters = 40;
constexpr int kConsumerRegisters = 232;  // 128 x 40 + 256 x 232 <= 64K registers

template <int KN>
struct PingpongShape {
  static_assert(KN == 64 || KN == 128, "key tiles of 64 or 128 keys");
  static constexpr int JN = KN / 8;                   // n8 tiles of S
  static constexpr int KK = KN / 16;                  // k16 slices of P V
  static constexpr int KS = kHeadDim / 16;            // k16 slices of Q Kᵀ
  static constexpr int DN = kHeadDim / 8;             // n8 tiles of O
  static constexpr int HALF_BYTES = KN * 128;         // one 64-element half of a K or V tile
  static constexpr int TILE_BYTES = 2 * HALF_BYTES;   // a K or V tile: [half][key][64], swizzled
  static constexpr int STAGE_BYTES = 2 * TILE_BYTES;  // K, then V
  static constexpr int STAGES = KN == 128 ? 3 : 6;    // 192 KB either way
  static constexpr int KEYS_PER_PASS = 128 / 16;      // producer threads / 16-byte chunks of a key's row
  static constexpr int PASSES = KN / KEYS_PER_PASS;
  static constexpr int Q_BYTES = 128 * kHeadDim * 2;  // the item's Q rows
  // wgmma's swizzle atoms start on 1024 bytes; then the stages, Q, and the mbarriers (224 KB and
  // a little, within the 227 KB a block may have).
  static constexpr size_t SMEM_BYTES = 1024 + size_t{STAGES} * STAGE_BYTES + Q_BYTES + (2 * STAGES + 2) * sizeof(uint64_t);
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
template <int N>
__device__ __forceinline__ void release_registers() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void claim_registers() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
#else
template <int N>
__device__ __forceinline__ void release_registers() { __trap(); }
template <int N>
__device__ __forceinline__ void claim_registers() { __trap(); }
#endif

// The consumers' turn barriers (ids 1 and 2; 0 is __syncthreads): one consumer's 128 threads
// wait, the other's 128 arrive.
__device__ __forceinline__ void wait_turn(int id) { asm volatile("bar.sync %0, 256;\n" ::"r"(id) : "memory"); }
__device__ __forceinline__ void pass_turn(int id) { asm volatile("bar.arrive %0, 256;\n" ::"r"(id) : "memory"); }

// A block's work items (prefill tiles times KV heads, longest first) in rounds of gridDim.x, the
// rounds alternating in direction so that the block with the longest item of one round takes the
// shortest of the next (sizes fall from round to round). Both roles walk the same items.
__device__ __forceinline__ int item_of_round(int round) {
  const int g = static_cast<int>(gridDim.x), b = static_cast<int>(blockIdx.x);
  return round * g + ((round & 1) ? g - 1 - b : b);
}

/** What a work item is: one prefill tile (tiles[3 * tile ..]) against one KV head. */
struct PrefillItem {
  int seq, t0, nt, g, first_pos, max_pos;
  __device__ PrefillItem(const int32_t* tiles, const int32_t* positions, int item, int num_kv_heads) {
    const int tile = item / num_kv_heads;
    seq = tiles[3 * tile], t0 = tiles[3 * tile + 1], nt = tiles[3 * tile + 2];
    g = item % num_kv_heads;
    first_pos = positions[t0];
    max_pos = positions[t0 + nt - 1];  // consecutive positions
  }
};

template <typename T, int KN>
__global__ void __launch_bounds__(kThreads, 1)
    prefill_pingpong_kernel(const T* q, const int32_t* tiles, int num_items, const int32_t* positions, PagedKv<T> kv,
                            int num_heads, AttentionOut<T> out) {
  using S = PingpongShape<KN>;
  constexpr int HD = kHeadDim;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t raw = smem_address(smem);
  const uint32_t aligned = (raw + 1023u) & ~1023u;
  const uint32_t stages = aligned;
  const uint32_t q_smem = aligned + S::STAGES * S::STAGE_BYTES;  // [row][16 chunks], swizzled
  unsigned char* const aligned_ptr = smem + (aligned - raw);
  uint64_t* const full = reinterpret_cast<uint64_t*>(aligned_ptr + S::STAGES * S::STAGE_BYTES + S::Q_BYTES);
  uint64_t* const empty = full + S::STAGES;
  uint64_t* const q_full = empty + S::STAGES;
  uint64_t* const q_empty = q_full + 1;
  const int group = num_heads / kv.num_kv_heads;

  if (threadIdx.x == 0) {
    for (int s = 0; s < S::STAGES; ++s) {
      mbarrier_init(&full[s], 128);  // each producer thread, once its copies land
      mbarrier_init(&empty[s], 8);   // each consumer warp, once its MMAs are done with the stage
    }
    mbarrier_init(q_full, 128);
    mbarrier_init(q_empty, 8);  // each consumer warp, once it holds its Q fragments
  }
  __syncthreads();
  wait_for_prior_kernels();  // launched as a programmatic dependent of the q/k pass that wrote q, K and V

  if (threadIdx.x < 128) {
    // The producer: each item's Q, then its K/V tiles. Thread p copies 16-byte chunk p % 16 of
    // rows (keys) p / 16 + 8i; keys past the sequence load as zeros (and are masked), Q rows
    // past the tile as its last row. A thread's rows share one swizzle.
    release_registers<kProducerRegisters>();
    const int p = threadIdx.x;
    const int my_chunk = p % 16, my_row = p / 16;
    const uint32_t my_kv_dst = stages + (my_chunk / 8) * S::HALF_BYTES + my_row * 128 + swizzle(my_row, my_chunk % 8, 7) * 16;
    const uint32_t my_q_dst = q_smem + my_row * HD * 2 + swizzle(my_row, my_chunk, 7) * 16;
    const int bs = kv.block_size;
    const bool bs_pow2 = (bs & (bs - 1)) == 0;
    const int bs_shift = __ffs(bs) - 1;
    const int kv_row = kv.num_kv_heads * HD;
    uint32_t tile_count = 0;  // tiles loaded so far: stage tile_count % STAGES, its use tile_count / STAGES
    for (int round = 0, item; (item = item_of_round(round)) < num_items; ++round) {
      const PrefillItem it(tiles, positions, item, kv.num_kv_heads);
      const int valid_rows = it.nt * group;
      if (round > 0) mbarrier_wait(q_empty, (round - 1) & 1);
#pragma unroll 4
      for (int i = 0; i < 128 / 8; ++i) {
        const int r = min(my_row + 8 * i, valid_rows - 1);
        const int64_t row = static_cast<int64_t>(it.t0 + r / group) * num_heads + it.g * group + r % group;
        cp_async_16(my_q_dst + 8 * i * HD * 2, q + row * HD + my_chunk * 8, true);
      }
      mbarrier_arrive_after_cp_async(q_full);
      const int32_t* table = kv.block_tables + static_cast<int64_t>(it.seq) * kv.table_stride;
      const int64_t my_column = it.g * HD + my_chunk * 8;
      const int key_tiles = it.max_pos / KN + 1;
      // A tile's block-table entries are loaded all at once (keys past the sequence look up the
      // last key's), then its copies issued: one memory round trip a tile. Looked up one copy at
      // a time, each copy waited for its own entry, and the consumers waited for the producer
      // (bench/CUDA_NOTES.md, "Session 11").
      for (int kt = 0; kt < key_tiles; ++kt, ++tile_count) {
        const int stage = tile_count % S::STAGES;
        const int first = kt * KN + my_row;
        int slot[S::PASSES];
        if (bs_pow2) {
#pragma unroll
          for (int i = 0; i < S::PASSES; ++i) slot[i] = table[min(first + i * S::KEYS_PER_PASS, it.max_pos) >> bs_shift];
#pragma unroll
          for (int i = 0; i < S::PASSES; ++i) {
            slot[i] = slot[i] * bs + (min(first + i * S::KEYS_PER_PASS, it.max_pos) & (bs - 1));
          }
        } else {
#pragma unroll
          for (int i = 0; i < S::PASSES; ++i) slot[i] = table[min(first + i * S::KEYS_PER_PASS, it.max_pos) / bs];
#pragma unroll
          for (int i = 0; i < S::PASSES; ++i) slot[i] = slot[i] * bs + min(first + i * S::KEYS_PER_PASS, it.max_pos) % bs;
        }
        if (tile_count >= S::STAGES) mbarrier_wait(&empty[stage], (tile_count / S::STAGES - 1) & 1);
        const uint32_t dst = my_kv_dst + stage * S::STAGE_BYTES;
#pragma unroll
        for (int i = 0; i < S::PASSES; ++i) {
          const bool valid = first + i * S::KEYS_PER_PASS <= it.max_pos;
          const int64_t off = static_cast<int64_t>(slot[i]) * kv_row + my_column;
          cp_async_16(dst + i * S::KEYS_PER_PASS * 128, kv.k + off, valid);
          cp_async_16(dst + S::TILE_BYTES + i * S::KEYS_PER_PASS * 128, kv.v + off, valid);
        }
        mbarrier_arrive_after_cp_async(&full[stage]);
      }
    }
    cp_async_wait<0>();  // the block's shared memory outlives every copy
    return;
  }

  claim_registers<kConsumerRegisters>();
  const int c = threadIdx.x / 128 - 1;  // consumer 0 or 1
  const int ct = threadIdx.x % 128;
  const int lane = ct & 31, warp = ct >> 5;
  const int quad_row = lane >> 2, quad_col = lane & 3;
  // This thread's rows: quad_row and quad_row + 8 of its warp's 16 (v6's rows for warp 4c + warp).
  const int my_rows[2] = {c * 64 + warp * 16 + quad_row, c * 64 + warp * 16 + quad_row + 8};
  const float scale_log2 = rsqrtf(static_cast<float>(HD)) * 1.4426950408889634f;
  const int my_turn = 1 + c, other_turn = 2 - c;
  const auto k_tile = [&](uint32_t tile_count) { return stages + (tile_count % S::STAGES) * S::STAGE_BYTES; };

  uint32_t tile_count = 0;  // tiles consumed so far, counted as the producer counts them
  for (int round = 0, item; (item = item_of_round(round)) < num_items; ++round) {
    const PrefillItem it(tiles, positions, item, kv.num_kv_heads);
    const int valid_rows = it.nt * group;
    const int key_tiles = it.max_pos / KN + 1;
    const auto q_offset = [&](int rr) {  // (token * num_heads + head) * HD
      return (static_cast<int64_t>(it.t0 + rr / group) * num_heads + it.g * group + rr % group) * HD;
    };
    const int row_pos[2] = {it.first_pos + min(my_rows[0], valid_rows - 1) / group,
                            it.first_pos + min(my_rows[1], valid_rows - 1) / group};

    // Q as wgmma A fragments (the layout of mma.sync's A), by ldmatrix from the producer's copy:
    // matrices rows 0-7 / 8-15 of the warp's 16, d chunk 2ks / 2ks + 1.
    uint32_t qf[S::KS][4];
    mbarrier_wait(q_full, round & 1);
    {
      const int lm_row = lane & 7, lm_matrix = lane >> 3;
      const int row = c * 64 + warp * 16 + (lm_matrix & 1) * 8 + lm_row;
#pragma unroll
      for (int ks = 0; ks < S::KS; ++ks) {
        const int chunk = 2 * ks + (lm_matrix >> 1);
        ldmatrix_x4(q_smem + row * HD * 2 + swizzle(row, chunk, 7) * 16, qf[ks][0], qf[ks][1], qf[ks][2], qf[ks][3]);
      }
    }
    __syncwarp();
    if (lane == 0) mbarrier_arrive(q_empty);

    float o[S::DN][4];
#pragma unroll
    for (int dn = 0; dn < S::DN; ++dn) o[dn][0] = o[dn][1] = o[dn][2] = o[dn][3] = 0.0f;
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
    float s[S::JN][4];
    uint32_t pf[S::KK][4];

    const auto issue_qk = [&](uint32_t k) { issue_qk_wgmma<T>(s, qf, k, S::HALF_BYTES); };
    const auto issue_pv = [&](uint32_t v) { issue_pv_wgmma<T>(o, pf, v, S::HALF_BYTES); };
    // v6's online softmax of one tile (prefill_attention.cu: softmax_max, softmax_exp, rescale_o),
    // the same operations in the same order, in two parts. scores_to_p masks S, moves the running
    // max, rescales the running sum, and turns S into p in place (adding it to the sum); it needs
    // only S, which is why it comes before the wait for P V of the tile before (though ptxas waits
    // for that P V before the first write to S: see the loop). finish_p then rescales O (which
    // that P V has added to) and packs p into P's 16-bit A fragments.
    const auto scores_to_p = [&](int kt, float (&factor)[2]) {
      const int base = kt * KN;
      if (base + KN - 1 > it.first_pos) mask_keys_past_rows(s, base, quad_col, row_pos);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float m_new = fmaxf(m_run[h], quad_max(thread_row_max(s, h)) * scale_log2);
        factor[h] = m_new == m_run[h] ? 1.0f : fast_exp2(m_run[h] - m_new);
        m_run[h] = m_new;
        l_run[h] *= factor[h];
      }
#pragma unroll
      for (int jn = 0; jn < S::JN; ++jn) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[jn][e] = fast_exp2(fmaf(s[jn][e], scale_log2, -m_run[e >> 1]));
          l_run[e >> 1] += s[jn][e];
        }
      }
    };
    const auto finish_p = [&](const float (&factor)[2]) {
      if (__any_sync(0xffffffffu, factor[0] != 1.0f || factor[1] != 1.0f)) {
#pragma unroll
        for (int dn = 0; dn < S::DN; ++dn) {
          o[dn][0] *= factor[0];
          o[dn][1] *= factor[0];
          o[dn][2] *= factor[1];
          o[dn][3] *= factor[1];
        }
      }
#pragma unroll
      for (int jn = 0; jn < S::JN; ++jn) {
        pf[jn / 2][(jn & 1) * 2 + 0] = pack2<T>(s[jn][0], s[jn][1]);
        pf[jn / 2][(jn & 1) * 2 + 1] = pack2<T>(s[jn][2], s[jn][3]);
      }
    };

    // Consumer 0 issues first; every wait_turn meets exactly one pass_turn (consumer 1 passes
    // once before each item and not after its last issue of it).
    if (c == 1) pass_turn(1);
    const auto wait_for_tile = [&](uint32_t t) {
      mbarrier_wait(&full[t % S::STAGES], (t / S::STAGES) & 1);
      fence_shared_for_wgmma();  // cp.async wrote through the generic proxy; wgmma reads through the async one
      wait_turn(my_turn);
    };
    float factor[2];
    // Tile 0 has no P V before it. The loop's steps all issue and wait alike, so that ptxas can
    // tell which products are done at each wait (where steps differed, it serialized the wgmmas).
    wait_for_tile(tile_count);
    issue_qk(k_tile(tile_count));
    pass_turn(other_turn);
    wgmma_wait<0>();
    wgmma_pin(s);
    scores_to_p(0, factor);
    finish_p(factor);
    for (int kt = 1; kt < key_tiles; ++kt) {
      const uint32_t t = tile_count + kt;
      wait_for_tile(t);
      issue_qk(k_tile(t));
      issue_pv(k_tile(t - 1) + S::TILE_BYTES);
      pass_turn(other_turn);
      wgmma_wait<1>();  // Q Kᵀ, committed first; P V may still run
      wgmma_pin(s);
      scores_to_p(kt, factor);
      // ptxas waits for every wgmma in flight before the first write to S (SASS, session 11:
      // pinning S or P did not move that wait), so only the row maxima run beside this
      // consumer's P V; the other consumer's MMAs are what keep the tensor cores busy meanwhile.
      // The pin keeps the compiler from moving the wait above the softmax's first reads.
      wgmma_pin(s);
      wgmma_wait<0>();
      wgmma_pin(o);
      if (lane == 0) mbarrier_arrive(&empty[(t - 1) % S::STAGES]);
      finish_p(factor);
    }
    const uint32_t last = tile_count + key_tiles - 1;
    wait_turn(my_turn);
    issue_pv(k_tile(last) + S::TILE_BYTES);
    if (c == 0) pass_turn(other_turn);
    wgmma_wait<0>();
    wgmma_pin(o);
    if (lane == 0) mbarrier_arrive(&empty[last % S::STAGES]);
    tile_count += key_tiles;

#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float l = quad_sum(l_run[h]);
      const int r = my_rows[h];
      const float inv = 1.0f / l;  // not finite for rows past valid_rows, which store nothing
      if (out.f32) {  // fp32 for gemv (steps of a few tokens): column pairs as the fragment holds them
        if (r >= valid_rows) continue;
        const int64_t dst = q_offset(r) + quad_col * 2;
#pragma unroll
        for (int dn = 0; dn < S::DN; ++dn) store_attention_pair(out, dst + dn * 8, o[dn][2 * h] * inv, o[dn][2 * h + 1] * inv);
        continue;
      }
      // 16-bit outputs: the quad regathers each row so that a thread stores 8 columns (16 bytes,
      // and as many of lo) at once instead of 2. With the split's lo half to store too, the
      // 2-column stores cost a bfloat16 2048-token step 49.5 µs a layer of attention against
      // 41.5 (ncu, bench/CUDA_NOTES.md "Session 12"); same bits.
      float v[S::DN][2];
#pragma unroll
      for (int dn = 0; dn < S::DN; ++dn) {
        v[dn][0] = o[dn][2 * h] * inv;
        v[dn][1] = o[dn][2 * h + 1] * inv;
      }
      quad_gather_columns<S::DN>(v, quad_col);
      if (r >= valid_rows) continue;
      const int64_t dst = q_offset(r);
#pragma unroll
      for (int g = 0; g < S::DN; g += 4) {
        const float cols[8] = {v[g][0], v[g][1], v[g + 1][0], v[g + 1][1], v[g + 2][0], v[g + 2][1], v[g + 3][0], v[g + 3][1]};
        store_split_n<8>(cols, out.hi, out.lo, dst + (g + quad_col) * 8);
      }
    }
  }
}

int sm_count() {
  static const int count = [] {
    int device = 0, n = 0;
    SY_CUDA_CHECK(cudaGetDevice(&device));
    SY_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    return n > 0 ? n : 1;
  }();
  return count;
}

template <typename T, int KN>
void launch(const T* q, const int32_t* tiles, int num_tiles, const int32_t* positions, const PagedKv<T>& kv,
            int num_heads, const AttentionOut<T>& out, cudaStream_t stream) {
  using S = PingpongShape<KN>;
  static const bool allowed = [] {
    SY_CUDA_CHECK(cudaFuncSetAttribute(prefill_pingpong_kernel<T, KN>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(S::SMEM_BYTES)));
    return true;
  }();
  (void)allowed;
  // One block an SM (its registers and shared memory see to that), each walking its items.
  const int items = num_tiles * kv.num_kv_heads;
  launch_dependent(prefill_pingpong_kernel<T, KN>, dim3(std::min(items, sm_count())), dim3(kThreads), S::SMEM_BYTES,
                   stream, q, tiles, items, positions, kv, num_heads, out);
  SY_CUDA_CHECK_LAUNCH(prefill_pingpong_kernel);
}

}  // namespace

template <typename T>
void launch_prefill_pingpong(int key_tile, const T* q, const int32_t* tiles, int num_tiles, const int32_t* positions,
                             const PagedKv<T>& kv, int num_heads, const AttentionOut<T>& out, cudaStream_t stream) {
  if (kv.head_dim != kHeadDim) throw_unsupported_head_dim(kv.head_dim);
  if (key_tile == 64) return launch<T, 64>(q, tiles, num_tiles, positions, kv, num_heads, out, stream);
  launch<T, 128>(q, tiles, num_tiles, positions, kv, num_heads, out, stream);
}

template void launch_prefill_pingpong<__nv_bfloat16>(int, const __nv_bfloat16*, const int32_t*, int, const int32_t*,
                                                     const PagedKv<__nv_bfloat16>&, int,
                                                     const AttentionOut<__nv_bfloat16>&, cudaStream_t);
template void launch_prefill_pingpong<__half>(int, const __half*, const int32_t*, int, const int32_t*,
                                              const PagedKv<__half>&, int, const AttentionOut<__half>&, cudaStream_t);

}  // namespace sy::cuda
