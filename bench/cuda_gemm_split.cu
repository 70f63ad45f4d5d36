// What bfloat16's split GEMM inputs cost and what an fp8 lo half would save (bench/CUDA_NOTES.md,
// "Session 12"). For the four prefill projections of the Qwen3-0.6B shape at n rows, times:
//   hi      y = W·hi over n rows (bf16, fp32 out): what an unsplit GEMM costs;
//   stacked y = W·[hi; lo] over 2n rows: what the engine runs now;
//   fp8 lo  W8·lo8 over n rows (e4m3 copies of W and of lo scaled by powers of two, fp32 out);
// and the error of each way against an fp32 product of the unrounded x (relative RMS over y).
//
//   nvcc -std=c++17 -O3 -arch=sm_90a bench/cuda_gemm_split.cu -lcublasLt -lcublas -o /tmp/gemm_split
//   /tmp/gemm_split [--steps 2048,8192]
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cuda_bench.cuh"

using namespace bench;  // NOLINT: the helpers every benchmark here uses

namespace {

struct Projection {
  const char* name;
  int out, in;
};

__device__ float hash_uniform(size_t i, unsigned seed) {
  unsigned h = static_cast<unsigned>(i) * 2654435761u ^ seed;
  h ^= h >> 15;
  h *= 2246822519u;
  h ^= h >> 13;
  h *= 3266489917u;
  h ^= h >> 16;
  return static_cast<float>(h & 0xffffff) / 8388608.0f - 1.0f;  // [-1, 1)
}

// x: activations with a spread of magnitudes, as a norm's output has (per-channel gains 2^-3..2^3).
__global__ void fill_x(float* x, int rows, int in) {
  const size_t n = size_t(rows) * in;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(i % in);
    x[i] = hash_uniform(i, 7u) * exp2f(static_cast<float>((c * 37) % 7) - 3.0f);
  }
}

__global__ void fill_w(__nv_bfloat16* w, float* wf, size_t n, float scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const __nv_bfloat16 v = __float2bfloat16(hash_uniform(i, 11u) * scale);
    w[i] = v;
    wf[i] = __bfloat162float(v);
  }
}

// hi = bf16(x); lo = bf16(x - hi) written after hi's rows (the stacked layout); lo8 = e4m3((x - hi) * 2^s).
__global__ void split(const float* x, size_t n, __nv_bfloat16* hi, __nv_bfloat16* lo, __nv_fp8_e4m3* lo8, float lo_scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const __nv_bfloat16 h = __float2bfloat16(x[i]);
    const float r = x[i] - __bfloat162float(h);
    hi[i] = h;
    lo[i] = __float2bfloat16(r);
    lo8[i] = __nv_fp8_e4m3(r * lo_scale);
  }
}

__global__ void to_fp8(const __nv_bfloat16* w, size_t n, float scale, __nv_fp8_e4m3* w8) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    w8[i] = __nv_fp8_e4m3(__bfloat162float(w[i]) * scale);
}

// One cuBLASLt product y[n, out] (+)= alpha * x[n, in] · w[out, in]ᵀ on the heuristic's first pick.
struct LtGemm {
  cublasLtMatmulDesc_t desc{};
  cublasLtMatrixLayout_t la{}, lb{}, lc{};
  cublasLtMatmulAlgo_t algo{};
  bool ok = false;

  LtGemm(cublasLtHandle_t lt, cudaDataType_t in_type, cudaDataType_t out_type, int out, int in, int n, size_t ws,
         bool fast_accum) {
    blas_ok(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "desc");
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
    if (in_type == CUDA_R_8F_E4M3) {
      const int8_t fast = fast_accum ? 1 : 0;
      cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(fast));
    }
    blas_ok(cublasLtMatrixLayoutCreate(&la, in_type, in, out, in), "la");
    blas_ok(cublasLtMatrixLayoutCreate(&lb, in_type, in, n, in), "lb");
    blas_ok(cublasLtMatrixLayoutCreate(&lc, out_type, out, n, out), "lc");
    cublasLtMatmulPreference_t pref;
    blas_ok(cublasLtMatmulPreferenceCreate(&pref), "pref");
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    cublasLtMatmulHeuristicResult_t r[1];
    int returned = 0;
    const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, 1, r, &returned);
    ok = s == CUBLAS_STATUS_SUCCESS && returned > 0;
    if (ok) algo = r[0].algo;
    cublasLtMatmulPreferenceDestroy(pref);
  }
  void run(cublasLtHandle_t lt, const void* w, const void* x, void* y, float alpha, float beta, void* ws, size_t wsb,
           cudaStream_t stream) const {
    blas_ok(cublasLtMatmul(lt, desc, &alpha, w, la, x, lb, &beta, y, lc, y, lc, &algo, ws, wsb, stream), "matmul");
  }
  ~LtGemm() {
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(desc);
  }
};

double rel_rms(const std::vector<float>& y, const std::vector<float>& ref) {
  double e = 0, r = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    e += (double(y[i]) - ref[i]) * (double(y[i]) - ref[i]);
    r += double(ref[i]) * ref[i];
  }
  return std::sqrt(e / r);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> steps{2048, 8192};
  for (int i = 1; i + 1 < argc; i += 2)
    if (!std::strcmp(argv[i], "--steps")) steps = parse_list(argv[i + 1]);
  const Projection projections[] = {{"qkv", 4096, 1024}, {"o", 1024, 2048}, {"gate_up", 6144, 1024}, {"down", 1024, 3072}};
  const int max_n = *std::max_element(steps.begin(), steps.end());
  constexpr size_t kWorkspace = 32u << 20;
  const size_t max_x = size_t(max_n) * 3072, max_w = size_t(6144) * 3072, max_y = size_t(2 * max_n) * 6144;
  cudaStream_t stream;
  cuda_ok(cudaStreamCreate(&stream), "stream");
  float *x, *wf, *y, *y2, *yref;
  __nv_bfloat16 *xs, *w;
  __nv_fp8_e4m3 *lo8, *w8;
  void* ws;
  cuda_ok(cudaMalloc(&x, max_x * 4), "x");
  cuda_ok(cudaMalloc(&xs, 2 * max_x * 2), "x split");
  cuda_ok(cudaMalloc(&lo8, max_x), "lo8");
  cuda_ok(cudaMalloc(&w, max_w * 2), "w");
  cuda_ok(cudaMalloc(&wf, max_w * 4), "w fp32");
  cuda_ok(cudaMalloc(&w8, max_w), "w8");
  cuda_ok(cudaMalloc(&y, max_y * 4), "y");
  cuda_ok(cudaMalloc(&y2, max_y * 4), "y2");
  cuda_ok(cudaMalloc(&yref, max_y * 4), "yref");
  cuda_ok(cudaMalloc(&ws, kWorkspace), "workspace");
  cublasHandle_t blas;
  blas_ok(cublasCreate(&blas), "cublasCreate");
  blas_ok(cublasSetStream(blas, stream), "stream");
  blas_ok(cublasSetMathMode(blas, CUBLAS_PEDANTIC_MATH), "pedantic");  // a true fp32 reference, no TF32
  cublasLtHandle_t lt;
  blas_ok(cublasLtCreate(&lt), "cublasLtCreate");

  // lo = x - bf16(x) is at most 2^-8 |x|; 2^8 maps |x| up to 448 onto e4m3's range, and smaller
  // values keep 4 significant bits down to |x| ~ 2^-6 (e4m3's subnormals below).
  const float lo_scale = 256.0f;
  std::printf("| proj | n | hi ms | stacked ms | fp8 lo ms | fp8 lo fast-accum ms | fp8 lo +beta ms | hi+fp8 vs stacked | err hi | err stacked | err fp8 lo |\n");
  std::printf("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  for (const Projection& p : projections) {
    const size_t nw = size_t(p.out) * p.in;
    const float w_amp = 1.0f / std::sqrt(static_cast<float>(p.in));
    fill_w<<<1024, 256, 0, stream>>>(w, wf, nw, w_amp);
    // Weights scaled by a power of two that puts their largest magnitude (w_amp) in [224, 448).
    const float w_scale = std::exp2(std::floor(std::log2(448.0f / w_amp)));
    to_fp8<<<1024, 256, 0, stream>>>(w, nw, w_scale, w8);
    const float lo_alpha = 1.0f / (w_scale * lo_scale);
    for (int n : steps) {
      const size_t nx = size_t(n) * p.in, ny = size_t(n) * p.out;
      fill_x<<<1024, 256, 0, stream>>>(x, n, p.in);
      split<<<1024, 256, 0, stream>>>(x, nx, xs, xs + nx, lo8, lo_scale);
      const float one = 1, zero = 0;
      blas_ok(cublasSgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, p.out, n, p.in, &one, wf, p.in, x, p.in, &zero, yref, p.out),
              "sgemm");
      LtGemm hi(lt, CUDA_R_16BF, CUDA_R_32F, p.out, p.in, n, kWorkspace, false);
      LtGemm stacked(lt, CUDA_R_16BF, CUDA_R_32F, p.out, p.in, 2 * n, kWorkspace, false);
      LtGemm f8(lt, CUDA_R_8F_E4M3, CUDA_R_32F, p.out, p.in, n, kWorkspace, false);
      LtGemm f8fast(lt, CUDA_R_8F_E4M3, CUDA_R_32F, p.out, p.in, n, kWorkspace, true);
      if (!hi.ok || !stacked.ok || !f8.ok || !f8fast.ok) {
        std::printf("| %s | %d | no algorithm (hi %d stacked %d fp8 %d fast %d) |\n", p.name, n, hi.ok, stacked.ok, f8.ok,
                    f8fast.ok);
        continue;
      }
      const double flop = 2.0 * n * p.out * p.in;
      const int reps = std::max(5, static_cast<int>(2e12 / flop));
      const float t_hi = time_ms(stream, [&] { hi.run(lt, w, xs, y, 1, 0, ws, kWorkspace, stream); }, reps);
      const float t_st = time_ms(stream, [&] { stacked.run(lt, w, xs, y2, 1, 0, ws, kWorkspace, stream); }, reps);
      const float t_f8 = time_ms(stream, [&] { f8.run(lt, w8, lo8, y + ny, lo_alpha, 0, ws, kWorkspace, stream); }, reps);
      const float t_ff = time_ms(stream, [&] { f8fast.run(lt, w8, lo8, y + ny, lo_alpha, 0, ws, kWorkspace, stream); }, reps);
      const float t_fb = time_ms(stream, [&] { f8.run(lt, w8, lo8, y2 + ny, lo_alpha, 1, ws, kWorkspace, stream); }, reps);
      // Errors, one clean pass of each.
      hi.run(lt, w, xs, y, 1, 0, ws, kWorkspace, stream);
      stacked.run(lt, w, xs, y2, 1, 0, ws, kWorkspace, stream);
      f8.run(lt, w8, lo8, y + ny, lo_alpha, 0, ws, kWorkspace, stream);
      cuda_ok(cudaStreamSynchronize(stream), "run");
      std::vector<float> h_hi(ny), h_st(2 * ny), h_f8(ny), h_ref(ny);
      cuda_ok(cudaMemcpy(h_hi.data(), y, ny * 4, cudaMemcpyDeviceToHost), "d2h");
      cuda_ok(cudaMemcpy(h_f8.data(), y + ny, ny * 4, cudaMemcpyDeviceToHost), "d2h");
      cuda_ok(cudaMemcpy(h_st.data(), y2, 2 * ny * 4, cudaMemcpyDeviceToHost), "d2h");
      cuda_ok(cudaMemcpy(h_ref.data(), yref, ny * 4, cudaMemcpyDeviceToHost), "d2h");
      std::vector<float> sum_st(ny), sum_f8(ny);
      for (size_t i = 0; i < ny; ++i) {
        sum_st[i] = h_st[i] + h_st[ny + i];
        sum_f8[i] = h_hi[i] + h_f8[i];
      }
      std::printf("| %s | %d | %.4f | %.4f | %.4f | %.4f | %.4f | %.2fx | %.2e | %.2e | %.2e |\n", p.name, n, t_hi, t_st,
                  t_f8, t_ff, t_fb, (t_hi + t_f8) / t_st, rel_rms(h_hi, h_ref), rel_rms(sum_st, h_ref),
                  rel_rms(sum_f8, h_ref));
    }
  }
  return 0;
}
