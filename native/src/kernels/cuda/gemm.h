// The CUDA backend's matrix products, through cuBLAS: y[n, out] = x[n, in] · wᵀ with x and w in
// the model's 16-bit dtype, fp32 accumulation and an fp32 result. The only file that includes
// cuBLAS, so everything else compiles where cuBLAS's headers are absent.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace sy::cuda {

enum class Half16 { BF16, F16 };

class Gemm {
 public:
  explicit Gemm(cudaStream_t stream);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  /**
   * w is [out, in] row-major; x is [n, in]; y is [n, out] (fp32), or y += x · wᵀ with
   * `accumulate` (the lo half of a split input). Throws with cuBLAS's status.
   */
  void run(const void* x, int64_t n, const void* w, int64_t out, int64_t in, Half16 dtype, float* y,
           bool accumulate = false);
  /** The same with 16-bit output (for benchmarks of the library's peak). */
  void run_half_out(const void* x, int64_t n, const void* w, int64_t out, int64_t in, Half16 dtype, void* y);

 private:
  void* handle_ = nullptr;
  void* workspace_ = nullptr;
  cudaStream_t stream_;
};

}  // namespace sy::cuda
