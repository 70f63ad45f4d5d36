// The cheap per-element kernels of a forward pass (embedding lookup, RMSNorm, RoPE, SwiGLU,
// residual add, KV-cache writes). They are memory-light next to the matmuls, so the CPU
// backend uses these single implementations on both its fast and its reference path.
#pragma once
#include <cstdint>

#include "model/kv_cache.h"
#include "model/tensor.h"

namespace sy {

void embed_rows(const WeightView& table, const int32_t* tokens, int64_t n, float* out);
void rmsnorm_rows(const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float* y);
void rope_rotate(float* x, int64_t n, int heads, int head_dim, const float* cos, const float* sin);
void silu_mul(const float* gate, const float* up, int64_t n, float* out);
void add_inplace(float* x, const float* y, int64_t n);
void write_kv_slots(KvCache& cache, int layer, const float* k, const float* v, const int32_t* slots, int64_t n);

}  // namespace sy
