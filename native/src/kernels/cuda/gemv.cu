// y[n, out] = x[n, in] · wᵀ for a handful of rows (decode at small batch), where cuBLAS's
// tiled kernels launch too few blocks to stream the weights at full bandwidth. The input can be
// produced by a fused prologue: RMSNorm of (residual + delta), or SiLU(gate) * up; it is rounded
// to the model's 16-bit type like the cuBLAS path's (see round16). Each block stages its fp32 input rows in
// shared memory once, then loops over its share of the output rows; `ws` warps share one output
// row (split over `in`) so that the 1024-row projections still put enough loads in flight.
// Launched as a programmatic dependent, a block loads its first weights before waiting for the
// kernel that makes its input, and asks L2 for the next rounds' (prefetch_rounds). fp32
// accumulation throughout.
#include <algorithm>
#include <string>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/gemv_prologue.cuh"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/reduce.cuh"

namespace sy::cuda {
namespace {

constexpr int kThreads = kGemvThreads;
constexpr int kWarps = kThreads / 32;
constexpr int kUnroll = 4;  // 16-byte weight loads in flight per warp per round

int num_sms() {
  static const int sms = current_device_attribute(cudaDevAttrMultiProcessorCount);
  return sms;
}

// Blocks per SM a launch aims at (SWITCHYARD_CUDA_GEMV_BLOCKS_PER_SM, 1-8, default 3). Every
// block runs the prologue over the whole input row, so fewer blocks do less redundant work but
// put fewer weight loads in flight. H200, batch-1 decode step with dependent launches: 1 per SM
// 1.388 ms, 2 1.044, 3 0.986 (without them: 1 1.274, 2 1.076, 4 1.096).
int blocks_per_sm() {
  static const int per_sm = [] {
    const int n = env_int("SWITCHYARD_CUDA_GEMV_BLOCKS_PER_SM").value_or(0);
    return n >= 1 && n <= 8 ? n : 3;
  }();
  return per_sm;
}

// Rounds after the first whose weights a warp asks L2 for before its wait
// (SWITCHYARD_CUDA_GEMV_AHEAD, 0-8, default 2). At batch 1, 116 of qkv's, o's and down's 396 blocks
// take a second pass over the rows and gate_up a second round over `in`; that round's loads, issued
// after the input was staged, then came from HBM. H200, same call, 0 / 1 / 2: bfloat16 batch 1
// 0.890-0.894 / 0.873-0.883 / 0.867-0.871 ms, float16 0.907-0.918 / 0.878-0.892 / 0.879-0.880
// (bench/CUDA_NOTES.md, "Session 19"). Copying those rounds into shared memory instead took a
// rewritten loop that compiled slower than this one.
int prefetch_rounds() {
  static const int rounds = std::clamp(env_int("SWITCHYARD_CUDA_GEMV_AHEAD").value_or(2), 0, 8);
  return rounds;
}

int max_smem() {
  static const int bytes = current_device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  return bytes;
}

// Output rows a warp makes (gate/up pairs for SILU: silu_pairs_per_warp). One shared-memory read
// of an input element serves that many weight loads. At 2 input rows, 2 rows a warp instead of 1:
// batch 2 -14 to -15% (H200, bench/CUDA_NOTES.md, "Session 16"); a row's sum keeps its order.
template <int NT>
constexpr int rows_per_warp() {
  return NT == 1 ? 1 : NT == 2 ? 2 : 4;
}
template <int NT>
constexpr int silu_pairs_per_warp() {
  return NT == 1 ? 1 : 2;
}

// SILU: w is gate_up ([2 out][in]) and y[t][j] = silu(gate) * up of rows j and out + j, each
// product rounded as a cuBLAS step stores it (product_value), so that the down projection's input
// needs no SiLU·up prologue. A warp's R weight rows are then R / 2 such pairs; every row is summed
// in the order of the plain kernel over 2 out rows (same `ws`, same k split), so both give the
// same gate and up values.
// `ahead`: rounds after the first whose weights a warp asks L2 for before its wait.
template <typename T, int NT, bool SILU = false, int R = SILU ? 2 * silu_pairs_per_warp<NT>() : rows_per_warp<NT>()>
__global__ void __launch_bounds__(kThreads)
    gemv_kernel(GemvInput x, const T* w, int out, int in, int ws, int ahead, float* y) {
  extern __shared__ __align__(16) float xs[];  // [NT][in]
  __shared__ float scratch[32 * NT];
  __shared__ float partial[kWarps][R * NT];
  constexpr int RO = SILU ? R / 2 : R;  // output rows a warp makes
  const int tid = threadIdx.x;
  const int warp = tid >> 5, lane = tid & 31;
  const int rows_per_block = kWarps / ws * RO, sub = warp % ws;
  constexpr int KU = kUnroll / R;  // k steps per round; KU * R weight loads in flight per lane
  const int step = 256 * ws;
  // Weight row q of a warp whose first output row is `row`, and whether it exists.
  const auto weight_row = [out](int row, int q) { return SILU && q >= RO ? out + row + q - RO : row + q; };
  const auto has_row = [out](int row, int q) { return row + (SILU ? q % RO : q) < out; };
  // One round of weight loads: the warp's R rows, k = k0 + u * step.
  auto load_round = [&](int row, int k0, uint4 (&wv)[KU][R]) {
#pragma unroll
    for (int u = 0; u < KU; ++u) {
      const int k = k0 + u * step;
#pragma unroll
      for (int q = 0; q < R; ++q)
        if (k < in && has_row(row, q))
          wv[u][q] = __ldcs(reinterpret_cast<const uint4*>(w + static_cast<int64_t>(weight_row(row, q)) * in + k));  // streamed once
    }
  };
  // An output value from its weight row's sum (SILU: from its gate and up rows' sums).
  const auto finish = [](float sum, float up_sum) {
    if constexpr (SILU) {
      return silu_times(product_value<T>(sum), product_value<T>(up_sum));
    } else {
      return sum;
    }
  };
  // Launched as a programmatic dependent (dependent_launch.cuh): the next kernel may start now,
  // and this one's first round of weights (which no kernel writes) is loaded while the previous
  // kernel finishes; its input is read only after the wait.
  allow_dependent_launch();
  uint4 first[KU][R];
  load_round(blockIdx.x * rows_per_block + warp / ws * RO, (sub * 32 + lane) * 8, first);
  // A prefetch holds no register, so the loop below stays as it was (see prefetch_rounds).
  if (ahead > 0) {
    int round = 0;
    for (int row0 = blockIdx.x * rows_per_block; row0 < out && round <= ahead; row0 += gridDim.x * rows_per_block)
      for (int k0 = (sub * 32 + lane) * 8; k0 < in && round <= ahead; k0 += KU * step, ++round)
        if (round > 0)
          for (int u = 0; u < KU; ++u)
            for (int q = 0; q < R; ++q) {
              const int row = row0 + warp / ws * RO, k = k0 + u * step;
              if (k < in && has_row(row, q))
                asm volatile("prefetch.global.L2 [%0];" ::"l"(w + static_cast<int64_t>(weight_row(row, q)) * in + k));
            }
  }
  wait_for_prior_kernels();
  stage_gemv_input<T, NT>(x, in, xs, scratch);

  // Each warp takes R output rows at once, so one shared-memory read of x serves R weight loads
  // (with 8 input rows, x reads rather than HBM would bound a warp that takes one row).
  bool first_round = true;
  for (int row0 = blockIdx.x * rows_per_block; row0 < out; row0 += gridDim.x * rows_per_block) {
    const int row = row0 + warp / ws * RO;  // this warp's first output row
    float acc[R][NT];
#pragma unroll
    for (int q = 0; q < R; ++q)
#pragma unroll
      for (int t = 0; t < NT; ++t) acc[q][t] = 0.0f;
    for (int k0 = (sub * 32 + lane) * 8; k0 < in; k0 += KU * step) {
      uint4 wv[KU][R];
      if (first_round) {
#pragma unroll
        for (int u = 0; u < KU; ++u)
#pragma unroll
          for (int q = 0; q < R; ++q) wv[u][q] = first[u][q];
        first_round = false;
      } else {
        load_round(row, k0, wv);
      }
#pragma unroll
      for (int u = 0; u < KU; ++u) {
        const int k = k0 + u * step;
        if (k < in) {
          float wf[R][8];
#pragma unroll
          for (int q = 0; q < R; ++q) {
            const T* wh = reinterpret_cast<const T*>(&wv[u][q]);
#pragma unroll
            for (int e = 0; e < 8; ++e) wf[q][e] = has_row(row, q) ? to_f32(wh[e]) : 0.0f;
          }
#pragma unroll
          for (int t = 0; t < NT; ++t) {
            const float4 a = *reinterpret_cast<const float4*>(xs + t * in + k);
            const float4 b = *reinterpret_cast<const float4*>(xs + t * in + k + 4);
#pragma unroll
            for (int q = 0; q < R; ++q) {
              // Spelled out so every instantiation sums a row in the same order (batch invariance).
              float d = __fmul_rn(wf[q][0], a.x);
              d = __fmaf_rn(wf[q][1], a.y, d);
              d = __fmaf_rn(wf[q][2], a.z, d);
              d = __fmaf_rn(wf[q][3], a.w, d);
              d = __fmaf_rn(wf[q][4], b.x, d);
              d = __fmaf_rn(wf[q][5], b.y, d);
              d = __fmaf_rn(wf[q][6], b.z, d);
              d = __fmaf_rn(wf[q][7], b.w, d);
              acc[q][t] = __fadd_rn(acc[q][t], d);
            }
          }
        }
      }
    }
#pragma unroll
    for (int q = 0; q < R; ++q)
#pragma unroll
      for (int t = 0; t < NT; ++t) acc[q][t] = warp_sum(acc[q][t]);
    if (ws == 1) {
      if (lane == 0) {
#pragma unroll
        for (int q = 0; q < RO; ++q)
          if (row + q < out)
#pragma unroll
            for (int t = 0; t < NT; ++t)
              y[static_cast<int64_t>(t) * out + row + q] = finish(acc[q][t], acc[SILU ? q + RO : q][t]);
      }
      continue;
    }
    if (lane == 0) {
#pragma unroll
      for (int q = 0; q < R; ++q)
#pragma unroll
        for (int t = 0; t < NT; ++t) partial[warp][q * NT + t] = acc[q][t];
    }
    __syncthreads();
    if (sub == 0 && lane < RO * NT && row + lane / NT < out) {
      const auto over_warps = [&](int i) {
        float s = 0.0f;
        for (int j = 0; j < ws; ++j) s += partial[warp + j][i];
        return s;
      };
      const float sum = over_warps(lane);
      y[static_cast<int64_t>(lane % NT) * out + row + lane / NT] = finish(sum, SILU ? over_warps(lane + RO * NT) : 0.0f);
    }
    __syncthreads();
  }
}

// The dynamic shared memory a launch may ask for: the opt-in maximum less the static part.
constexpr int kStaticSmemMargin = 4096;

template <typename T, int NT, bool SILU>
void allow_smem() {
  static bool attribute_set = false;  // per instantiation; gemv_prepare sets it before any capture
  if (attribute_set) return;
  SY_CUDA_CHECK(cudaFuncSetAttribute(gemv_kernel<T, NT, SILU>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     max_smem() - kStaticSmemMargin));
  attribute_set = true;
}

// out: output rows (SILU: gate/up pairs, the weights holding 2 out rows).
template <typename T, int NT, bool SILU>
void launch(const GemvInput& x, const T* w, int out, int in, float* y, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(NT) * in * sizeof(float);
  allow_smem<T, NT, SILU>();
  const int target = blocks_per_sm() * num_sms();
  constexpr int RO = SILU ? silu_pairs_per_warp<NT>() : rows_per_warp<NT>();
  const int ws = gemv_warps_per_row(SILU ? 2 * out : out, in);
  const int rows_per_block = kWarps / ws * RO;
  const int blocks = std::min((out + rows_per_block - 1) / rows_per_block, target);
  launch_dependent(gemv_kernel<T, NT, SILU>, dim3(blocks), dim3(kThreads), smem, stream, x, w, out, in, ws,
                   prefetch_rounds(), y);
  SY_CUDA_CHECK_LAUNCH(gemv_kernel);
}

template <typename T, bool SILU>
void launch_rows(const GemvInput& x, int n, const T* w, int out, int in, float* y, cudaStream_t stream) {
  switch (n) {
    case 1: return launch<T, 1, SILU>(x, w, out, in, y, stream);
    case 2: return launch<T, 2, SILU>(x, w, out, in, y, stream);
    case 3: return launch<T, 3, SILU>(x, w, out, in, y, stream);
    case 4: return launch<T, 4, SILU>(x, w, out, in, y, stream);
    case 5: return launch<T, 5, SILU>(x, w, out, in, y, stream);
    case 6: return launch<T, 6, SILU>(x, w, out, in, y, stream);
    case 7: return launch<T, 7, SILU>(x, w, out, in, y, stream);
    default: return launch<T, 8, SILU>(x, w, out, in, y, stream);
  }
}

template <typename T, bool SILU>
void allow_smem_all() {
  allow_smem<T, 1, SILU>();
  allow_smem<T, 2, SILU>();
  allow_smem<T, 3, SILU>();
  allow_smem<T, 4, SILU>();
  allow_smem<T, 5, SILU>();
  allow_smem<T, 6, SILU>();
  allow_smem<T, 7, SILU>();
  allow_smem<T, 8, SILU>();
}

}  // namespace

int gemv_warps_per_row(int out, int in) {
  // Enough blocks for a few per SM, at most one row per warp; fewer rows than that: split `in`.
  // It depends on the shape alone, not on the number of input rows: a row's sum has the same
  // order at any batch size.
  const int target = blocks_per_sm() * num_sms();
  int ws = 1;
  while (ws < kWarps && (out * ws) / kWarps < target && in / (256 * ws) >= 2) ws *= 2;
  return ws;
}

bool gemv_fits(int n, int in) {
  return n >= 1 && n <= 8 && in % 8 == 0 &&
         static_cast<size_t>(n) * in * sizeof(float) <= static_cast<size_t>(max_smem() - kStaticSmemMargin);
}

template <typename T>
void gemv_prepare() {
  allow_smem_all<T, false>();
  allow_smem_all<T, true>();
}

template <typename T>
void gemv(const GemvInput& x, int n, const T* w, int out, int in, float* y, cudaStream_t stream) {
  if (!gemv_fits(n, in)) throw CudaError("gemv: " + std::to_string(n) + " rows of " + std::to_string(in) + " do not fit");
  launch_rows<T, false>(x, n, w, out, in, y, stream);
}

template <typename T>
void gemv_silu(const GemvInput& x, int n, const T* gate_up, int inter, int in, float* act, cudaStream_t stream) {
  if (!gemv_fits(n, in)) throw CudaError("gemv: " + std::to_string(n) + " rows of " + std::to_string(in) + " do not fit");
  launch_rows<T, true>(x, n, gate_up, inter, in, act, stream);
}

template void gemv_prepare<__nv_bfloat16>();
template void gemv_prepare<__half>();
template void gemv<__nv_bfloat16>(const GemvInput&, int, const __nv_bfloat16*, int, int, float*, cudaStream_t);
template void gemv<__half>(const GemvInput&, int, const __half*, int, int, float*, cudaStream_t);
template void gemv_silu<__nv_bfloat16>(const GemvInput&, int, const __nv_bfloat16*, int, int, float*, cudaStream_t);
template void gemv_silu<__half>(const GemvInput&, int, const __half*, int, int, float*, cudaStream_t);

}  // namespace sy::cuda
