#include "kernels/cpu/attention.h"

#include <cmath>
#include <vector>

namespace sy {
namespace {

// One query head of one token; `scores` has room for pos + 1 values.
void attend_one(const KvCache& cache, int layer, const float* qh, int kv_head, int32_t pos, const int32_t* table,
                float* scores, float* out) {
  const KvCacheShape& s = cache.shape();
  const int hd = s.head_dim, bs = s.block_size;
  const int64_t stride = cache.slot_stride();
  const float* kbase = cache.k(layer) + static_cast<int64_t>(kv_head) * hd;
  const float* vbase = cache.v(layer) + static_cast<int64_t>(kv_head) * hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  float max_score = -INFINITY;
  for (int32_t j = 0; j <= pos; ++j) {
    const int64_t slot = static_cast<int64_t>(table[j / bs]) * bs + j % bs;
    const float* kr = kbase + slot * stride;
    float dot = 0;
    for (int d = 0; d < hd; ++d) dot += qh[d] * kr[d];
    scores[j] = dot * scale;
    max_score = std::max(max_score, scores[j]);
  }
  float total = 0;
  for (int32_t j = 0; j <= pos; ++j) {
    scores[j] = std::exp(scores[j] - max_score);
    total += scores[j];
  }
  const float inv = 1.0f / total;
  for (int d = 0; d < hd; ++d) out[d] = 0;
  for (int32_t j = 0; j <= pos; ++j) {
    const int64_t slot = static_cast<int64_t>(table[j / bs]) * bs + j % bs;
    const float* vr = vbase + slot * stride;
    const float p = scores[j] * inv;
    for (int d = 0; d < hd; ++d) out[d] += p * vr[d];
  }
}

}  // namespace

void attention_fast(ThreadPool& pool, const KvCache& cache, int layer, const float* q, int num_heads,
                    const AttentionBatch& batch, float* out) {
  const int hd = cache.shape().head_dim;
  const int group = num_heads / cache.shape().num_kv_heads;
  pool.parallel_for(batch.num_tokens * num_heads, 4, [&](int64_t i0, int64_t i1) {
    thread_local std::vector<float> scores;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t t = i / num_heads;
      const int h = static_cast<int>(i % num_heads);
      const int32_t pos = batch.positions[t];
      if (static_cast<int64_t>(scores.size()) < pos + 1) scores.resize(pos + 1);
      const int64_t off = (t * num_heads + h) * hd;
      attend_one(cache, layer, q + off, h / group, pos, batch.block_tables[batch.token_seq[t]], scores.data(),
                 out + off);
    }
  });
}

void attention_reference(const KvCache& cache, int layer, const float* q, int num_heads, const AttentionBatch& batch,
                         float* out) {
  const KvCacheShape& s = cache.shape();
  const int hd = s.head_dim, bs = s.block_size, group = num_heads / s.num_kv_heads;
  const int64_t stride = cache.slot_stride();
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  for (int64_t t = 0; t < batch.num_tokens; ++t) {
    const int32_t pos = batch.positions[t];
    const int32_t* table = batch.block_tables[batch.token_seq[t]];
    for (int h = 0; h < num_heads; ++h) {
      const float* qh = q + (t * num_heads + h) * hd;
      std::vector<double> w(pos + 1);
      double mx = -INFINITY, total = 0;
      for (int32_t j = 0; j <= pos; ++j) {
        const int64_t slot = static_cast<int64_t>(table[j / bs]) * bs + j % bs;
        const float* kr = cache.k(layer) + slot * stride + (h / group) * hd;
        double dot = 0;
        for (int d = 0; d < hd; ++d) dot += static_cast<double>(qh[d]) * kr[d];
        w[j] = dot * scale;
        mx = std::max(mx, w[j]);
      }
      for (auto& x : w) total += (x = std::exp(x - mx));
      for (int d = 0; d < hd; ++d) {
        double acc = 0;
        for (int32_t j = 0; j <= pos; ++j) {
          const int64_t slot = static_cast<int64_t>(table[j / bs]) * bs + j % bs;
          acc += w[j] * cache.v(layer)[slot * stride + (h / group) * hd + d];
        }
        out[(t * num_heads + h) * hd + d] = static_cast<float>(acc / total);
      }
    }
  }
}

}  // namespace sy
