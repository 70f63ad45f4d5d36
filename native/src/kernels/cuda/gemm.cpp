#include "kernels/cuda/gemm.h"

#include <cublasLt.h>
#include <cublas_v2.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/small_gemm.h"

namespace sy::cuda {
namespace {

constexpr size_t kWorkspaceBytes = 32u << 20;
constexpr int kCandidates = 16;
// Another algorithm replaces the heuristic's first only when this much faster: near ties would
// otherwise go either way from one load to the next, and with them the last bits of results. At
// 3%, two loads of three left qkv or gate_up (2048 rows, float16) on a candidate that ran 9-11%
// slower inside the step than cuBLAS's default, a different one each time (bench/CUDA_NOTES.md,
// "Session 10").
constexpr float kMinGain = 1.10f;

void check(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw CudaError(std::string("cuBLAS error ") + cublasGetStatusName(status) + " (" + cublasGetStatusString(status) +
                    ") in " + what);
  }
}

cudaDataType_t data_type(Half16 dtype) { return dtype == Half16::BF16 ? CUDA_R_16BF : CUDA_R_16F; }

// SWITCHYARD_CUDA_GEMM_TUNE: "off" (cublasGemmEx everywhere: 0), or the fewest rows a tuned
// product has (for measuring; default Gemm::kMinTunedRows). Read by each Gemm, so that engines
// loaded one after another in a process may differ.
int64_t min_tuned_rows_from_env() {
  const char* v = std::getenv("SWITCHYARD_CUDA_GEMM_TUNE");
  if (!v || !*v) return Gemm::kMinTunedRows;
  if (std::strcmp(v, "off") == 0) return 0;
  const long long n = std::atoll(v);
  return n > 0 ? static_cast<int64_t>(n) : Gemm::kMinTunedRows;
}

// Row-major y[n, out] = x[n, in] · wᵀ is column-major yᵀ[out, n] = (w as [in, out])ᵀ · xᵀ[in, n],
// as cuBLASLt describes it. Owns its descriptors.
class LtProblem {
 public:
  LtProblem(int64_t n, int64_t out, int64_t in, cudaDataType_t t, cudaDataType_t y_type) {
    check(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    check(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "TRANSA");
    check(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "TRANSB");
    check(cublasLtMatrixLayoutCreate(&a, t, in, out, in), "layout of w");
    check(cublasLtMatrixLayoutCreate(&b, t, in, n, in), "layout of x");
    check(cublasLtMatrixLayoutCreate(&c, y_type, out, n, out), "layout of y");
  }
  ~LtProblem() {
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
  LtProblem(const LtProblem&) = delete;
  LtProblem& operator=(const LtProblem&) = delete;

  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
};

// Times work issued on a stream between two events it owns.
class StreamTimer {
 public:
  explicit StreamTimer(cudaStream_t stream) : stream_(stream) {
    SY_CUDA_CHECK(cudaEventCreate(&start_));
    if (const cudaError_t e = cudaEventCreate(&stop_); e != cudaSuccess) {
      cudaEventDestroy(start_);
      throw_cuda_error(e, "cudaEventCreate", __FILE__, __LINE__);
    }
  }
  ~StreamTimer() {
    cudaEventDestroy(stop_);
    cudaEventDestroy(start_);
  }
  StreamTimer(const StreamTimer&) = delete;
  StreamTimer& operator=(const StreamTimer&) = delete;

  /** Milliseconds the stream took for what issue() put on it (waits for it). */
  template <typename Issue>
  float ms(Issue&& issue) {
    SY_CUDA_CHECK(cudaEventRecord(start_, stream_));
    issue();
    SY_CUDA_CHECK(cudaEventRecord(stop_, stream_));
    SY_CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0.0f;
    SY_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return ms;
  }

 private:
  cudaStream_t stream_;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

// A word of device memory for the duration of a tuning.
class DeviceWord {
 public:
  DeviceWord() { SY_CUDA_CHECK(cudaMalloc(&p_, sizeof(int))); }
  ~DeviceWord() { cudaFree(p_); }
  DeviceWord(const DeviceWord&) = delete;
  DeviceWord& operator=(const DeviceWord&) = delete;
  operator void*() const { return p_; }

 private:
  void* p_ = nullptr;
};

}  // namespace

struct Gemm::Tuned {
  using Shape = std::tuple<int64_t, int64_t, bool, Half16, bool>;  // out, in, accumulate, dtype, 16-bit y
  struct Choice {
    int64_t rows;  // the size class's largest n, at which it was timed
    cublasLtMatmulAlgo_t algo;
    float gain;  // over the heuristic's first, as timed
  };
  std::map<Shape, std::vector<Choice>> choices;  // by ascending rows
  // A choice at one n: whether it runs there (cublasLtMatmulAlgoCheck), and that n's descriptors,
  // kept: building them for every call cost ~0.1 ms of host time a 2048-token step (of 1.95 ms
  // of launches; bench/CUDA_NOTES.md, "Session 9").
  struct AtRows {
    bool ok = false;
    std::unique_ptr<LtProblem> problem;
  };
  std::map<std::pair<Shape, int64_t>, AtRows> runs_at;
};

Gemm::Gemm(cudaStream_t stream)
    : stream_(stream),
      min_tuned_rows_(min_tuned_rows_from_env()),
      // SWITCHYARD_CUDA_SMALL_GEMM=off: products of a few rows on cuBLAS too (for measuring).
      // Read by each Gemm, as the tuning switch.
      small_rows_(!env_is_off("SWITCHYARD_CUDA_SMALL_GEMM")),
      tuned_(std::make_unique<Tuned>()) {
  cublasHandle_t h;
  check(cublasCreate(&h), "cublasCreate");
  handle_ = h;
  cublasLtHandle_t lt;
  check(cublasLtCreate(&lt), "cublasLtCreate");
  lt_handle_ = lt;
  SY_CUDA_CHECK(cudaMalloc(&workspace_, kWorkspaceBytes));
  check(cublasSetStream(h, stream), "cublasSetStream");
  // A fixed workspace keeps cuBLAS from allocating inside CUDA-graph capture.
  check(cublasSetWorkspace(h, workspace_, kWorkspaceBytes), "cublasSetWorkspace");
  check(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
  if (small_rows_) small_gemm_prepare();  // before any capture: its launches ask for more shared memory
}

Gemm::~Gemm() {
  tuned_.reset();  // its descriptors before the handles
  if (lt_handle_) cublasLtDestroy(static_cast<cublasLtHandle_t>(lt_handle_));
  if (handle_) cublasDestroy(static_cast<cublasHandle_t>(handle_));
  if (workspace_) cudaFree(workspace_);
}

void Gemm::run(const void* x, int64_t n, const void* w, int64_t out, int64_t in, Half16 dtype, float* y,
               bool accumulate) {
  matmul(x, n, w, out, in, dtype, y, false, accumulate);
}

void Gemm::run_16bit_out(const void* x, int64_t n, const void* w, int64_t out, int64_t in, Half16 dtype, void* y) {
  matmul(x, n, w, out, in, dtype, y, true, false);
}

void Gemm::matmul(const void* x, int64_t n, const void* w, int64_t out, int64_t in, Half16 dtype, void* y,
                  bool y_16bit, bool accumulate) {
  if (n == 0) return;
  if (small_rows_ && small_gemm_fits(x, n, w, out, in)) {
    small_gemm(x, n, w, out, in, dtype, y, y_16bit, accumulate, stream_);
    return;
  }
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  const cudaDataType_t t = data_type(dtype), y_type = y_16bit ? t : CUDA_R_32F;
  if (min_tuned_rows_ > 0 && n >= min_tuned_rows_) {
    const Tuned::Shape shape{out, in, accumulate, dtype, y_16bit};
    const auto it = tuned_->choices.find(shape);
    if (it != tuned_->choices.end()) {
      for (const Tuned::Choice& choice : it->second) {
        if (choice.rows < n) continue;
        const auto lt = static_cast<cublasLtHandle_t>(lt_handle_);
        const auto key = std::make_pair(shape, n);
        auto runs = tuned_->runs_at.find(key);
        if (runs == tuned_->runs_at.end()) {
          Tuned::AtRows at{false, std::make_unique<LtProblem>(n, out, in, t, y_type)};
          const LtProblem& p = *at.problem;
          cublasLtMatmulHeuristicResult_t result{};
          at.ok = cublasLtMatmulAlgoCheck(lt, p.desc, p.a, p.b, p.c, p.c, &choice.algo, &result) ==
                      CUBLAS_STATUS_SUCCESS &&
                  result.workspaceSize <= kWorkspaceBytes;
          if (!at.ok) at.problem.reset();
          runs = tuned_->runs_at.emplace(key, std::move(at)).first;
        }
        if (!runs->second.ok) break;  // cublasGemmEx below
        const LtProblem& p = *runs->second.problem;
        check(cublasLtMatmul(lt, p.desc, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c, &choice.algo, workspace_,
                             kWorkspaceBytes, stream_),
              "cublasLtMatmul");
        return;
      }
    }
  }
  check(cublasGemmEx(static_cast<cublasHandle_t>(handle_), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out),
                     static_cast<int>(n), static_cast<int>(in), &alpha, w, t, static_cast<int>(in), x, t,
                     static_cast<int>(in), &beta, y, y_type, static_cast<int>(out), CUBLAS_COMPUTE_32F,
                     CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx");
}

void Gemm::tune(const void* x, int64_t max_n, const std::vector<const void*>& ws, int64_t out, int64_t in,
                Half16 dtype, void* y, bool accumulate, bool y_16bit) {
  if (min_tuned_rows_ == 0 || max_n < min_tuned_rows_ || ws.empty()) return;
  std::vector<int64_t> sizes;
  for (int64_t s = min_tuned_rows_; s < max_n; s *= 2) sizes.push_back(s);
  sizes.push_back(max_n);
  const auto lt = static_cast<cublasLtHandle_t>(lt_handle_);
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  StreamTimer timer(stream_);
  DeviceWord separator;
  std::vector<Tuned::Choice> choices;
  size_t next_w = 0;
  for (const int64_t n : sizes) {
    LtProblem p(n, out, in, data_type(dtype), y_16bit ? data_type(dtype) : CUDA_R_32F);
    cublasLtMatmulPreference_t pref = nullptr;
    check(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
    size_t workspace = kWorkspaceBytes;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                         sizeof(workspace));
    cublasLtMatmulHeuristicResult_t results[kCandidates];
    int returned = 0;
    const cublasStatus_t found =
        cublasLtMatmulAlgoGetHeuristic(lt, p.desc, p.a, p.b, p.c, p.c, pref, kCandidates, results, &returned);
    cublasLtMatmulPreferenceDestroy(pref);
    if (found != CUBLAS_STATUS_SUCCESS) continue;
    const auto launch = [&](int i) {
      const void* w = ws[next_w++ % ws.size()];
      return cublasLtMatmul(lt, p.desc, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c, &results[i].algo, workspace_,
                            kWorkspaceBytes, stream_);
    };
    // The candidates that run at all (two warm-up launches each), then the rounds.
    std::vector<int> runnable;
    for (int i = 0; i < returned; ++i) {
      if (results[i].state != CUBLAS_STATUS_SUCCESS || results[i].workspaceSize > kWorkspaceBytes) continue;
      if (launch(i) == CUBLAS_STATUS_SUCCESS && launch(i) == CUBLAS_STATUS_SUCCESS) runnable.push_back(i);
    }
    if (runnable.empty()) continue;
    // Each timed product is followed by a one-word memset, as a step follows each GEMM with a
    // kernel of ours (back to back, one product's start may overlap the end of the one before).
    // Without it, one load of three moved qkv to an algorithm that timed faster here and ran 30%
    // slower inside a step; with it, four loads of four kept the faster one (bench/CUDA_NOTES.md,
    // "Session 9").
    constexpr int kRounds = 3, kTimed = 6;
    std::vector<float> best_round(runnable.size(), 0.0f);
    for (int round = 0; round < kRounds; ++round) {
      for (size_t c = 0; c < runnable.size(); ++c) {
        const float ms = timer.ms([&] {
          for (int r = 0; r < kTimed; ++r) {
            launch(runnable[c]);
            SY_CUDA_CHECK(cudaMemsetAsync(separator, 0, sizeof(int), stream_));
          }
        });
        if (round == 0 || ms < best_round[c]) best_round[c] = ms;
      }
    }
    // runnable[0] is the heuristic's first pick that runs.
    size_t best = 0;
    for (size_t c = 1; c < runnable.size(); ++c) {
      if (best_round[c] < best_round[best]) best = c;
    }
    if (best_round[best] * kMinGain > best_round[0]) best = 0;
    choices.push_back({n, results[runnable[best]].algo, best_round[0] / best_round[best]});
  }
  SY_CUDA_CHECK(cudaGetLastError());
  const Tuned::Shape shape{out, in, accumulate, dtype, y_16bit};
  for (auto it = tuned_->runs_at.begin(); it != tuned_->runs_at.end();) {
    it = it->first.first == shape ? tuned_->runs_at.erase(it) : std::next(it);
  }
  if (choices.empty()) {
    tuned_->choices.erase(shape);
  } else {
    tuned_->choices[shape] = std::move(choices);
  }
}

std::string Gemm::tuned_summary() const {
  int sizes = 0, changed = 0;
  float max_gain = 1.0f;
  for (const auto& [shape, list] : tuned_->choices) {
    for (const Tuned::Choice& c : list) {
      ++sizes;
      if (c.gain > 1.0f) ++changed, max_gain = std::max(max_gain, c.gain);
    }
  }
  if (sizes == 0) return "";
  return "prefill GEMMs tuned by timing (" + std::to_string(tuned_->choices.size()) + " shapes, " +
         std::to_string(sizes) + " size classes; " + std::to_string(changed) + " off cuBLAS's default, up to " +
         std::to_string(static_cast<int>((max_gain - 1.0f) * 100.0f + 0.5f)) + "% faster)";
}

}  // namespace sy::cuda
