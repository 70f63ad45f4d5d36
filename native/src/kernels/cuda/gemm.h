// The CUDA backend's matrix products: y[n, out] = x[n, in] · wᵀ with x and w in the model's 16-bit
// dtype, fp32 accumulation and an fp32 (or 16-bit) result. Through cuBLAS, except products of at
// most kSmallGemmRows rows (decode steps), which run small_gemm.cu's kernel. The only file that
// includes cuBLAS, so everything else compiles where cuBLAS's headers are absent.
//
// Prefill-sized products can run an algorithm picked by timing (tune): cuBLAS's own heuristic,
// which cublasGemmEx follows, leaves 10-27% on the table for some of the model's prefill shapes
// on an H200 (bench/cuda_gemm_algos.cu; bench/CUDA_NOTES.md, "Session 7").
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

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
   * `accumulate`. Runs small_gemm where it fits (small_gemm.h; SWITCHYARD_CUDA_SMALL_GEMM=off
   * says not), else the algorithm tune() chose for this shape and n's size class, where it chose
   * one, else cublasGemmEx's. Throws with cuBLAS's status.
   */
  void run(const void* x, int64_t n, const void* w, int64_t out, int64_t in, Half16 dtype, float* y,
           bool accumulate = false);
  /** The same with y in the 16-bit dtype (rounded from the fp32 sums). */
  void run_16bit_out(const void* x, int64_t n, const void* w, int64_t out, int64_t in, Half16 dtype, void* y);

  /**
   * Times cuBLASLt's candidate algorithms for this shape at each size class of n (powers of two
   * from kMinTunedRows up to max_n, and max_n) and keeps the fastest, or the heuristic's first
   * unless another beats it by 10%, so that runs that time alike choose alike. Each timed product
   * takes the next matrix of `ws` (every layer's, so that weights stream from memory as in a
   * step), and the candidates are timed in turn over several rounds, each keeping its best round
   * (so that a clock ramp or a hiccup during one candidate's turn does not pick the winner),
   * each product followed by a one-word memset as a step follows it by another kernel. x
   * ([max_n, in]), the matrices and y ([max_n, out], fp32 or, with y_16bit, the 16-bit dtype)
   * are scratch: the timing overwrites y. Synchronizes the stream. Does nothing when
   * SWITCHYARD_CUDA_GEMM_TUNE=off; SWITCHYARD_CUDA_GEMM_TUNE=N tunes from N rows instead of
   * kMinTunedRows (for measuring).
   */
  void tune(const void* x, int64_t max_n, const std::vector<const void*>& ws, int64_t out, int64_t in, Half16 dtype,
            void* y, bool accumulate, bool y_16bit);

  /** Whether products of at most kSmallGemmRows rows run small_gemm where they fit. */
  bool small_products() const { return small_rows_; }

  /** What tune() chose, for the engine's description: "" when nothing was tuned. */
  std::string tuned_summary() const;

  /**
   * Products of fewer rows keep cublasGemmEx: tuned from 8 rows, decode steps of batch 8-256
   * moved by -3% to +2% against cublasGemmEx's times (H200), not worth the load time.
   */
  static constexpr int64_t kMinTunedRows = 512;

 private:
  struct Tuned;
  void matmul(const void* x, int64_t n, const void* w, int64_t out, int64_t in, Half16 dtype, void* y, bool y_16bit,
              bool accumulate);
  void* handle_ = nullptr;
  void* lt_handle_ = nullptr;
  void* workspace_ = nullptr;
  cudaStream_t stream_;
  int64_t min_tuned_rows_;  // 0: no tuning
  bool small_rows_;         // small_gemm for the products it fits
  std::unique_ptr<Tuned> tuned_;
};

}  // namespace sy::cuda
