// Products of a few rows on tensor cores. A decode step of 5-8 rows (bf16, whose split GEMM inputs
// stack hi and lo rows: 10-16 rows) or 5-16 rows (fp16) went to cuBLAS, whose kernels for such
// shapes took ~6-7 µs a projection for 4-12 MB of weights, plus split-K reductions, where the
// weights' bytes need 1-3 µs (ncu, H200, bench/CUDA_NOTES.md, "Session 15").
//
// Here a block of 8 warps makes 16 output rows (a 16-row tile of w, the MMA's M) for all n ≤ 16
// rows of x (one or two 8-row tiles, the MMA's N), the warps taking the 32-element pieces of the
// inner dimension in turn and adding their sums at the end. Fragments come straight from 16-byte
// global loads, with the inner dimension in the order they want (a sum does not care): lane
// (row8, quad) loads elements [32p + 8·quad, +8) of w rows row8 and row8 + 8 and of x row row8,
// and its words 2s, 2s + 1 are k16 slice s's columns 2·quad, +1 and +8, +9. The first round of
// weight loads goes out before the wait for the kernel before (dependent_launch.cuh), into
// registers; where x has two 8-row tiles, up to kMaxStagedRounds more go into shared memory
// (cp.async), so that the products of a longer inner dimension (o, gate_up's two tiles, down)
// wait on no weights after the wait.
//
// small_gemm_silu takes a gate tile and its up tile in each block, and finishes with SiLU·up, so a
// decode step's MLP runs without the separate silu_mul pass.
#include "kernels/cuda/small_gemm.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <array>
#include <vector>

#include "kernels/cuda/activation.cuh"
#include "kernels/cuda/attention_tile.cuh"
#include "kernels/cuda/cp_async.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda/store_split.cuh"

namespace sy::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kPiece = 32;   // elements of the inner dimension a lane quad covers with one load each
constexpr int kRound = 4;    // pieces a warp loads before it multiplies
// A round in shared memory: each lane's kRound pieces of two w rows, 16 bytes each, every warp.
constexpr int kRoundBytes = kWarps * kRound * 2 * 32 * 16;
constexpr int kMaxStagedRounds = 2;

// The most rounds a launch may stage: set by small_gemm_prepare to what the device's shared memory
// allows beside the largest build's static part, so that a launch before it stages none.
int staged_round_limit = 0;

// Rounds a warp runs over `in` (warp 0, which has the most pieces).
int rounds_over(int64_t in) {
  const int64_t pieces = in / kPiece, per_warp = (pieces + kWarps - 1) / kWarps;
  return static_cast<int>((per_warp + kRound - 1) / kRound);
}

// Rounds after the first that the launch's blocks copy in before their wait (its dynamic shared
// memory is that many kRoundBytes). Only where x has two 8-row tiles: H200, same call, staged
// against not, bfloat16 batch 8 (16 stacked rows) 1.289 against 1.333-1.335 ms, float16 batch 16
// 1.422-1.434 against 1.470-1.488; with one tile it lost, bfloat16 batch 4 1.188-1.189 against
// 1.145-1.147 and float16 batch 8 1.275-1.288 against 1.243-1.264 (bench/CUDA_NOTES.md, "Session
// 19"). SWITCHYARD_CUDA_SMALL_GEMM_STAGE=off: none anywhere (for measuring).
template <int NT>
int staged_rounds(int64_t in) {
  static const bool allowed = !env_is_off("SWITCHYARD_CUDA_SMALL_GEMM_STAGE");
  return allowed && NT == 2 ? std::min(rounds_over(in) - 1, staged_round_limit) : 0;
}

// The block's TILES 16-row tiles of w (first rows tile_row[k]) times all n <= 8 NT rows of x:
// each warp's sums of its pieces, left in partial[warp] for the epilogue to add in warp order.
// A warp loads kRound / TILES pieces of each tile a round, so every build keeps as many weight
// bytes in flight and as many registers for them.
// `staged` rounds after the first go through shared memory at `staged_w`, copied before the wait.
template <typename T, int NT, int TILES>
__device__ __forceinline__ void tile_sums(const T* __restrict__ x, int n, const T* __restrict__ w, int in,
                                          const int (&tile_row)[TILES], float (*partial)[TILES][NT][32][4],
                                          uint4* staged_w, int staged) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, row8 = lane >> 2, quad = lane & 3;
  const int pieces = in / kPiece;
  const T* w0[TILES];
  const T* w1[TILES];
#pragma unroll
  for (int k = 0; k < TILES; ++k) {
    w0[k] = w + static_cast<int64_t>(tile_row[k] + row8) * in + 8 * quad;
    w1[k] = w0[k] + 8 * static_cast<int64_t>(in);
  }
  const T* xr[NT];
  bool has[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int t = nt * 8 + row8;
    has[nt] = t < n;
    xr[nt] = x + static_cast<int64_t>(has[nt] ? t : 0) * in + 8 * quad;
  }
  constexpr int kTileRound = kRound / TILES;
  const uint4 zero = make_uint4(0, 0, 0, 0);
  float acc[TILES][NT][4] = {};
  uint4 a0[TILES][kTileRound], a1[TILES][kTileRound];
  const auto load_weights = [&](int first) {
#pragma unroll
    for (int k = 0; k < TILES; ++k)
#pragma unroll
      for (int u = 0; u < kTileRound; ++u) {
        const int p = first + u * kWarps;
        a0[k][u] = p < pieces ? __ldg(reinterpret_cast<const uint4*>(w0[k] + p * kPiece)) : zero;
        a1[k][u] = p < pieces ? __ldg(reinterpret_cast<const uint4*>(w1[k] + p * kPiece)) : zero;
      }
  };
  // Piece u of tile k in staged round `slot`, half h (w row row8 or row8 + 8), at
  // [slot][warp][k][u][h][lane]: a warp's reads of one (k, u, h) are 512 consecutive bytes.
  const auto staged_at = [&](int slot, int k, int u, int h) {
    return staged_w + ((((static_cast<int64_t>(slot) * kWarps + warp) * TILES + k) * kTileRound + u) * 2 + h) * 32 + lane;
  };
  load_weights(warp);  // reads nothing an earlier kernel writes
  if (staged > 0) {
    for (int r = 1; r <= staged; ++r) {
#pragma unroll
      for (int k = 0; k < TILES; ++k)
#pragma unroll
        for (int u = 0; u < kTileRound; ++u) {
          const int p = warp + (r * kTileRound + u) * kWarps;
          if (p < pieces) {
            cp_async_16(static_cast<uint32_t>(__cvta_generic_to_shared(staged_at(r - 1, k, u, 0))), w0[k] + p * kPiece, true);
            cp_async_16(static_cast<uint32_t>(__cvta_generic_to_shared(staged_at(r - 1, k, u, 1))), w1[k] + p * kPiece, true);
          }
        }
    }
    cp_async_commit();
  }
  wait_for_prior_kernels();
  for (int first = warp, round = 0;;) {
    uint4 b[kTileRound][NT];
#pragma unroll
    for (int u = 0; u < kTileRound; ++u) {
      const int p = first + u * kWarps;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        b[u][nt] = p < pieces && has[nt] ? *reinterpret_cast<const uint4*>(xr[nt] + p * kPiece) : zero;
      }
    }
#pragma unroll
    for (int u = 0; u < kTileRound; ++u) {
      if (first + u * kWarps >= pieces) break;
#pragma unroll
      for (int k = 0; k < TILES; ++k)
#pragma unroll
        for (int s = 0; s < 2; ++s) {
          const uint32_t af[4] = {word_of(a0[k][u], 2 * s), word_of(a1[k][u], 2 * s), word_of(a0[k][u], 2 * s + 1),
                                  word_of(a1[k][u], 2 * s + 1)};
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
            mma_16816<T>(acc[k][nt], af, word_of(b[u][nt], 2 * s), word_of(b[u][nt], 2 * s + 1));
        }
    }
    first += kTileRound * kWarps;
    if (first >= pieces) break;
    if (++round <= staged) {
      if (round == 1) cp_async_wait<0>();  // a lane reads back only what it copied itself
#pragma unroll
      for (int k = 0; k < TILES; ++k)
#pragma unroll
        for (int u = 0; u < kTileRound; ++u) {
          const bool live = first + u * kWarps < pieces;
          a0[k][u] = live ? *staged_at(round - 1, k, u, 0) : zero;
          a1[k][u] = live ? *staged_at(round - 1, k, u, 1) : zero;
        }
    } else {
      load_weights(first);
    }
  }
#pragma unroll
  for (int k = 0; k < TILES; ++k)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) partial[warp][k][nt][lane][e] = acc[k][nt][e];
  __syncthreads();
}

// Tile `k`'s sum for x row t and tile row c, its warps' sums added in warp order. Fragment element
// e of lane l is tile row (l / 4) + 8(e / 2) and row 2(l % 4) + e % 2 of the 8-row x tile.
template <int NT, int TILES>
__device__ __forceinline__ float tile_sum(const float (*partial)[TILES][NT][32][4], int k, int t, int c) {
  const int nt = t / 8, r = t % 8, l = (c % 8) * 4 + r / 2, e = (c / 8) * 2 + r % 2;
  float v = 0.0f;
#pragma unroll
  for (int j = 0; j < kWarps; ++j) v += partial[j][k][nt][l][e];
  return v;
}

template <typename T, int NT, bool OUT16>
__global__ void __launch_bounds__(kThreads) small_gemm_kernel(const T* __restrict__ x, int n, const T* __restrict__ w,
                                                              int out, int in, int staged, void* y, bool accumulate) {
  allow_dependent_launch();
  extern __shared__ __align__(16) uint4 staged_w[];
  __shared__ float partial[kWarps][1][NT][32][4];
  const int o0 = blockIdx.x * 16;
  tile_sums<T, NT, 1>(x, n, w, in, {o0}, partial, staged_w, staged);
  for (int i = threadIdx.x; i < n * 16; i += kThreads) {
    const int t = i / 16, c = i % 16;
    const float v = tile_sum<NT, 1>(partial, 0, t, c);
    const int64_t at = static_cast<int64_t>(t) * out + o0 + c;
    if constexpr (OUT16) {
      static_cast<T*>(y)[at] = from_f32<T>(v);
    } else {
      float* yf = static_cast<float*>(y);
      yf[at] = accumulate ? yf[at] + v : v;
    }
  }
}

// The gate_up product and SiLU·up in one: a block takes gate rows o0.. and their up rows
// inter + o0.., and each output is silu_mul's of the two products as small_gemm would have
// stored them (product_value), hi and lo products added when x holds a split input (tokens hi
// rows, then as many lo rows). The same bits as small_gemm followed by silu_mul.
template <typename T, int NT>
__global__ void __launch_bounds__(kThreads) small_gemm_silu_kernel(const T* __restrict__ x, int n, int tokens,
                                                                   const T* __restrict__ gate_up, int inter, int in,
                                                                   int staged, T* act, T* act_lo) {
  allow_dependent_launch();
  extern __shared__ __align__(16) uint4 staged_w[];
  __shared__ float partial[kWarps][2][NT][32][4];
  const int o0 = blockIdx.x * 16;
  tile_sums<T, NT, 2>(x, n, gate_up, in, {o0, inter + o0}, partial, staged_w, staged);
  const auto product = [&](int k, int t, int c) { return product_value<T>(tile_sum<NT, 2>(partial, k, t, c)); };
  for (int i = threadIdx.x; i < tokens * 16; i += kThreads) {
    const int t = i / 16, c = i % 16;
    float gate = product(0, t, c), up = product(1, t, c);
    if (n > tokens) {
      gate += product(0, t + tokens, c);
      up += product(1, t + tokens, c);
    }
    store_split(silu_times(gate, up), act, act_lo, static_cast<int64_t>(t) * inter + o0 + c);
  }
}

template <typename T, int NT>
void launch(const void* x, int64_t n, const void* w, int64_t out, int64_t in, void* y, bool y_16bit, bool accumulate,
            cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(out / 16));
  const auto* xt = static_cast<const T*>(x);
  const auto* wt = static_cast<const T*>(w);
  const int ni = static_cast<int>(n), oi = static_cast<int>(out), ii = static_cast<int>(in);
  const int staged = staged_rounds<NT>(in);
  const size_t smem = static_cast<size_t>(staged) * kRoundBytes;
  if (y_16bit) {
    launch_dependent(small_gemm_kernel<T, NT, true>, grid, dim3(kThreads), smem, stream, xt, ni, wt, oi, ii, staged, y,
                     accumulate);
  } else {
    launch_dependent(small_gemm_kernel<T, NT, false>, grid, dim3(kThreads), smem, stream, xt, ni, wt, oi, ii, staged, y,
                     accumulate);
  }
  SY_CUDA_CHECK_LAUNCH(small_gemm_kernel);
}

template <typename T>
void launch_for_rows(const void* x, int64_t n, const void* w, int64_t out, int64_t in, void* y, bool y_16bit,
                     bool accumulate, cudaStream_t stream) {
  if (n <= 8) return launch<T, 1>(x, n, w, out, in, y, y_16bit, accumulate, stream);
  launch<T, 2>(x, n, w, out, in, y, y_16bit, accumulate, stream);
}

template <typename T, int NT>
void launch_silu_tiles(const T* x, int n, int tokens, const T* gate_up, int inter, int in, T* act, T* act_lo,
                       cudaStream_t stream) {
  const int staged = staged_rounds<NT>(in);
  launch_dependent(small_gemm_silu_kernel<T, NT>, dim3(static_cast<unsigned>(inter / 16)), dim3(kThreads),
                   static_cast<size_t>(staged) * kRoundBytes, stream, x, n, tokens, gate_up, inter, in, staged, act, act_lo);
  SY_CUDA_CHECK_LAUNCH(small_gemm_silu_kernel);
}

template <typename T>
void launch_silu(const void* x, int64_t n, bool split, const void* gate_up, int64_t inter, int64_t in, void* act,
                 void* act_lo, cudaStream_t stream) {
  const auto* xt = static_cast<const T*>(x);
  const auto* wt = static_cast<const T*>(gate_up);
  const int ni = static_cast<int>(n), tokens = split ? ni / 2 : ni, ii = static_cast<int>(inter),
            ini = static_cast<int>(in);
  auto* a = static_cast<T*>(act);
  auto* a_lo = static_cast<T*>(act_lo);
  if (n <= 8) return launch_silu_tiles<T, 1>(xt, ni, tokens, wt, ii, ini, a, a_lo, stream);
  launch_silu_tiles<T, 2>(xt, ni, tokens, wt, ii, ini, a, a_lo, stream);
}

// The builds that stage (staged_rounds: only the two-tile ones), as cudaFuncSetAttribute takes them.
template <typename T>
std::array<const void*, 3> staging_kernels() {
  return {reinterpret_cast<const void*>(small_gemm_kernel<T, 2, true>),
          reinterpret_cast<const void*>(small_gemm_kernel<T, 2, false>),
          reinterpret_cast<const void*>(small_gemm_silu_kernel<T, 2>)};
}

}  // namespace

void small_gemm_prepare() {
  std::vector<const void*> kernels;
  for (const auto& of_type : {staging_kernels<__nv_bfloat16>(), staging_kernels<__half>()})
    kernels.insert(kernels.end(), of_type.begin(), of_type.end());
  // Staged rounds go beside each build's own (static) shared memory: the largest bounds them all.
  int largest_static = 0;
  for (const void* k : kernels) {
    cudaFuncAttributes attributes{};
    SY_CUDA_CHECK(cudaFuncGetAttributes(&attributes, k));
    largest_static = std::max(largest_static, static_cast<int>(attributes.sharedSizeBytes));
  }
  const int optin = current_device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  const int rounds = std::clamp((optin - largest_static) / kRoundBytes, 0, kMaxStagedRounds);
  for (const void* k : kernels)
    SY_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, rounds * kRoundBytes));
  staged_round_limit = rounds;
}

bool small_gemm_fits(const void* x, int64_t n, const void* w, int64_t out, int64_t in) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return n >= 1 && n <= kSmallGemmRows && out <= kSmallGemmMaxOut && out % 16 == 0 && in % kPiece == 0 &&
         in < (int64_t{1} << 31) && aligned(x) && aligned(w);
}

bool small_gemm_silu_fits(const void* x, int64_t n, bool split, const void* gate_up, int64_t inter, int64_t in) {
  return small_gemm_fits(x, n, gate_up, 2 * inter, in) && inter % 16 == 0 && (!split || n % 2 == 0);
}

void small_gemm(const void* x, int64_t n, const void* w, int64_t out, int64_t in, Half16 dtype, void* y, bool y_16bit,
                bool accumulate, cudaStream_t stream) {
  if (dtype == Half16::BF16) return launch_for_rows<__nv_bfloat16>(x, n, w, out, in, y, y_16bit, accumulate, stream);
  launch_for_rows<__half>(x, n, w, out, in, y, y_16bit, accumulate, stream);
}

void small_gemm_silu(const void* x, int64_t n, bool split, const void* gate_up, int64_t inter, int64_t in,
                     Half16 dtype, void* act, void* act_lo, cudaStream_t stream) {
  if (dtype == Half16::BF16) {
    return launch_silu<__nv_bfloat16>(x, n, split, gate_up, inter, in, act, act_lo, stream);
  }
  launch_silu<__half>(x, n, split, gate_up, inter, in, act, act_lo, stream);
}

}  // namespace sy::cuda
