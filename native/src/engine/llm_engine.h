// The engine core: a model, its paged KV cache, the block pool, the scheduler and the
// sampler, driven one step at a time. Not thread-safe by itself: EngineLoop runs it on its
// own thread and is the only caller of add/abort/step.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/block_pool.h"
#include "engine/scheduler.h"
#include "engine/sequence.h"
#include "kernels/backend.h"
#include "model/kv_cache.h"
#include "model/qwen3.h"
#include "model/qwen3_cuda.h"
#include "sampler/sampler.h"

namespace sy {

struct EngineOptions {
  std::string model_dir;
  int block_size = 16;
  int64_t kv_cache_memory_bytes = 256LL << 20;
  int max_num_seqs = 256;
  int max_num_batched_tokens = 2048;
  int max_model_len = 0;  // 0: the model's max_position_embeddings
  bool enable_prefix_caching = true;
  int threads = 0;  // 0: all hardware threads
  bool reference_kernels = false;
  uint64_t seed = 0;  // for requests without their own seed
  std::string device = "cpu";  // "cpu" or "cuda"
  /** cuda: share of the GPU's memory for weights, activations and KV cache together. */
  double gpu_memory_utilization = 0.9;
  /** cuda: no CUDA graphs for decode steps. */
  bool enforce_eager = false;
};

/** Thrown for a request the engine can never serve; the binding maps `code` to EngineError. */
struct RequestError : std::runtime_error {
  RequestError(std::string code_, const std::string& msg) : std::runtime_error(msg), code(std::move(code_)) {}
  std::string code;
};

struct RequestOutput {
  std::string request_id;
  std::vector<int32_t> token_ids;
  bool has_logprobs = false;
  std::vector<SampledToken> logprobs;
  std::string finish_reason;  // "", "stop", "length", "cancelled", "error"
  std::string error_message;
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_tokens = 0;
};

struct StepResult {
  std::vector<RequestOutput> outputs;
  std::vector<KvEventRecord> events;
  int num_tokens = 0;  // tokens the forward pass computed
};

struct EngineStats {
  int running = 0, waiting = 0, kv_blocks_used = 0, kv_blocks_total = 0;
  int64_t prefix_cache_queries = 0, prefix_cache_hits = 0, preemptions = 0;
};

class LlmEngine {
 public:
  explicit LlmEngine(const EngineOptions& options);

  const ModelConfig& model_config() const { return model_->config(); }
  int block_size() const { return options_.block_size; }
  int max_model_len() const { return max_model_len_; }
  int num_kv_blocks() const { return pool_->num_blocks(); }
  int64_t weight_bytes_per_step() const { return model_->weight_bytes_per_step(); }
  const char* backend_name() const { return cuda_ ? cuda_->name() : backend_->name(); }

  /** Throws RequestError for a request this engine can never serve. Thread-safe (reads config only). */
  void validate(const std::vector<int32_t>& prompt, const SamplingParams& params) const;
  void add_request(const std::string& id, std::vector<int32_t> prompt, SamplingParams params);
  /** Finishes the request as cancelled; its output is part of the next step's result. */
  bool abort_request(const std::string& id);
  bool has_work() const { return scheduler_->has_unfinished() || !pending_outputs_.empty(); }
  StepResult step();
  /** Ends every request with finish reason "error" (after a step failed). */
  void fail_all(const std::string& message);
  EngineStats stats() const;
  std::vector<KvEventRecord> kv_snapshot() const { return pool_->snapshot(); }
  std::string check_invariants() const;

 private:
  RequestOutput base_output(const Sequence& seq) const;
  void finish(Sequence* seq, const std::string& reason, RequestOutput* out);

  EngineOptions options_;
  std::unique_ptr<Qwen3Model> model_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<KvCache> cache_;
  std::unique_ptr<CudaModelRunner> cuda_;  // device "cuda": forward pass, KV cache and sampling on the GPU
  std::unique_ptr<BlockPool> pool_;
  std::unique_ptr<Scheduler> scheduler_;
  std::map<std::string, std::unique_ptr<Sequence>> sequences_;
  std::vector<RequestOutput> pending_outputs_;
  std::vector<float> logits_;
  ForwardBatch batch_;
  Rng seed_source_;
  int max_model_len_ = 0;
};

}  // namespace sy
