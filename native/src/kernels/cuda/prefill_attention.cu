// Prefill attention on tensor cores with the output in registers (v4; the first version, WMMA
// with O in shared memory, is paged_attention_prefill_wmma in prefill_attention_wmma.cu and still
// serves head_dim 256).
//
// A block takes one prefill tile (consecutive query tokens of one sequence, times the GQA
// group of one KV head: 16 (token, head) rows per warp) against 64-key tiles of that sequence's paged
// cache, keys 0..pos for each row. Each of its warps owns 16 rows for the whole kernel:
//  - Q: the warp's rows as mma.sync A fragments in registers, loaded once;
//  - S = Q Kᵀ: m16n8k16 MMAs, K's fragments by ldmatrix from shared memory;
//  - online softmax in registers (a row lives in the 4 lanes of a quad: two shuffles per
//    reduction), exp2 of pre-scaled logits, fp32 running max and sum;
//  - O += P V: P converted in registers from S's accumulator layout to A fragments (16-bit,
//    the same rounding as v1), V's fragments by ldmatrix.trans; O stays in fp32 registers.
// K and V tiles are double-buffered in shared memory with cp.async (the next tile loads while
// this one is multiplied); rows are XOR-swizzled by 16-byte chunk so ldmatrix reads are free of
// bank conflicts. Keys past the sequence load as zeros (cp.async zero-fill) and are masked.
//
// Same function as v1, row by row: a row's result depends only on its own position and the
// keys, not on the other rows of its tile (batch invariance), and a key tile entirely past a
// row's position leaves that row's state exactly unchanged.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/paged_kv.cuh"

namespace sy::cuda {
namespace {

// Warps per block, 16 rows each: 8 (128 rows, one block per SM) ran 12-15% faster than 4 (64
// rows, two blocks per SM) on the H200 (bench/CUDA_NOTES.md); -DSY_PREFILL_WARPS=4 builds the other.
#ifndef SY_PREFILL_WARPS
#define SY_PREFILL_WARPS 8
#endif
constexpr int kWarps = SY_PREFILL_WARPS;
constexpr int kRows = 16 * kWarps;  // (token, head) rows per block
constexpr int kKeys = 64;           // keys per tile
constexpr int kThreads = 32 * kWarps;

template <int HD>
struct PrefillShape {
  static constexpr int CH = HD / 8;                 // 16-byte chunks per K/V row
  static constexpr int SWZ = CH < 8 ? CH - 1 : 7;   // XOR mask of the chunk index
  static constexpr int KS = HD / 16;                // k16 slices of Q Kᵀ
  static constexpr int DN = HD / 8;                 // n8 tiles of O
  static constexpr int JN = kKeys / 8;              // n8 tiles of S
  static constexpr int KK = kKeys / 16;             // k16 slices of P V
  static constexpr size_t TILE_BYTES = kKeys * HD * 2;  // one K or V tile
  static constexpr size_t SMEM_BYTES = 4 * TILE_BYTES;  // K and V, two stages
};

__device__ __forceinline__ int swizzle(int row, int chunk, int mask) { return chunk ^ (row & mask); }

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;  // 0: the 16 bytes are zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t address, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(address));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t address, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                                  uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(address));
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

/** 2^x (the SFU's approximation; 2^-inf = 0). */
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

template <typename T, int HD>
__global__ void __launch_bounds__(kThreads, 8 / kWarps) prefill_mma_kernel(const T* q, const int32_t* tiles, int num_tiles,
                                                                  const int32_t* positions, PagedKv<T> kv,
                                                                  int num_heads, float* out) {
  using S = PrefillShape<HD>;
  extern __shared__ __align__(128) unsigned char smem[];
  // [stage][K, V][key][HD], each row's 16-byte chunks swizzled.
  const uint32_t smem_base = smem_address(smem);

  // Tiles come longest first (order_prefill_tiles), each with all its KV heads.
  const int tile = blockIdx.x / kv.num_kv_heads;
  const int seq = tiles[3 * tile], t0 = tiles[3 * tile + 1], nt = tiles[3 * tile + 2];
  const int g = blockIdx.x % kv.num_kv_heads;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int quad_row = lane >> 2, quad_col = lane & 3;
  const int group = num_heads / kv.num_kv_heads;
  const int valid_rows = nt * group;
  const int32_t* table = kv.block_tables + static_cast<int64_t>(seq) * kv.table_stride;
  const int64_t kv_row = static_cast<int64_t>(kv.num_kv_heads) * HD;
  const int first_pos = positions[t0];
  const int max_pos = positions[t0 + nt - 1];  // consecutive positions
  const int key_tiles = max_pos / kKeys + 1;

  // This thread's two rows (quad_row and quad_row + 8 of the warp's 16); rows past the tile
  // compute as the tile's last token (no NaN) and are not stored.
  int row_pos[2];
  int64_t row_offset[2];  // (token * num_heads + head) * HD
  bool row_valid[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = warp * 16 + quad_row + 8 * h;
    row_valid[h] = r < valid_rows;
    const int rr = row_valid[h] ? r : valid_rows - 1;
    row_pos[h] = first_pos + rr / group;
    row_offset[h] = (static_cast<int64_t>(t0 + rr / group) * num_heads + g * group + rr % group) * HD;
  }

  auto load_tile = [&](int kt, int stage) {
    const int base = kt * kKeys;
#pragma unroll 4
    for (int i = tid; i < kKeys * S::CH; i += kThreads) {
      const int key = i / S::CH, c = i % S::CH;
      const int j = base + key;
      const bool valid = j <= max_pos;
      const int64_t off = valid ? slot_of(table, j, kv.block_size) * kv_row + g * HD + c * 8 : 0;
      const uint32_t dst = smem_base + stage * 2 * S::TILE_BYTES + key * HD * 2 + swizzle(key, c, S::SWZ) * 16;
      cp_async_16(dst, kv.k + off, valid);
      cp_async_16(dst + S::TILE_BYTES, kv.v + off, valid);
    }
    cp_async_commit();
  };
  load_tile(0, 0);

  // Q fragments (A operand, row-major 16 x 16 per k16 slice).
  uint32_t qf[S::KS][4];
#pragma unroll
  for (int ks = 0; ks < S::KS; ++ks) {
    const int col = ks * 16 + quad_col * 2;
    qf[ks][0] = *reinterpret_cast<const uint32_t*>(q + row_offset[0] + col);
    qf[ks][1] = *reinterpret_cast<const uint32_t*>(q + row_offset[1] + col);
    qf[ks][2] = *reinterpret_cast<const uint32_t*>(q + row_offset[0] + col + 8);
    qf[ks][3] = *reinterpret_cast<const uint32_t*>(q + row_offset[1] + col + 8);
  }

  float o[S::DN][4];
#pragma unroll
  for (int dn = 0; dn < S::DN; ++dn) o[dn][0] = o[dn][1] = o[dn][2] = o[dn][3] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
  const float scale_log2 = rsqrtf(static_cast<float>(HD)) * 1.4426950408889634f;

  // ldmatrix lanes: lane l gives the address of row (l % 8) of matrix l / 8.
  const int lm_row = lane & 7, lm_matrix = lane >> 3;

  for (int kt = 0; kt < key_tiles; ++kt) {
    const int stage = kt & 1;
    if (kt + 1 < key_tiles) {
      load_tile(kt + 1, stage ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const uint32_t k_tile = smem_base + stage * 2 * S::TILE_BYTES;
    const uint32_t v_tile = k_tile + S::TILE_BYTES;

    // S = Q Kᵀ: B fragments of two key n8 tiles per ldmatrix.x4 (matrices: keys of tile
    // 2jp (+8 for 2jp+1), d chunk 2ks (+1)).
    float s[S::JN][4];
#pragma unroll
    for (int jn = 0; jn < S::JN; ++jn) s[jn][0] = s[jn][1] = s[jn][2] = s[jn][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < S::KS; ++ks) {
#pragma unroll
      for (int jp = 0; jp < S::JN / 2; ++jp) {
        const int key = (2 * jp + (lm_matrix >> 1)) * 8 + lm_row;
        const int chunk = 2 * ks + (lm_matrix & 1);
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4(k_tile + key * HD * 2 + swizzle(key, chunk, S::SWZ) * 16, b0, b1, b2, b3);
        mma_16816<T>(s[2 * jp], qf[ks], b0, b1);
        mma_16816<T>(s[2 * jp + 1], qf[ks], b2, b3);
      }
    }

    // Online softmax. Element (jn, e) is key kt * 64 + jn * 8 + quad_col * 2 + (e & 1) of row
    // half e >> 1. Masking is needed only where the tile reaches past the first row's position.
    const int base = kt * kKeys;
    const bool needs_mask = base + kKeys - 1 > first_pos;
    float m_new[2] = {m_run[0], m_run[1]};
#pragma unroll
    for (int jn = 0; jn < S::JN; ++jn) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int h = e >> 1;
        float x = s[jn][e] * scale_log2;
        if (needs_mask && base + jn * 8 + quad_col * 2 + (e & 1) > row_pos[h]) x = -INFINITY;
        s[jn][e] = x;
        m_new[h] = fmaxf(m_new[h], x);
      }
    }
    float factor[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      m_new[h] = quad_max(m_new[h]);  // finite from the first tile on: key 0 is before every row
      factor[h] = fast_exp2(m_run[h] - m_new[h]);
      m_run[h] = m_new[h];
      l_run[h] *= factor[h];
    }
#pragma unroll
    for (int dn = 0; dn < S::DN; ++dn) {
      o[dn][0] *= factor[0];
      o[dn][1] *= factor[0];
      o[dn][2] *= factor[1];
      o[dn][3] *= factor[1];
    }
    // P as A fragments of P V: k16 slice kk covers S's n8 tiles 2kk and 2kk + 1. The running
    // sum takes p before its rounding to 16 bits, as v1 did.
    uint32_t pf[S::KK][4];
#pragma unroll
    for (int jn = 0; jn < S::JN; ++jn) {
      float p[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        p[e] = fast_exp2(s[jn][e] - m_run[e >> 1]);
        l_run[e >> 1] += p[e];
      }
      pf[jn / 2][(jn & 1) * 2 + 0] = pack2<T>(p[0], p[1]);
      pf[jn / 2][(jn & 1) * 2 + 1] = pack2<T>(p[2], p[3]);
    }

    // O += P V: B fragments of two d n8 tiles per ldmatrix.x4.trans (matrices: keys 16kk (+8),
    // d chunk dn (+1)).
#pragma unroll
    for (int kk = 0; kk < S::KK; ++kk) {
#pragma unroll
      for (int dp = 0; dp < S::DN / 2; ++dp) {
        const int key = kk * 16 + (lm_matrix & 1) * 8 + lm_row;
        const int chunk = 2 * dp + (lm_matrix >> 1);
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4_trans(v_tile + key * HD * 2 + swizzle(key, chunk, S::SWZ) * 16, b0, b1, b2, b3);
        mma_16816<T>(o[2 * dp], pf[kk], b0, b1);
        mma_16816<T>(o[2 * dp + 1], pf[kk], b2, b3);
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float l = quad_sum(l_run[h]);
    if (!row_valid[h]) continue;
    const float inv = 1.0f / l;
    float* dst = out + row_offset[h] + quad_col * 2;
#pragma unroll
    for (int dn = 0; dn < S::DN; ++dn) {
      *reinterpret_cast<float2*>(dst + dn * 8) = make_float2(o[dn][2 * h] * inv, o[dn][2 * h + 1] * inv);
    }
  }
}

template <typename T, int HD>
void launch_prefill_mma(const T* q, const int32_t* tiles, int num_tiles, const int32_t* positions,
                        const PagedKv<T>& kv, int num_heads, float* out, cudaStream_t stream) {
  constexpr size_t smem = PrefillShape<HD>::SMEM_BYTES;
  static bool attribute_set = false;  // per instantiation; set once, before any capture
  if (!attribute_set) {
    SY_CUDA_CHECK(cudaFuncSetAttribute(prefill_mma_kernel<T, HD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem)));
    attribute_set = true;
  }
  prefill_mma_kernel<T, HD><<<num_tiles * kv.num_kv_heads, kThreads, smem, stream>>>(q, tiles, num_tiles, positions,
                                                                                     kv, num_heads, out);
  SY_CUDA_CHECK_LAUNCH(prefill_mma_kernel);
}

}  // namespace

namespace {

// Whether a head_dim's prefill runs on v1 (WMMA, 64-row tiles): head_dim 256, or every head_dim
// with SWITCHYARD_CUDA_PREFILL=wmma (for comparisons).
bool uses_wmma(int head_dim) {
  static const bool wmma_only = [] {
    const char* v = std::getenv("SWITCHYARD_CUDA_PREFILL");
    return v && std::strcmp(v, "wmma") == 0;
  }();
  return wmma_only || head_dim > 128;
}

}  // namespace

int prefill_tile_tokens(int group, int head_dim) { return (uses_wmma(head_dim) ? 64 : kRows) / group; }

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
                             const PagedKv<T>& kv, int num_heads, float* out, cudaStream_t stream) {
  if (num_tiles == 0) return;
  if (uses_wmma(kv.head_dim)) {
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
                                                     const PagedKv<__nv_bfloat16>&, int, float*, cudaStream_t);
template void paged_attention_prefill<__half>(const __half*, const int32_t*, int, const int32_t*,
                                              const PagedKv<__half>&, int, float*, cudaStream_t);

}  // namespace sy::cuda
