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
// weight loads goes out before the wait for the kernel before (dependent_launch.cuh).
#include "kernels/cuda/small_gemm.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/attention_tile.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/reduce.cuh"

namespace sy::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kPiece = 32;   // elements of the inner dimension a lane quad covers with one load each
constexpr int kRound = 4;    // pieces a warp loads before it multiplies

template <typename T, int NT, bool OUT16>
__global__ void __launch_bounds__(kThreads) small_gemm_kernel(const T* __restrict__ x, int n, const T* __restrict__ w,
                                                              int out, int in, void* y, bool accumulate) {
  allow_dependent_launch();
  __shared__ float partial[kWarps][NT][32][4];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, row8 = lane >> 2, quad = lane & 3;
  const int o0 = blockIdx.x * 16;
  const int pieces = in / kPiece;
  const T* w0 = w + static_cast<int64_t>(o0 + row8) * in + 8 * quad;
  const T* w1 = w0 + 8 * static_cast<int64_t>(in);
  const T* xr[NT];
  bool has[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int t = nt * 8 + row8;
    has[nt] = t < n;
    xr[nt] = x + static_cast<int64_t>(has[nt] ? t : 0) * in + 8 * quad;
  }
  const uint4 zero = make_uint4(0, 0, 0, 0);
  float acc[NT][4] = {};
  uint4 a0[kRound], a1[kRound];
  const auto load_weights = [&](int first) {
#pragma unroll
    for (int u = 0; u < kRound; ++u) {
      const int p = first + u * kWarps;
      a0[u] = p < pieces ? __ldg(reinterpret_cast<const uint4*>(w0 + p * kPiece)) : zero;
      a1[u] = p < pieces ? __ldg(reinterpret_cast<const uint4*>(w1 + p * kPiece)) : zero;
    }
  };
  load_weights(warp);  // reads nothing an earlier kernel writes
  wait_for_prior_kernels();
  for (int first = warp;;) {
    uint4 b[kRound][NT];
#pragma unroll
    for (int u = 0; u < kRound; ++u) {
      const int p = first + u * kWarps;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        b[u][nt] = p < pieces && has[nt] ? *reinterpret_cast<const uint4*>(xr[nt] + p * kPiece) : zero;
      }
    }
#pragma unroll
    for (int u = 0; u < kRound; ++u) {
      if (first + u * kWarps >= pieces) break;
#pragma unroll
      for (int s = 0; s < 2; ++s) {
        const uint32_t af[4] = {word_of(a0[u], 2 * s), word_of(a1[u], 2 * s), word_of(a0[u], 2 * s + 1),
                                word_of(a1[u], 2 * s + 1)};
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mma_16816<T>(acc[nt], af, word_of(b[u][nt], 2 * s), word_of(b[u][nt], 2 * s + 1));
      }
    }
    first += kRound * kWarps;
    if (first >= pieces) break;
    load_weights(first);
  }

  // The warps' sums, added in warp order. Fragment element e of lane l is row (l / 4) + 8(e / 2)
  // of the tile and row 2(l % 4) + e % 2 of the 8-row x tile.
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) partial[warp][nt][lane][e] = acc[nt][e];
  __syncthreads();
  for (int i = threadIdx.x; i < NT * 128; i += kThreads) {
    const int nt = i / 128, l = (i / 4) % 32, e = i % 4;
    const int t = nt * 8 + 2 * (l & 3) + (e & 1);
    if (t >= n) continue;
    float v = 0.0f;
#pragma unroll
    for (int k = 0; k < kWarps; ++k) v += partial[k][nt][l][e];
    const int64_t at = static_cast<int64_t>(t) * out + o0 + (l >> 2) + 8 * (e >> 1);
    if constexpr (OUT16) {
      static_cast<T*>(y)[at] = from_f32<T>(v);
    } else {
      float* yf = static_cast<float*>(y);
      yf[at] = accumulate ? yf[at] + v : v;
    }
  }
}

template <typename T, int NT>
void launch(const void* x, int64_t n, const void* w, int64_t out, int64_t in, void* y, bool y_16bit, bool accumulate,
            cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(out / 16));
  const auto* xt = static_cast<const T*>(x);
  const auto* wt = static_cast<const T*>(w);
  const int ni = static_cast<int>(n), oi = static_cast<int>(out), ii = static_cast<int>(in);
  if (y_16bit) {
    launch_dependent(small_gemm_kernel<T, NT, true>, grid, dim3(kThreads), 0, stream, xt, ni, wt, oi, ii, y, accumulate);
  } else {
    launch_dependent(small_gemm_kernel<T, NT, false>, grid, dim3(kThreads), 0, stream, xt, ni, wt, oi, ii, y, accumulate);
  }
  SY_CUDA_CHECK_LAUNCH(small_gemm_kernel);
}

template <typename T>
void launch_for_rows(const void* x, int64_t n, const void* w, int64_t out, int64_t in, void* y, bool y_16bit,
                     bool accumulate, cudaStream_t stream) {
  if (n <= 8) return launch<T, 1>(x, n, w, out, in, y, y_16bit, accumulate, stream);
  launch<T, 2>(x, n, w, out, in, y, y_16bit, accumulate, stream);
}

}  // namespace

bool small_gemm_fits(const void* x, int64_t n, const void* w, int64_t out, int64_t in) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return n >= 1 && n <= kSmallGemmRows && out <= kSmallGemmMaxOut && out % 16 == 0 && in % kPiece == 0 &&
         in < (int64_t{1} << 31) && aligned(x) && aligned(w);
}

void small_gemm(const void* x, int64_t n, const void* w, int64_t out, int64_t in, Half16 dtype, void* y, bool y_16bit,
                bool accumulate, cudaStream_t stream) {
  if (dtype == Half16::BF16) return launch_for_rows<__nv_bfloat16>(x, n, w, out, in, y, y_16bit, accumulate, stream);
  launch_for_rows<__half>(x, n, w, out, in, y, y_16bit, accumulate, stream);
}

}  // namespace sy::cuda
