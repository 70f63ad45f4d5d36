// The seam between the model and the hardware: every operation of a forward pass that touches
// weights, activations or the KV cache. The CPU backend (kernels/cpu/) implements it with a
// fast path and a plain reference path that tests compare; a CUDA backend implements the same
// calls on device pointers. Activations are fp32 row-major [tokens, features].
#pragma once
#include <cstdint>
#include <memory>

#include "model/kv_cache.h"
#include "model/tensor.h"

namespace sy {

/** Which cache positions each token of a flat batch attends to. */
struct AttentionBatch {
  int64_t num_tokens = 0;
  const int32_t* positions = nullptr;  // [num_tokens]; a token attends to positions 0..pos of its sequence
  const int32_t* token_seq = nullptr;  // [num_tokens]; index of the token's sequence
  const int32_t* const* block_tables = nullptr;  // per sequence: block ids in position order
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  /** out[t] = table[tokens[t]] converted to fp32. */
  virtual void embed(const WeightView& table, const int32_t* tokens, int64_t n, float* out) = 0;
  /** y[n, w.rows] = x[n, w.cols] · wᵀ. Each row of y depends only on its own row of x. */
  virtual void matmul(const float* x, int64_t n, const WeightView& w, float* y) = 0;
  /** RMSNorm of `rows` rows of length `dim`: y = x / sqrt(mean(x²) + eps) * weight. */
  virtual void rmsnorm(const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float* y) = 0;
  /** Rotates pairs (i, i + head_dim/2) of each head; cos/sin are [n, head_dim/2]. */
  virtual void rope(float* x, int64_t n, int heads, int head_dim, const float* cos, const float* sin) = 0;
  /** out = silu(gate) * up, elementwise over n values. */
  virtual void silu_mul(const float* gate, const float* up, int64_t n, float* out) = 0;
  /** x += y over n values. */
  virtual void add(float* x, const float* y, int64_t n) = 0;
  /** Stores the K and V rows of n tokens into their cache slots. */
  virtual void write_kv(KvCache& cache, int layer, const float* k, const float* v, const int32_t* slots, int64_t n) = 0;
  /** Causal attention of q [n, heads*head_dim] over the paged cache; out has q's shape. */
  virtual void attention(const KvCache& cache, int layer, const float* q, int num_heads, const AttentionBatch& batch,
                         float* out) = 0;
};

/** The CPU backend; `reference` selects the plain single-threaded kernels. */
std::unique_ptr<Backend> make_cpu_backend(int threads, bool reference);

}  // namespace sy
