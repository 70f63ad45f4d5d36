// y[n, out] = x[n, in] · wᵀ for a handful of rows (decode at small batch), where cuBLAS's
// tiled kernels launch too few blocks to stream the weights at full bandwidth. One warp per
// output row reads the weight row once with 16-byte loads and applies it to all n rows of x
// (x stays in L1/L2). Same function as Gemm::run; fp32 accumulation.
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/reduce.cuh"

namespace sy::cuda {
namespace {

constexpr int kWarps = 8;

template <typename T, int NT>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(const T* x, const T* w, int out, int in, float* y) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int row = blockIdx.x * kWarps + warp;
  if (row >= out) return;
  const T* wr = w + static_cast<int64_t>(row) * in;
  float acc[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
#pragma unroll 4
  for (int k = lane * 8; k < in; k += 256) {
    const uint4 wv = *reinterpret_cast<const uint4*>(wr + k);
    const T* wh = reinterpret_cast<const T*>(&wv);
    float wf[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) wf[e] = to_f32(wh[e]);
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const uint4 xv = *reinterpret_cast<const uint4*>(x + static_cast<int64_t>(t) * in + k);
      const T* xh = reinterpret_cast<const T*>(&xv);
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[t] += wf[e] * to_f32(xh[e]);
    }
  }
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = warp_sum(acc[t]);
  if (lane == 0) {
#pragma unroll
    for (int t = 0; t < NT; ++t) y[static_cast<int64_t>(t) * out + row] = acc[t];
  }
}

template <typename T, int NT>
void launch(const T* x, const T* w, int out, int in, float* y, cudaStream_t stream) {
  gemv_kernel<T, NT><<<(out + kWarps - 1) / kWarps, kWarps * 32, 0, stream>>>(x, w, out, in, y);
  SY_CUDA_CHECK_LAUNCH(gemv_kernel);
}

}  // namespace

template <typename T>
bool gemv(const T* x, int n, const T* w, int out, int in, float* y, cudaStream_t stream) {
  if (in % 8 != 0) return false;
  switch (n) {
    case 1: launch<T, 1>(x, w, out, in, y, stream); return true;
    case 2: launch<T, 2>(x, w, out, in, y, stream); return true;
    case 3: launch<T, 3>(x, w, out, in, y, stream); return true;
    case 4: launch<T, 4>(x, w, out, in, y, stream); return true;
    case 5: launch<T, 5>(x, w, out, in, y, stream); return true;
    case 6: launch<T, 6>(x, w, out, in, y, stream); return true;
    case 7: launch<T, 7>(x, w, out, in, y, stream); return true;
    case 8: launch<T, 8>(x, w, out, in, y, stream); return true;
    default: return false;
  }
}

template bool gemv<__nv_bfloat16>(const __nv_bfloat16*, int, const __nv_bfloat16*, int, int, float*, cudaStream_t);
template bool gemv<__half>(const __half*, int, const __half*, int, int, float*, cudaStream_t);

}  // namespace sy::cuda
