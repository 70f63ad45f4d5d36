// The prefill GEMMs of the Qwen3-0.6B shape through cuBLASLt: for each projection, step size,
// dtype and output type, every algorithm cuBLASLt's heuristic offers, timed, against what
// cublasGemmEx's default picks. Says how much the engine's GEMMs leave on the table and which
// algorithm configurations would take it (bench/CUDA_NOTES.md, "Session 7").
//
//   nvcc -std=c++17 -O3 -arch=sm_90a bench/cuda_gemm_algos.cu -lcublasLt -lcublas -o /tmp/gemm_algos
//   /tmp/gemm_algos [--steps 2048,4096,8192] [--top 3]
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "cuda_bench.cuh"

using namespace bench;  // NOLINT: the helpers every benchmark here uses

namespace {

struct Projection {
  const char* name;
  int out, in;
  bool adds;  // o and down add into the fp32 residual stream (beta = 1)
};

struct Algo {
  cublasLtMatmulAlgo_t algo;
  float ms;
  std::string config;
};

template <typename A>
int attr(const cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoConfigAttributes_t which) {
  A v{};
  size_t written = 0;
  cublasLtMatmulAlgoConfigGetAttribute(&algo, which, &v, sizeof(v), &written);
  return static_cast<int>(v);
}

std::string describe(const cublasLtMatmulAlgo_t& algo) {
  std::ostringstream s;
  s << "id " << attr<int32_t>(algo, CUBLASLT_ALGO_CONFIG_ID) << " tile " << attr<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_TILE_ID)
    << " stages " << attr<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_STAGES_ID) << " splitk "
    << attr<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM) << " red "
    << attr<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME) << " cluster "
    << attr<uint16_t>(algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID) << " swizzle "
    << attr<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING);
  return s.str();
}

// Random values in [-1, 1): constant data draws less power and would flatter the clocks.
template <typename T>
__global__ void fill_random(T* p, size_t n, unsigned seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    unsigned h = static_cast<unsigned>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = T(static_cast<float>(h & 0xffff) / 32768.0f - 1.0f);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> steps{2048, 4096, 8192};
  int top = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--steps")) steps = parse_list(argv[i + 1]);
    if (!std::strcmp(argv[i], "--top")) top = std::atoi(argv[i + 1]);
  }
  const Projection projections[] = {{"qkv", 4096, 1024, false},
                                    {"o", 1024, 2048, true},
                                    {"gate_up", 6144, 1024, false},
                                    {"down", 1024, 3072, true}};
  const int max_n = *std::max_element(steps.begin(), steps.end());
  constexpr size_t kWorkspace = 32u << 20;
  cudaStream_t stream;
  cuda_ok(cudaStreamCreate(&stream), "stream");
  void *x, *w, *y, *ws;
  cuda_ok(cudaMalloc(&x, size_t(max_n) * 6144 * 2), "x");
  cuda_ok(cudaMalloc(&w, size_t(6144) * 6144 * 2), "w");
  cuda_ok(cudaMalloc(&y, size_t(max_n) * 6144 * 4), "y");
  cuda_ok(cudaMalloc(&ws, kWorkspace), "workspace");
  cuda_ok(cudaMemset(y, 0, size_t(max_n) * 6144 * 4), "y init");
  cublasHandle_t blas;
  blas_ok(cublasCreate(&blas), "cublasCreate");
  blas_ok(cublasSetStream(blas, stream), "cublasSetStream");
  blas_ok(cublasSetWorkspace(blas, ws, kWorkspace), "cublasSetWorkspace");
  cublasLtHandle_t lt;
  blas_ok(cublasLtCreate(&lt), "cublasLtCreate");

  std::printf("| dtype | out | proj | n | GemmEx ms | TFLOP/s | heuristic #0 | best ms | TFLOP/s | gain | best config |\n");
  std::printf("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n");
  for (int half = 0; half < 2; ++half) {
    const cudaDataType_t t = half ? CUDA_R_16F : CUDA_R_16BF;
    if (half) {
      fill_random<<<1024, 256, 0, stream>>>(static_cast<__half*>(x), size_t(max_n) * 6144, 1u);
      fill_random<<<1024, 256, 0, stream>>>(static_cast<__half*>(w), size_t(6144) * 6144, 2u);
    } else {
      fill_random<<<1024, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(x), size_t(max_n) * 6144, 1u);
      fill_random<<<1024, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(w), size_t(6144) * 6144, 2u);
    }
    cuda_ok(cudaStreamSynchronize(stream), "fill");
    for (int out16 = 0; out16 < 2; ++out16) {
      for (const Projection& p : projections) {
        if (out16 && p.adds) continue;  // the residual stream stays fp32
        const cudaDataType_t yt = out16 ? t : CUDA_R_32F;
        for (int n : steps) {
          const float alpha = 1, beta = p.adds ? 1.0f : 0.0f;
          const double flop = 2.0 * n * p.out * p.in;
          const int reps = std::max(5, static_cast<int>(2e12 / flop));
          float ex = time_ms(
              stream,
              [&] {
                blas_ok(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, p.out, n, p.in, &alpha, w, t, p.in, x, t, p.in,
                                     &beta, y, yt, p.out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                        "cublasGemmEx");
              },
              reps);
          cublasLtMatmulDesc_t desc;
          blas_ok(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "desc");
          const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
          cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
          cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
          cublasLtMatrixLayout_t la, lb, lc;
          blas_ok(cublasLtMatrixLayoutCreate(&la, t, p.in, p.out, p.in), "la");
          blas_ok(cublasLtMatrixLayoutCreate(&lb, t, p.in, n, p.in), "lb");
          blas_ok(cublasLtMatrixLayoutCreate(&lc, yt, p.out, n, p.out), "lc");
          cublasLtMatmulPreference_t pref;
          blas_ok(cublasLtMatmulPreferenceCreate(&pref), "pref");
          size_t wsb = kWorkspace;
          cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb));
          cublasLtMatmulHeuristicResult_t results[64];
          int returned = 0;
          blas_ok(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, 64, results, &returned), "heuristic");
          std::vector<Algo> algos;
          for (int i = 0; i < returned; ++i) {
            if (results[i].state != CUBLAS_STATUS_SUCCESS) continue;
            const cublasLtMatmulAlgo_t* algo = &results[i].algo;
            float ms = time_ms(
                stream,
                [&] {
                  blas_ok(cublasLtMatmul(lt, desc, &alpha, w, la, x, lb, &beta, y, lc, y, lc, algo, ws, kWorkspace,
                                         stream),
                          "cublasLtMatmul");
                },
                reps);
            algos.push_back({*algo, ms, describe(*algo)});
          }
          const float first = algos.empty() ? 0 : algos[0].ms;
          std::stable_sort(algos.begin(), algos.end(), [](const Algo& a, const Algo& b) { return a.ms < b.ms; });
          const float best = algos.empty() ? ex : algos[0].ms;
          std::printf("| %s | %s | %s | %d | %.4f | %.0f | %.4f | %.4f | %.0f | %+.0f%% | %s |\n", half ? "fp16" : "bf16",
                      out16 ? "16-bit" : "fp32", p.name, n, ex, flop / ex / 1e9, first, best, flop / best / 1e9,
                      100.0 * (ex / best - 1), algos.empty() ? "-" : algos[0].config.c_str());
          for (int i = 1; i < top && i < static_cast<int>(algos.size()); ++i) {
            std::printf("|  |  |  |  |  |  |  | %.4f | %.0f |  | %s |\n", algos[i].ms, flop / algos[i].ms / 1e9,
                        algos[i].config.c_str());
          }
          cublasLtMatmulPreferenceDestroy(pref);
          cublasLtMatrixLayoutDestroy(la);
          cublasLtMatrixLayoutDestroy(lb);
          cublasLtMatrixLayoutDestroy(lc);
          cublasLtMatmulDescDestroy(desc);
        }
      }
    }
  }
  return 0;
}
