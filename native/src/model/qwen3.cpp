#include "model/qwen3.h"

#include <cmath>
#include <stdexcept>

namespace sy {
namespace {

int64_t bytes_of(const WeightView& w) { return w.rows * w.cols * static_cast<int64_t>(dtype_size(w.dtype)); }

void ensure(std::vector<float>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
}

}  // namespace

Qwen3Model::Qwen3Model(const std::string& dir) : config_(ModelConfig::load(dir)) {
  checkpoint_ = std::make_unique<SafetensorsCheckpoint>(dir);
  const ModelConfig& c = config_;
  const int64_t h = c.hidden_size, hd = c.head_dim, qdim = int64_t(c.num_heads) * hd, kvdim = int64_t(c.num_kv_heads) * hd;
  auto& ck = *checkpoint_;
  auto vec = [&](const std::string& name, int64_t n) { return weight_to_f32(ck.matrix(name, {n})); };
  embed_ = ck.matrix("model.embed_tokens.weight", {c.vocab_size, h});
  if (c.tie_word_embeddings || !ck.has("lm_head.weight")) {
    if (!c.tie_word_embeddings) {
      throw std::runtime_error(dir + ": tie_word_embeddings is false but the checkpoint has no lm_head.weight");
    }
    lm_head_ = embed_;
  } else {
    lm_head_ = ck.matrix("lm_head.weight", {c.vocab_size, h});
  }
  weight_bytes_per_step_ = bytes_of(lm_head_);
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    Layer L;
    L.q = ck.matrix(p + ".self_attn.q_proj.weight", {qdim, h});
    L.k = ck.matrix(p + ".self_attn.k_proj.weight", {kvdim, h});
    L.v = ck.matrix(p + ".self_attn.v_proj.weight", {kvdim, h});
    L.o = ck.matrix(p + ".self_attn.o_proj.weight", {h, qdim});
    L.gate = ck.matrix(p + ".mlp.gate_proj.weight", {c.intermediate_size, h});
    L.up = ck.matrix(p + ".mlp.up_proj.weight", {c.intermediate_size, h});
    L.down = ck.matrix(p + ".mlp.down_proj.weight", {h, c.intermediate_size});
    // Norm weights are a few KiB: converted to fp32 once instead of at every use.
    L.input_norm = vec(p + ".input_layernorm.weight", h);
    L.post_attention_norm = vec(p + ".post_attention_layernorm.weight", h);
    if (c.qk_norm) {
      L.q_norm = vec(p + ".self_attn.q_norm.weight", hd);
      L.k_norm = vec(p + ".self_attn.k_norm.weight", hd);
    }
    for (const WeightView* w : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) weight_bytes_per_step_ += bytes_of(*w);
    layers_.push_back(std::move(L));
  }
  final_norm_ = vec("model.norm.weight", h);
  // Hugging Face computes inv_freq in fp32 as 1 / theta^(2i/d).
  inv_freq_.resize(hd / 2);
  for (int64_t i = 0; i < hd / 2; ++i) {
    inv_freq_[i] = static_cast<float>(1.0 / std::pow(c.rope_theta, static_cast<double>(2 * i) / static_cast<double>(hd)));
  }
}

KvCacheShape Qwen3Model::kv_shape(int block_size) const {
  KvCacheShape s;
  s.num_layers = config_.num_layers;
  s.num_kv_heads = config_.num_kv_heads;
  s.head_dim = config_.head_dim;
  s.block_size = block_size;
  return s;
}

void Qwen3Model::forward(const ForwardBatch& batch, KvCache& cache, Backend& be, float* logits) {
  const ModelConfig& c = config_;
  const int64_t n = static_cast<int64_t>(batch.tokens.size());
  const int64_t h = c.hidden_size, hd = c.head_dim, half = hd / 2;
  const int64_t qdim = int64_t(c.num_heads) * hd, kvdim = int64_t(c.num_kv_heads) * hd, inter = c.intermediate_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  ensure(x_, n * h);
  ensure(h_, n * h);
  ensure(q_, n * qdim);
  ensure(k_, n * kvdim);
  ensure(v_, n * kvdim);
  ensure(attn_, n * qdim);
  ensure(proj_, n * h);
  ensure(gate_, n * inter);
  ensure(up_, n * inter);
  ensure(act_, n * inter);
  ensure(cos_, n * half);
  ensure(sin_, n * half);

  // RoPE angles once per step, shared by every layer and head: angle = pos * inv_freq in fp32.
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(batch.positions[t]) * inv_freq_[i];
      cos_[t * half + i] = std::cos(angle);
      sin_[t * half + i] = std::sin(angle);
    }
  }
  AttentionBatch ab;
  ab.num_tokens = n;
  ab.positions = batch.positions.data();
  ab.token_seq = batch.token_seq.data();
  ab.block_tables = batch.block_tables.data();

  be.embed(embed_, batch.tokens.data(), n, x_.data());
  for (int l = 0; l < c.num_layers; ++l) {
    Layer& L = layers_[l];
    be.rmsnorm(x_.data(), L.input_norm.data(), n, h, eps, h_.data());
    be.matmul(h_.data(), n, L.q, q_.data());
    be.matmul(h_.data(), n, L.k, k_.data());
    be.matmul(h_.data(), n, L.v, v_.data());
    if (c.qk_norm) {
      be.rmsnorm(q_.data(), L.q_norm.data(), n * c.num_heads, hd, eps, q_.data());
      be.rmsnorm(k_.data(), L.k_norm.data(), n * c.num_kv_heads, hd, eps, k_.data());
    }
    be.rope(q_.data(), n, c.num_heads, static_cast<int>(hd), cos_.data(), sin_.data());
    be.rope(k_.data(), n, c.num_kv_heads, static_cast<int>(hd), cos_.data(), sin_.data());
    // Every token's K/V goes into the cache before any token attends, so tokens of this step
    // see each other (and a block cached by another sequence this step) through the cache.
    be.write_kv(cache, l, k_.data(), v_.data(), batch.slots.data(), n);
    be.attention(cache, l, q_.data(), c.num_heads, ab, attn_.data());
    be.matmul(attn_.data(), n, L.o, proj_.data());
    be.add(x_.data(), proj_.data(), n * h);
    be.rmsnorm(x_.data(), L.post_attention_norm.data(), n, h, eps, h_.data());
    be.matmul(h_.data(), n, L.gate, gate_.data());
    be.matmul(h_.data(), n, L.up, up_.data());
    be.silu_mul(gate_.data(), up_.data(), n * inter, act_.data());
    be.matmul(act_.data(), n, L.down, proj_.data());
    be.add(x_.data(), proj_.data(), n * h);
  }
  const int64_t m = static_cast<int64_t>(batch.logit_tokens.size());
  if (m == 0) return;
  ensure(last_, m * h);
  for (int64_t i = 0; i < m; ++i) {
    const float* src = x_.data() + static_cast<int64_t>(batch.logit_tokens[i]) * h;
    std::copy(src, src + h, last_.data() + i * h);
  }
  be.rmsnorm(last_.data(), final_norm_.data(), m, h, eps, h_.data());
  be.matmul(h_.data(), m, lm_head_, logits);
}

}  // namespace sy
