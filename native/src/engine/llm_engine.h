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

/**
 * Tokens an engine step takes when the caller does not say: 2048, or 8192 on a CUDA GPU of 70
 * GiB or more other than an A100, which is vLLM's choice for its OpenAI server on such GPUs.
 * Larger steps fill a large GPU better (prefill 336 618 -> 354 213 tok/s in float16 on an H200,
 * bench/RESULTS.md); the price is longer steps when long prompts share them with decodes.
 */
int default_max_num_batched_tokens(const std::string& device);

struct EngineOptions {
  std::string model_dir;
  int block_size = 16;
  int64_t kv_cache_memory_bytes = 256LL << 20;
  int max_num_seqs = 256;
  int max_num_batched_tokens = 0;  // 0: default_max_num_batched_tokens(device)
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
  /** cuda: "auto", "bfloat16" or "float16" (CudaRunnerOptions::dtype); the CPU engine computes in fp32 and takes only "auto". */
  std::string dtype = "auto";
};

/** Disaggregated serving options of one request; see EngineRequest in src/engine/engine.ts. */
struct Disaggregation {
  /** Prefill side: on a normal finish, keep the prompt's blocks for a remote decode to read. */
  bool hold_kv_for_remote_decode = false;
  /** Decode side: the prompt was prefilled elsewhere, which sampled `first_token`. */
  bool remote_prefill = false;
  int32_t first_token = -1;
};

/** Blocks reserved for a remote-prefilled prompt, for the caller to copy the KV into. */
struct KvReservationRecord {
  std::string request_id;
  std::vector<int32_t> block_ids;  // one per block_size prompt tokens, in position order
  int num_cached_blocks = 0;       // leading blocks that prefix-cache hits already fill
};

/** Where the KV cache lives, for a transfer agent; see KvMemoryLayout in src/engine/engine.ts. */
struct KvLayout {
  void* address = nullptr;
  int64_t length = 0;
  bool on_device = false;  // CUDA device memory (one allocation) rather than host memory
  int device_id = 0;
  std::string dtype;  // of the cached K and V: "float32" (CPU), "bfloat16" or "float16"
  struct Segment {
    int64_t offset, block_stride, block_bytes;
  };
  std::vector<Segment> segments;
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
  /** Set on the final output of a hold_kv_for_remote_decode request that finished normally. */
  bool has_held_kv = false;
  std::vector<int32_t> held_block_ids;
  int held_num_tokens = 0;
};

struct StepResult {
  std::vector<RequestOutput> outputs;
  std::vector<KvEventRecord> events;
  int num_tokens = 0;  // tokens the forward pass computed
  std::vector<KvReservationRecord> reservations;
  std::vector<int64_t> barriers;  // EngineLoop: barrier commands applied before this result
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
  int max_num_batched_tokens() const { return options_.max_num_batched_tokens; }
  int max_model_len() const { return max_model_len_; }
  int num_kv_blocks() const { return pool_->num_blocks(); }
  int64_t weight_bytes_per_step() const { return model_->weight_bytes_per_step(); }
  const char* backend_name() const { return cuda_ ? cuda_->name() : backend_->name(); }
  std::string backend_detail() const { return cuda_ ? cuda_->detail() : std::string(); }
  /** The type the forward pass keeps weights, KV cache and GEMM inputs in. */
  const char* dtype() const { return cuda_ ? cuda_->dtype() : "float32"; }

  /** Throws RequestError for a request this engine can never serve. Thread-safe (reads config only). */
  void validate(const std::vector<int32_t>& prompt, const SamplingParams& params,
                const Disaggregation& disaggregation = {}) const;
  /**
   * Queues a request. With remote_prefill, reserves blocks for its prompt (the reservation is
   * part of the next step's result) or, when the pool cannot hold them now, queues it to
   * compute its prompt here.
   */
  void add_request(const std::string& id, std::vector<int32_t> prompt, SamplingParams params,
                   const Disaggregation& disaggregation = {});
  /** Finishes the request as cancelled; its output is part of the next step's result. */
  bool abort_request(const std::string& id);
  /**
   * The copy into a remote-prefilled request's reserved blocks ended. kv_arrived: the blocks
   * hold the prompt's KV and it decodes on; else the reservation is dropped and it computes the
   * prompt here. Either way the remote first token becomes its first output token.
   */
  bool end_remote_kv_wait(const std::string& id, bool kv_arrived);
  /** Releases the blocks a finished hold_kv_for_remote_decode request kept. */
  bool release_held_kv(const std::string& id);
  /** Host memory on the cpu device; on cuda the CUDA runner's one device allocation. */
  std::unique_ptr<KvLayout> kv_layout() const;
  /** A step could make progress (a step that scheduled nothing waits for the next command). */
  bool has_work() const {
    return (scheduler_->has_unfinished() && !stalled_) || !pending_outputs_.empty() || !pending_reservations_.empty();
  }
  StepResult step();
  /** Ends every request with finish reason "error" (after a step failed). */
  void fail_all(const std::string& message);
  EngineStats stats() const;
  std::vector<KvEventRecord> kv_snapshot() const { return pool_->snapshot(); }
  std::string check_invariants() const;

 private:
  RequestOutput base_output(const Sequence& seq) const;
  /** "stop" or "length" when `seq` ends with its newest output token, else nullptr. */
  const char* stop_reason(const Sequence& seq) const;
  void finish(Sequence* seq, const std::string& reason, RequestOutput* out);
  /** Appends a remote prefill's first token as an output token; true when that finished the request. */
  bool accept_remote_first_token(Sequence* seq);
  Sequence* waiting_for_remote_kv(const std::string& id);

  EngineOptions options_;
  std::unique_ptr<Qwen3Model> model_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<KvCache> cache_;
  std::unique_ptr<CudaModelRunner> cuda_;  // device "cuda": forward pass, KV cache and sampling on the GPU
  std::unique_ptr<BlockPool> pool_;
  std::unique_ptr<Scheduler> scheduler_;
  std::map<std::string, std::unique_ptr<Sequence>> sequences_;
  std::vector<RequestOutput> pending_outputs_;
  std::vector<KvReservationRecord> pending_reservations_;
  struct HeldKv {
    std::vector<int32_t> block_ids;
    int num_tokens;
  };
  std::map<std::string, HeldKv> held_;  // by request id
  /**
   * The last step scheduled nothing and nothing changed since: held or reserved blocks can
   * leave a waiting sequence no room with nothing running, and stepping again would spin.
   */
  bool stalled_ = false;
  std::vector<float> logits_;
  ForwardBatch batch_;
  Rng seed_source_;
  int max_model_len_ = 0;
};

}  // namespace sy
