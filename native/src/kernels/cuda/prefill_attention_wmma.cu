// The first prefill attention kernel (now used for head_dim 256 only; prefill_attention.cu has the
// register-resident one): a tile of consecutive query tokens of one sequence against 64-key tiles
// of its paged cache (paged_kv.cuh; its prefix-cache hits and earlier chunks included), S = QKᵀ
// and O += PV on tensor cores (WMMA, 16x16x16), the softmax in fp32 in shared memory. The GQA
// group of query heads sharing a KV head is handled by one block, so each K/V row is read once per
// group. Output in fp32. kernels/cpu/attention.cpp is the reference.
#include <mma.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/paged_kv.cuh"
#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda/store_split.cuh"

namespace sy::cuda {
namespace {

constexpr int kKeyTile = 64;
constexpr int kPrefillRows = 64;  // (token, head) rows per block: 4 warps x 16
constexpr int kPrefillThreads = 128;

template <int HD>
constexpr size_t prefill_smem_bytes() {
  return 3 * kPrefillRows * HD * 2 + kPrefillRows * kKeyTile * 4 + kPrefillRows * kKeyTile * 2 +
         kPrefillRows * HD * 4 + 3 * kPrefillRows * 4;
}

template <typename T, int HD>
__global__ void __launch_bounds__(kPrefillThreads) prefill_kernel(const T* q, const int32_t* tiles,
                                                                  const int32_t* positions, PagedKv<T> kv,
                                                                  int num_heads, AttentionOut<T> out) {
  using namespace nvcuda;
  extern __shared__ __align__(128) unsigned char smem[];
  T* qs = reinterpret_cast<T*>(smem);       // [rows][HD]
  T* ks = qs + kPrefillRows * HD;           // [keys][HD]
  T* vs = ks + kKeyTile * HD;               // [keys][HD]
  float* s = reinterpret_cast<float*>(vs + kKeyTile * HD);  // [rows][keys]
  T* p = reinterpret_cast<T*>(s + kPrefillRows * kKeyTile);  // [rows][keys]
  float* o = reinterpret_cast<float*>(p + kPrefillRows * kKeyTile);  // [rows][HD]
  float* m_run = o + kPrefillRows * HD;
  float* l_run = m_run + kPrefillRows;
  int* row_pos = reinterpret_cast<int*>(l_run + kPrefillRows);

  // Tiles come longest first (order_prefill_tiles), each with all its KV heads.
  const int tile = blockIdx.x / kv.num_kv_heads;
  const int seq = tiles[3 * tile], t0 = tiles[3 * tile + 1], nt = tiles[3 * tile + 2];
  const int g = blockIdx.x % kv.num_kv_heads;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int group = num_heads / kv.num_kv_heads;
  const int valid_rows = nt * group;
  const int32_t* table = kv.block_tables + static_cast<int64_t>(seq) * kv.table_stride;
  const int64_t kv_row = static_cast<int64_t>(kv.num_kv_heads) * HD;
  constexpr int CH = HD / 8;  // 16-byte chunks per row

  for (int i = tid; i < kPrefillRows * CH; i += kPrefillThreads) {
    const int r = i / CH, c = (i % CH) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < valid_rows) {
      const int64_t src = (static_cast<int64_t>(t0 + r / group) * num_heads + g * group + r % group) * HD + c;
      v = *reinterpret_cast<const uint4*>(q + src);
    }
    *reinterpret_cast<uint4*>(qs + r * HD + c) = v;
  }
  for (int i = tid; i < kPrefillRows * HD; i += kPrefillThreads) o[i] = 0.0f;
  if (tid < kPrefillRows) {
    row_pos[tid] = tid < valid_rows ? positions[t0 + tid / group] : -1;
    m_run[tid] = -INFINITY;
    l_run[tid] = 0.0f;
  }
  const int max_pos = positions[t0 + nt - 1];
  const int key_tiles = max_pos / kKeyTile + 1;
  const float scale = rsqrtf(static_cast<float>(HD));
  const int wr = warp * 16;  // this warp's first row

  for (int kt = 0; kt < key_tiles; ++kt) {
    const int base = kt * kKeyTile;
    for (int i = tid; i < kKeyTile * CH; i += kPrefillThreads) {
      const int key = i / CH, c = (i % CH) * 8;
      const int j = base + key;
      uint4 kv4 = make_uint4(0, 0, 0, 0), vv4 = make_uint4(0, 0, 0, 0);
      if (j <= max_pos) {
        const int64_t off = slot_of(table, j, kv.block_size) * kv_row + g * HD + c;
        kv4 = *reinterpret_cast<const uint4*>(kv.k + off);
        vv4 = *reinterpret_cast<const uint4*>(kv.v + off);
      }
      *reinterpret_cast<uint4*>(ks + key * HD + c) = kv4;
      *reinterpret_cast<uint4*>(vs + key * HD + c) = vv4;
    }
    __syncthreads();

    // S[wr.., :] = Q[wr.., :] Kᵀ
#pragma unroll
    for (int cf = 0; cf < kKeyTile / 16; ++cf) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
#pragma unroll
      for (int kf = 0; kf < HD / 16; ++kf) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
        wmma::load_matrix_sync(a, qs + wr * HD + kf * 16, HD);
        wmma::load_matrix_sync(b, ks + cf * 16 * HD + kf * 16, HD);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(s + wr * kKeyTile + cf * 16, acc, kKeyTile, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax over this warp's 16 rows; lane holds columns lane and lane + 32.
    for (int rr = 0; rr < 16; ++rr) {
      const int r = wr + rr, pos = row_pos[r];
      const int j0 = base + lane, j1 = j0 + 32;
      const float s0 = j0 <= pos ? s[r * kKeyTile + lane] * scale : -INFINITY;
      const float s1 = j1 <= pos ? s[r * kKeyTile + lane + 32] * scale : -INFINITY;
      const float m_old = m_run[r];
      const float m_new = fmaxf(m_old, warp_max(fmaxf(s0, s1)));
      float p0 = 0, p1 = 0, f = 1;
      if (m_new != -INFINITY) {
        p0 = __expf(s0 - m_new);
        p1 = __expf(s1 - m_new);
        f = __expf(m_old - m_new);
      }
      p[r * kKeyTile + lane] = from_f32<T>(p0);
      p[r * kKeyTile + lane + 32] = from_f32<T>(p1);
      const float sum = warp_sum(p0 + p1);
      for (int d = lane; d < HD; d += 32) o[r * HD + d] *= f;
      __syncwarp();
      if (lane == 0) {
        m_run[r] = m_new;
        l_run[r] = l_run[r] * f + sum;
      }
    }
    __syncwarp();

    // O[wr.., :] += P[wr.., :] V
#pragma unroll
    for (int of = 0; of < HD / 16; ++of) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, o + wr * HD + of * 16, HD, wmma::mem_row_major);
#pragma unroll
      for (int kf = 0; kf < kKeyTile / 16; ++kf) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
        wmma::load_matrix_sync(a, p + wr * kKeyTile + kf * 16, kKeyTile);
        wmma::load_matrix_sync(b, vs + kf * 16 * HD + of * 16, HD);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(o + wr * HD + of * 16, acc, HD, wmma::mem_row_major);
    }
    __syncthreads();
  }

  for (int i = tid; i < kPrefillRows * HD; i += kPrefillThreads) {
    const int r = i / HD, d = i % HD;
    if (r >= valid_rows) continue;
    const int64_t dst = (static_cast<int64_t>(t0 + r / group) * num_heads + g * group + r % group) * HD + d;
    store_attention(out, dst, o[i] / l_run[r]);
  }
}

template <typename T, int HD>
void launch_prefill(const T* q, const int32_t* tiles, int num_tiles, const int32_t* positions, const PagedKv<T>& kv,
                    int num_heads, const AttentionOut<T>& out, cudaStream_t stream) {
  constexpr size_t smem = prefill_smem_bytes<HD>();
  static bool attribute_set = false;  // per instantiation; set once, before any capture
  if (!attribute_set) {
    SY_CUDA_CHECK(cudaFuncSetAttribute(prefill_kernel<T, HD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem)));
    attribute_set = true;
  }
  prefill_kernel<T, HD><<<num_tiles * kv.num_kv_heads, kPrefillThreads, smem, stream>>>(q, tiles, positions, kv,
                                                                                            num_heads, out);
  SY_CUDA_CHECK_LAUNCH(prefill_kernel);
}

}  // namespace

template <typename T>
void paged_attention_prefill_wmma(const T* q, const int32_t* tiles, int num_tiles, const int32_t* positions,
                                  const PagedKv<T>& kv, int num_heads, const AttentionOut<T>& out,
                                  cudaStream_t stream) {
  if (num_tiles == 0) return;
  switch (kv.head_dim) {
    case 16: return launch_prefill<T, 16>(q, tiles, num_tiles, positions, kv, num_heads, out, stream);
    case 32: return launch_prefill<T, 32>(q, tiles, num_tiles, positions, kv, num_heads, out, stream);
    case 64: return launch_prefill<T, 64>(q, tiles, num_tiles, positions, kv, num_heads, out, stream);
    case 128: return launch_prefill<T, 128>(q, tiles, num_tiles, positions, kv, num_heads, out, stream);
    case 256: return launch_prefill<T, 256>(q, tiles, num_tiles, positions, kv, num_heads, out, stream);
    default: throw_unsupported_head_dim(kv.head_dim);
  }
}

template void paged_attention_prefill_wmma<__nv_bfloat16>(const __nv_bfloat16*, const int32_t*, int, const int32_t*,
                                                          const PagedKv<__nv_bfloat16>&, int,
                                                          const AttentionOut<__nv_bfloat16>&, cudaStream_t);
template void paged_attention_prefill_wmma<__half>(const __half*, const int32_t*, int, const int32_t*,
                                                   const PagedKv<__half>&, int, const AttentionOut<__half>&,
                                                   cudaStream_t);

}  // namespace sy::cuda
