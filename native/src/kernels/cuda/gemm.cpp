#include "kernels/cuda/gemm.h"

#include <cublas_v2.h>

#include <string>

#include "kernels/cuda/cuda_check.h"

namespace sy::cuda {
namespace {

constexpr size_t kWorkspaceBytes = 32u << 20;

void check(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw CudaError(std::string("cuBLAS error ") + cublasGetStatusName(status) + " (" + cublasGetStatusString(status) +
                    ") in " + what);
  }
}

}  // namespace

Gemm::Gemm(cudaStream_t stream) : stream_(stream) {
  cublasHandle_t h;
  check(cublasCreate(&h), "cublasCreate");
  handle_ = h;
  SY_CUDA_CHECK(cudaMalloc(&workspace_, kWorkspaceBytes));
  check(cublasSetStream(h, stream), "cublasSetStream");
  // A fixed workspace keeps cuBLAS from allocating inside CUDA-graph capture.
  check(cublasSetWorkspace(h, workspace_, kWorkspaceBytes), "cublasSetWorkspace");
  check(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
}

Gemm::~Gemm() {
  if (handle_) cublasDestroy(static_cast<cublasHandle_t>(handle_));
  if (workspace_) cudaFree(workspace_);
}

// Row-major y[n, out] = x[n, in] · wᵀ is column-major yᵀ[out, n] = (w as [in, out])ᵀ · xᵀ[in, n].
void Gemm::run(const void* x, int64_t n, const void* w, int64_t out, int64_t in, Half16 dtype, float* y,
               bool accumulate) {
  if (n == 0) return;
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  const cudaDataType_t t = dtype == Half16::BF16 ? CUDA_R_16BF : CUDA_R_16F;
  check(cublasGemmEx(static_cast<cublasHandle_t>(handle_), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out),
                     static_cast<int>(n), static_cast<int>(in), &alpha, w, t, static_cast<int>(in), x, t,
                     static_cast<int>(in), &beta, y, CUDA_R_32F, static_cast<int>(out), CUBLAS_COMPUTE_32F,
                     CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx");
}

void Gemm::run_half_out(const void* x, int64_t n, const void* w, int64_t out, int64_t in, Half16 dtype, void* y) {
  const float alpha = 1.0f, beta = 0.0f;
  const cudaDataType_t t = dtype == Half16::BF16 ? CUDA_R_16BF : CUDA_R_16F;
  check(cublasGemmEx(static_cast<cublasHandle_t>(handle_), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out),
                     static_cast<int>(n), static_cast<int>(in), &alpha, w, t, static_cast<int>(in), x, t,
                     static_cast<int>(in), &beta, y, t, static_cast<int>(out), CUBLAS_COMPUTE_32F,
                     CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx");
}

}  // namespace sy::cuda
