#include "model/config.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "util/json.h"

namespace sy {
namespace {

bool read_file(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::stringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

void add_eos(const Json* v, std::vector<int>* ids) {
  if (!v) return;
  if (v->is_number()) ids->push_back(static_cast<int>(v->number()));
  if (v->is_array()) {
    for (const auto& e : v->array()) {
      if (e.is_number()) ids->push_back(static_cast<int>(e.number()));
    }
  }
}

}  // namespace

ModelConfig ModelConfig::load(const std::string& dir) {
  std::string path = dir + "/config.json";
  std::string text;
  if (!read_file(path, &text)) throw std::runtime_error("cannot read " + path + ": a model folder needs config.json");
  Json j;
  try {
    j = Json::parse(text);
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
  auto need_int = [&](const char* key) -> int {
    const Json* v = j.find(key);
    if (!v || !v->is_number() || v->number() <= 0) {
      throw std::runtime_error(path + ": " + key + " must be a positive integer");
    }
    return static_cast<int>(v->number());
  };
  auto opt_number = [&](const Json& obj, const char* key, double fallback) -> double {
    const Json* v = obj.find(key);
    return v && v->is_number() ? v->number() : fallback;
  };

  ModelConfig c;
  const Json* archs = j.find("architectures");
  if (!archs || !archs->is_array() || archs->array().empty() || !archs->array()[0].is_string()) {
    throw std::runtime_error(path + ": architectures must be a non-empty list of names");
  }
  c.architecture = archs->array()[0].string();
  if (c.architecture == "Qwen3ForCausalLM") {
    c.qk_norm = true;
  } else if (c.architecture != "LlamaForCausalLM") {
    throw std::runtime_error(path + ": architecture " + c.architecture +
                             " is not supported; supported: Qwen3ForCausalLM, LlamaForCausalLM");
  }
  c.vocab_size = need_int("vocab_size");
  c.hidden_size = need_int("hidden_size");
  c.intermediate_size = need_int("intermediate_size");
  c.num_layers = need_int("num_hidden_layers");
  c.num_heads = need_int("num_attention_heads");
  c.num_kv_heads = j.find("num_key_value_heads") ? need_int("num_key_value_heads") : c.num_heads;
  const Json* hd = j.find("head_dim");
  c.head_dim = hd && hd->is_number() ? static_cast<int>(hd->number()) : c.hidden_size / c.num_heads;
  c.max_position_embeddings = static_cast<int>(opt_number(j, "max_position_embeddings", 4096));
  c.rms_norm_eps = opt_number(j, "rms_norm_eps", 1e-6);
  // Newer transformers keep rope_theta inside rope_parameters; older configs at the top.
  c.rope_theta = opt_number(j, "rope_theta", 10000.0);
  const Json* rope_params = j.find("rope_parameters");
  if (rope_params && rope_params->is_object()) c.rope_theta = opt_number(*rope_params, "rope_theta", c.rope_theta);
  for (const Json* scaling : {j.find("rope_scaling"), rope_params}) {
    if (!scaling || !scaling->is_object()) continue;
    const Json* type = scaling->find("rope_type");
    if (!type) type = scaling->find("type");
    if (type && type->is_string() && type->string() != "default") {
      throw std::runtime_error(path + ": rope type " + type->string() + " is not supported (only default RoPE)");
    }
  }
  const Json* tie = j.find("tie_word_embeddings");
  // transformers' default for both Qwen3Config and LlamaConfig is untied.
  c.tie_word_embeddings = tie && tie->is_bool() ? tie->boolean() : false;
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    const Json* v = j.find(key);
    if (v && v->is_bool() && v->boolean()) throw std::runtime_error(path + ": " + key + "=true is not supported");
  }
  const Json* act = j.find("hidden_act");
  if (act && act->is_string() && act->string() != "silu") {
    throw std::runtime_error(path + ": hidden_act " + act->string() + " is not supported (only silu)");
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    throw std::runtime_error(path + ": num_attention_heads must be a multiple of num_key_value_heads");
  }
  if (c.head_dim % 2 != 0) throw std::runtime_error(path + ": head_dim must be even for RoPE");

  add_eos(j.find("eos_token_id"), &c.eos_token_ids);
  std::string gen_text;
  if (read_file(dir + "/generation_config.json", &gen_text)) {
    try {
      Json g = Json::parse(gen_text);
      add_eos(g.find("eos_token_id"), &c.eos_token_ids);
    } catch (const std::exception& e) {
      throw std::runtime_error(dir + "/generation_config.json: " + e.what());
    }
  }
  std::sort(c.eos_token_ids.begin(), c.eos_token_ids.end());
  c.eos_token_ids.erase(std::unique(c.eos_token_ids.begin(), c.eos_token_ids.end()), c.eos_token_ids.end());
  return c;
}

}  // namespace sy
