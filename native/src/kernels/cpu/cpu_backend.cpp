// The CPU implementation of Backend: the fast kernels on a thread pool, or (reference = true)
// the plain single-threaded kernels that tests compare the fast ones against.
#include <memory>

#include "kernels/backend.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/matmul.h"
#include "util/thread_pool.h"

namespace sy {
namespace {

class CpuBackend final : public Backend {
 public:
  CpuBackend(int threads, bool reference) : pool_(reference ? 1 : threads), reference_(reference) {}

  const char* name() const override { return reference_ ? "cpu-reference" : "cpu"; }

  void embed(const WeightView& table, const int32_t* tokens, int64_t n, float* out) override {
    embed_rows(table, tokens, n, out);
  }
  void matmul(const float* x, int64_t n, const WeightView& w, float* y) override {
    if (reference_) {
      matmul_reference(x, n, w, y);
    } else {
      matmul_fast(pool_, x, n, w, y);
    }
  }
  void rmsnorm(const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float* y) override {
    rmsnorm_rows(x, weight, rows, dim, eps, y);
  }
  void rope(float* x, int64_t n, int heads, int head_dim, const float* cos, const float* sin) override {
    rope_rotate(x, n, heads, head_dim, cos, sin);
  }
  void silu_mul(const float* gate, const float* up, int64_t n, float* out) override { sy::silu_mul(gate, up, n, out); }
  void add(float* x, const float* y, int64_t n) override { add_inplace(x, y, n); }
  void write_kv(KvCache& cache, int layer, const float* k, const float* v, const int32_t* slots, int64_t n) override {
    write_kv_slots(cache, layer, k, v, slots, n);
  }
  void attention(const KvCache& cache, int layer, const float* q, int num_heads, const AttentionBatch& batch,
                 float* out) override {
    if (reference_) {
      attention_reference(cache, layer, q, num_heads, batch, out);
    } else {
      attention_fast(pool_, cache, layer, q, num_heads, batch, out);
    }
  }

 private:
  ThreadPool pool_;
  bool reference_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads, bool reference) {
  return std::make_unique<CpuBackend>(threads, reference);
}

}  // namespace sy
