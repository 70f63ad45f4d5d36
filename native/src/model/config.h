// The model hyperparameters the engine needs, read from a Hugging Face config.json (and the
// EOS ids from generation_config.json). Qwen3ForCausalLM and LlamaForCausalLM share them.
#pragma once
#include <string>
#include <vector>

namespace sy {

struct ModelConfig {
  std::string architecture;
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int max_position_embeddings = 4096;
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  /** Qwen3 normalizes each head of q and k before RoPE; Llama does not. */
  bool qk_norm = false;
  /** Union of config.json's and generation_config.json's eos_token_id. */
  std::vector<int> eos_token_ids;

  /** Reads dir/config.json (and dir/generation_config.json when present); throws naming the file and key. */
  static ModelConfig load(const std::string& dir);
};

}  // namespace sy
