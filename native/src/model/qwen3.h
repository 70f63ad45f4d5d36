// The Qwen3 decoder (and Llama, which is Qwen3 without the per-head q/k RMSNorm): weights
// memory-mapped from the checkpoint, a forward pass over a flat batch of tokens from many
// sequences that writes each token's K/V into its paged-cache slot and returns logits for the
// tokens that are sampled.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/safetensors.h"

namespace sy {

/** One step's tokens, flattened across sequences. */
struct ForwardBatch {
  std::vector<int32_t> tokens;
  std::vector<int32_t> positions;
  std::vector<int32_t> slots;      // cache slot of each token
  std::vector<int32_t> token_seq;  // sequence index of each token
  std::vector<const int32_t*> block_tables;  // per sequence
  std::vector<int32_t> logit_tokens;  // flat indices of the tokens whose logits are wanted
};

class Qwen3Model {
 public:
  /** Loads config.json and the safetensors of `dir`; throws naming the file and tensor. */
  explicit Qwen3Model(const std::string& dir);

  const ModelConfig& config() const { return config_; }
  KvCacheShape kv_shape(int block_size) const;
  /** Bytes of weights one decode step reads (all matrices, embeddings counted once if tied). */
  int64_t weight_bytes_per_step() const { return weight_bytes_per_step_; }

  /** logits: [batch.logit_tokens.size(), vocab_size]. */
  void forward(const ForwardBatch& batch, KvCache& cache, Backend& backend, float* logits);

 private:
  struct Layer {
    WeightView q, k, v, o, gate, up, down;
    std::vector<float> input_norm, post_attention_norm, q_norm, k_norm;
  };

  ModelConfig config_;
  std::unique_ptr<SafetensorsCheckpoint> checkpoint_;
  WeightView embed_, lm_head_;
  std::vector<Layer> layers_;
  std::vector<float> final_norm_;
  std::vector<float> inv_freq_;
  int64_t weight_bytes_per_step_ = 0;

  // Scratch activations, grown on demand.
  std::vector<float> x_, h_, q_, k_, v_, attn_, proj_, gate_, up_, act_, cos_, sin_, last_;
};

}  // namespace sy
