#include "kernels/cpu/elementwise.h"

#include <cmath>
#include <cstring>

namespace sy {

void embed_rows(const WeightView& table, const int32_t* tokens, int64_t n, float* out) {
  const int64_t dim = table.cols;
  for (int64_t t = 0; t < n; ++t) {
    const int64_t base = static_cast<int64_t>(tokens[t]) * dim;
    for (int64_t i = 0; i < dim; ++i) out[t * dim + i] = weight_at(table, base + i);
  }
}

void rmsnorm_rows(const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    float ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(dim) + eps);
    for (int64_t i = 0; i < dim; ++i) yr[i] = weight[i] * (xr[i] * inv);
  }
}

// The "rotate half" convention of Hugging Face's Llama/Qwen3: element i pairs with i + d/2.
void rope_rotate(float* x, int64_t n, int heads, int head_dim, const float* cos, const float* sin) {
  const int half = head_dim / 2;
  for (int64_t t = 0; t < n; ++t) {
    const float* c = cos + t * half;
    const float* s = sin + t * half;
    for (int h = 0; h < heads; ++h) {
      float* v = x + (t * heads + h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i] + a * s[i];
      }
    }
  }
}

void silu_mul(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void add_inplace(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

void write_kv_slots(KvCache& cache, int layer, const float* k, const float* v, const int32_t* slots, int64_t n) {
  const int64_t stride = cache.slot_stride();
  for (int64_t t = 0; t < n; ++t) {
    std::memcpy(cache.k(layer) + static_cast<int64_t>(slots[t]) * stride, k + t * stride, sizeof(float) * stride);
    std::memcpy(cache.v(layer) + static_cast<int64_t>(slots[t]) * stride, v + t * stride, sizeof(float) * stride);
  }
}

}  // namespace sy
