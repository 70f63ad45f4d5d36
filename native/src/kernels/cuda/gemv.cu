// y[n, out] = x[n, in] · wᵀ for a handful of rows (decode at small batch), where cuBLAS's
// tiled kernels launch too few blocks to stream the weights at full bandwidth. The input can be
// produced by a fused prologue: RMSNorm of (residual + delta), or SiLU(gate) * up; it is rounded
// to the model's 16-bit type like the cuBLAS path's (see round16). Each block stages its fp32 input rows in
// shared memory once, then loops over its share of the output rows; `ws` warps share one output
// row (split over `in`) so that the 1024-row projections still put enough loads in flight.
// Launched as a programmatic dependent, a block loads its first weights before waiting for the
// kernel that makes its input. fp32 accumulation throughout.
#include <algorithm>
#include <cstdlib>
#include <string>

#include "kernels/cuda/activation.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/reduce.cuh"

namespace sy::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kUnroll = 4;  // 16-byte weight loads in flight per warp per round

int current_device_attribute(cudaDeviceAttr attribute) {
  int device = 0, value = 0;
  SY_CUDA_CHECK(cudaGetDevice(&device));
  SY_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));
  return value;
}

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
    const char* v = std::getenv("SWITCHYARD_CUDA_GEMV_BLOCKS_PER_SM");
    const int n = v ? std::atoi(v) : 0;
    return n >= 1 && n <= 8 ? n : 3;
  }();
  return per_sm;
}

int max_smem() {
  static const int bytes = current_device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  return bytes;
}

// The input rounded to the model's 16-bit type (or to hi + lo, where that GEMM's input is
// split), exactly as the cuBLAS path's inputs are (add_rmsnorm, silu_mul, to_half compute the
// same expressions): a decode row then gets the same
// logits up to summation order whether its step runs here or through cuBLAS (a step mixed with
// prefill tokens), so seeded sampling does not depend on what shares the batch. Keeping the
// input in fp32 passed the tiny-Qwen3 comparison but broke that test (bench/CUDA_NOTES.md).
template <typename T>
__device__ __forceinline__ float round16(float v, bool split) {
  const float hi = to_f32(from_f32<T>(v));
  return split ? hi + to_f32(from_f32<T>(v - hi)) : hi;  // hi + lo is exact in fp32
}

// Input elements a thread of the prologue holds in registers: one row of up to kStaged * kThreads
// (3072) elements is staged with every load of a pass issued before any is used, so a pass costs
// one L2 round trip instead of one per element a thread takes (stage_input_rows below, whose
// loads the compiler keeps in order around the shared-memory stores). Thread tid takes elements
// tid, tid + kThreads, ... in both, so the sums (the norm's ss) add in the same order as
// add_rmsnorm's.
constexpr int kStaged = 12;

template <typename T>
__device__ __forceinline__ void stage_input_row(const GemvInput& x, int in, float* dst, float* scratch) {
  const int tid = threadIdx.x;
  if (x.mode == GemvInput::kNorm) {
    const int64_t src = (x.rows ? x.rows[0] : 0) * static_cast<int64_t>(in);
    const float* __restrict__ xr = x.x + src;
    const float* __restrict__ dr = x.delta ? x.delta + src : nullptr;
    const float* __restrict__ wr = x.weight;
    float v[kStaged], d[kStaged];
#pragma unroll
    for (int j = 0; j < kStaged; ++j) {
      const int i = tid + j * kThreads;
      if (i < in) {
        v[j] = xr[i];
        d[j] = dr ? dr[i] : 0.0f;
      }
    }
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < kStaged; ++j) {
      const int i = tid + j * kThreads;
      if (i < in) {
        if (dr) v[j] += d[j];
        ss += v[j] * v[j];
      }
    }
    if (x.x_out && blockIdx.x == 0) {
#pragma unroll
      for (int j = 0; j < kStaged; ++j)
        if (tid + j * kThreads < in) x.x_out[src + tid + j * kThreads] = v[j];
    }
    // The norm weight after the reduction, all loads at once (a second round trip): loaded with
    // x and delta it would stay live across the reduction, in registers the preloaded first
    // weights need too (not measured the other way).
    float w[kStaged];
#pragma unroll
    for (int j = 0; j < kStaged; ++j) {
      const int i = tid + j * kThreads;
      if (i < in) w[j] = wr[i];
    }
    ss = block_sum(ss, scratch);
    const float inv = rsqrtf(ss / static_cast<float>(in) + x.eps);
#pragma unroll
    for (int j = 0; j < kStaged; ++j) {
      const int i = tid + j * kThreads;
      if (i < in) dst[i] = round16<T>(w[j] * (v[j] * inv), x.split);
    }
  } else if (x.mode == GemvInput::kSilu) {
    const float* __restrict__ g = x.x;
    float a[kStaged], u[kStaged];
#pragma unroll
    for (int j = 0; j < kStaged; ++j) {
      const int i = tid + j * kThreads;
      if (i < in) {
        a[j] = g[i];
        u[j] = g[in + i];
      }
    }
#pragma unroll
    for (int j = 0; j < kStaged; ++j) {
      const int i = tid + j * kThreads;
      if (i < in) dst[i] = round16<T>(silu_times(a[j], u[j]), x.split);
    }
  } else {
    const float* __restrict__ src = x.x;
    float v[kStaged];
#pragma unroll
    for (int j = 0; j < kStaged; ++j) {
      const int i = tid + j * kThreads;
      if (i < in) v[j] = src[i];
    }
#pragma unroll
    for (int j = 0; j < kStaged; ++j) {
      const int i = tid + j * kThreads;
      if (i < in) dst[i] = round16<T>(v[j], x.split);
    }
  }
}

// The prologue for NT rows at once (and for one row longer than kStaged * kThreads): thread tid
// takes elements tid, tid + kThreads, ... of every row, the rows' loads of an element issued
// together, and the NT norms reduced with one barrier pair. Taking the rows one after another
// instead costs NT rounds of loads and reductions, which at 8 rows made the gemv slower than
// cuBLAS.
template <typename T, int NT>
__device__ __forceinline__ void stage_input_rows(const GemvInput& x, int in, float* xs, float* scratch) {
  const int tid = threadIdx.x;
  if (x.mode == GemvInput::kNorm) {
    int64_t src[NT];
    float ss[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      src[t] = (x.rows ? x.rows[t] : t) * static_cast<int64_t>(in);
      ss[t] = 0.0f;
    }
    for (int i = tid; i < in; i += kThreads) {
      float v[NT];
#pragma unroll
      for (int t = 0; t < NT; ++t) v[t] = x.x[src[t] + i];
      if (x.delta) {
        float d[NT];
#pragma unroll
        for (int t = 0; t < NT; ++t) d[t] = x.delta[src[t] + i];
#pragma unroll
        for (int t = 0; t < NT; ++t) v[t] += d[t];
      }
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        if (x.x_out && blockIdx.x == 0) x.x_out[src[t] + i] = v[t];
        xs[t * in + i] = v[t];
        ss[t] += v[t] * v[t];
      }
    }
    block_sum_n<NT>(ss, scratch);
    float inv[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) inv[t] = rsqrtf(ss[t] / static_cast<float>(in) + x.eps);
    for (int i = tid; i < in; i += kThreads) {
      const float w = x.weight[i];
#pragma unroll
      for (int t = 0; t < NT; ++t) xs[t * in + i] = round16<T>(w * (xs[t * in + i] * inv[t]), x.split);
    }
  } else if (x.mode == GemvInput::kSilu) {
    for (int i = tid; i < in; i += kThreads) {
      float a[NT], u[NT];
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        const float* g = x.x + static_cast<int64_t>(t) * 2 * in;
        a[t] = g[i];
        u[t] = g[in + i];
      }
#pragma unroll
      for (int t = 0; t < NT; ++t) xs[t * in + i] = round16<T>(silu_times(a[t], u[t]), x.split);
    }
  } else {
    for (int i = tid; i < in; i += kThreads) {
      float v[NT];
#pragma unroll
      for (int t = 0; t < NT; ++t) v[t] = x.x[static_cast<int64_t>(t) * in + i];
#pragma unroll
      for (int t = 0; t < NT; ++t) xs[t * in + i] = round16<T>(v[t], x.split);
    }
  }
}

template <int NT>
constexpr int rows_per_warp() {
  return NT <= 2 ? 1 : 4;
}

template <typename T, int NT, int R = rows_per_warp<NT>()>
__global__ void __launch_bounds__(kThreads) gemv_kernel(GemvInput x, const T* w, int out, int in, int ws, float* y) {
  extern __shared__ __align__(16) float xs[];  // [NT][in]
  __shared__ float scratch[32 * NT];
  __shared__ float partial[kWarps][R * NT];
  const int tid = threadIdx.x;
  const int warp = tid >> 5, lane = tid & 31;
  const int rows_per_block = kWarps / ws * R, sub = warp % ws;
  constexpr int KU = kUnroll / R;  // k steps per round; KU * R weight loads in flight per lane
  const int step = 256 * ws;
  // One round of weight loads: rows row..row+R-1, k = k0 + u * step.
  auto load_round = [&](int row, int k0, uint4 (&wv)[KU][R]) {
#pragma unroll
    for (int u = 0; u < KU; ++u) {
      const int k = k0 + u * step;
#pragma unroll
      for (int q = 0; q < R; ++q)
        if (k < in && row + q < out)
          wv[u][q] = __ldcs(reinterpret_cast<const uint4*>(w + static_cast<int64_t>(row + q) * in + k));  // streamed once
    }
  };
  // Launched as a programmatic dependent (dependent_launch.cuh): the next kernel may start now,
  // and this one's first round of weights (which no kernel writes) is loaded while the previous
  // kernel finishes; its input is read only after the wait.
  allow_dependent_launch();
  uint4 first[KU][R];
  load_round(blockIdx.x * rows_per_block + warp / ws * R, (sub * 32 + lane) * 8, first);
  wait_for_prior_kernels();
  // Prologue: the NT fp32 input rows into shared memory. Staged in registers only for one row,
  // where the prologue dominates: from two rows on the main loop needs the registers (ptxas then
  // spills it).
  if (NT == 1 && in <= kStaged * kThreads) {
    stage_input_row<T>(x, in, xs, scratch);
  } else {
    stage_input_rows<T, NT>(x, in, xs, scratch);
  }
  __syncthreads();

  // Each warp takes R output rows at once, so one shared-memory read of x serves R weight loads
  // (with 8 input rows, x reads rather than HBM would bound a warp that takes one row).
  bool first_round = true;
  for (int row0 = blockIdx.x * rows_per_block; row0 < out; row0 += gridDim.x * rows_per_block) {
    const int row = row0 + warp / ws * R;  // this warp's first row
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
            for (int e = 0; e < 8; ++e) wf[q][e] = row + q < out ? to_f32(wh[e]) : 0.0f;
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
        for (int q = 0; q < R; ++q)
          if (row + q < out)
#pragma unroll
            for (int t = 0; t < NT; ++t) y[static_cast<int64_t>(t) * out + row + q] = acc[q][t];
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
    if (sub == 0 && lane < R * NT && row + lane / NT < out) {
      float s = 0.0f;
      for (int j = 0; j < ws; ++j) s += partial[warp + j][lane];
      y[static_cast<int64_t>(lane % NT) * out + row + lane / NT] = s;
    }
    __syncthreads();
  }
}

// The dynamic shared memory a launch may ask for: the opt-in maximum less the static part.
constexpr int kStaticSmemMargin = 4096;

template <typename T, int NT>
void allow_smem() {
  static bool attribute_set = false;  // per instantiation; gemv_prepare sets it before any capture
  if (attribute_set) return;
  SY_CUDA_CHECK(cudaFuncSetAttribute(gemv_kernel<T, NT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     max_smem() - kStaticSmemMargin));
  attribute_set = true;
}

template <typename T, int NT>
void launch(const GemvInput& x, const T* w, int out, int in, float* y, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(NT) * in * sizeof(float);
  allow_smem<T, NT>();
  // Enough blocks for a few per SM, at most one row per warp; fewer rows than that: split `in`.
  const int target = blocks_per_sm() * num_sms();
  constexpr int R = rows_per_warp<NT>();
  // ws depends on the shape alone, not on NT: a row's sum has the same order at any batch size.
  int ws = 1;
  while (ws < kWarps && (out * ws) / kWarps < target && in / (256 * ws) >= 2) ws *= 2;
  const int rows_per_block = kWarps / ws * R;
  const int blocks = std::min((out + rows_per_block - 1) / rows_per_block, target);
  launch_dependent(gemv_kernel<T, NT>, dim3(blocks), dim3(kThreads), smem, stream, x, w, out, in, ws, y);
  SY_CUDA_CHECK_LAUNCH(gemv_kernel);
}

}  // namespace

bool gemv_fits(int n, int in) {
  return n >= 1 && n <= 8 && in % 8 == 0 &&
         static_cast<size_t>(n) * in * sizeof(float) <= static_cast<size_t>(max_smem() - kStaticSmemMargin);
}

template <typename T>
void gemv_prepare() {
  allow_smem<T, 1>();
  allow_smem<T, 2>();
  allow_smem<T, 3>();
  allow_smem<T, 4>();
  allow_smem<T, 5>();
  allow_smem<T, 6>();
  allow_smem<T, 7>();
  allow_smem<T, 8>();
}

template <typename T>
void gemv(const GemvInput& x, int n, const T* w, int out, int in, float* y, cudaStream_t stream) {
  if (!gemv_fits(n, in)) throw CudaError("gemv: " + std::to_string(n) + " rows of " + std::to_string(in) + " do not fit");
  switch (n) {
    case 1: return launch<T, 1>(x, w, out, in, y, stream);
    case 2: return launch<T, 2>(x, w, out, in, y, stream);
    case 3: return launch<T, 3>(x, w, out, in, y, stream);
    case 4: return launch<T, 4>(x, w, out, in, y, stream);
    case 5: return launch<T, 5>(x, w, out, in, y, stream);
    case 6: return launch<T, 6>(x, w, out, in, y, stream);
    case 7: return launch<T, 7>(x, w, out, in, y, stream);
    default: return launch<T, 8>(x, w, out, in, y, stream);
  }
}

template void gemv_prepare<__nv_bfloat16>();
template void gemv_prepare<__half>();
template void gemv<__nv_bfloat16>(const GemvInput&, int, const __nv_bfloat16*, int, int, float*, cudaStream_t);
template void gemv<__half>(const GemvInput&, int, const __half*, int, int, float*, cudaStream_t);

}  // namespace sy::cuda
