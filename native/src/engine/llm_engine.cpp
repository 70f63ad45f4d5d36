#include "engine/llm_engine.h"

#include <algorithm>
#include <thread>

namespace sy {

int default_max_num_batched_tokens(const std::string& device) {
  if (device != "cuda") return 2048;
  const CudaDeviceInfo gpu = cuda_device_info();
  // vLLM leaves A100s at 2048: larger steps lowered their throughput there (its PR #17885).
  const bool large = gpu.total_memory_bytes >= (70LL << 30) && gpu.name.find("A100") == std::string::npos;
  return large ? 8192 : 2048;
}

LlmEngine::LlmEngine(const EngineOptions& options) : options_(options), seed_source_(options.seed) {
  if (options_.block_size <= 0) throw std::runtime_error("block size must be positive");
  if (options_.max_num_batched_tokens == 0) {
    options_.max_num_batched_tokens = default_max_num_batched_tokens(options_.device);
  }
  if (options_.max_num_seqs <= 0 || options_.max_num_batched_tokens <= 0) {
    throw std::runtime_error("max_num_seqs and max_num_batched_tokens must be positive");
  }
  if (options_.dtype != "auto" && options_.dtype != "bfloat16" && options_.dtype != "float16") {
    throw std::runtime_error("dtype must be \"auto\", \"bfloat16\" or \"float16\", not \"" + options_.dtype + "\"");
  }
  model_ = std::make_unique<Qwen3Model>(options_.model_dir);
  const int model_max = model_->config().max_position_embeddings;
  max_model_len_ = options_.max_model_len > 0 ? options_.max_model_len : model_max;
  int num_blocks = 0;
  if (options_.device == "cuda") {
    CudaRunnerOptions co;
    co.block_size = options_.block_size;
    co.max_num_seqs = options_.max_num_seqs;
    co.max_num_batched_tokens = options_.max_num_batched_tokens;
    co.max_model_len = max_model_len_;
    co.gpu_memory_utilization = options_.gpu_memory_utilization;
    co.kv_cache_memory_bytes = options_.kv_cache_memory_bytes;
    co.enforce_eager = options_.enforce_eager;
    co.dtype = options_.dtype;
    cuda_ = CudaModelRunner::create(options_.model_dir, model_->config(), co);
    num_blocks = cuda_->num_kv_blocks();
  } else if (options_.device == "cpu") {
    if (options_.dtype != "auto") {
      throw std::runtime_error("dtype \"" + options_.dtype +
                               "\" applies to device \"cuda\"; the CPU engine computes in fp32 and takes only \"auto\"");
    }
    int threads = options_.threads > 0 ? options_.threads : static_cast<int>(std::thread::hardware_concurrency());
    backend_ = make_cpu_backend(std::max(1, threads), options_.reference_kernels);
    KvCacheShape shape = model_->kv_shape(options_.block_size);
    const int64_t blocks = options_.kv_cache_memory_bytes / shape.bytes_per_block();
    if (blocks < 1) {
      throw std::runtime_error("kvCacheMemoryBytes " + std::to_string(options_.kv_cache_memory_bytes) +
                               " holds no KV block; one block of this model takes " +
                               std::to_string(shape.bytes_per_block()) + " bytes");
    }
    cache_ = std::make_unique<KvCache>(shape, static_cast<int>(std::min<int64_t>(blocks, 1 << 30)));
    num_blocks = cache_->num_blocks();
  } else {
    throw std::runtime_error("device must be \"cpu\" or \"cuda\", not \"" + options_.device + "\"");
  }
  pool_ = std::make_unique<BlockPool>(num_blocks, options_.block_size, options_.enable_prefix_caching);
  scheduler_ = std::make_unique<Scheduler>(
      SchedulerConfig{options_.max_num_seqs, options_.max_num_batched_tokens}, *pool_);
  // A sequence must fit in the cache on its own, or preemption could not make room for it.
  max_model_len_ = std::min<int64_t>(max_model_len_, static_cast<int64_t>(num_blocks) * options_.block_size);
}

void LlmEngine::validate(const std::vector<int32_t>& prompt, const SamplingParams& p, const Disaggregation& d) const {
  if (prompt.empty()) throw RequestError("invalid_argument", "the prompt has no tokens");
  if (d.hold_kv_for_remote_decode && d.remote_prefill) {
    throw RequestError("invalid_argument", "a request cannot both hold its KV for a remote decode and take a remote prefill");
  }
  if (d.remote_prefill && (d.first_token < 0 || d.first_token >= model_->config().vocab_size)) {
    throw RequestError("invalid_argument", "remote prefill first token id " + std::to_string(d.first_token) +
                                               " is outside the vocabulary [0, " +
                                               std::to_string(model_->config().vocab_size) + ")");
  }
  if (static_cast<int>(prompt.size()) >= max_model_len_) {
    throw RequestError("invalid_argument", "the prompt has " + std::to_string(prompt.size()) +
                                               " tokens; this engine's max model length is " +
                                               std::to_string(max_model_len_) + ", which leaves no room to generate");
  }
  const int vocab = model_->config().vocab_size;
  for (int32_t t : prompt) {
    if (t < 0 || t >= vocab) {
      throw RequestError("invalid_argument",
                         "prompt token id " + std::to_string(t) + " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
    }
  }
  if (p.max_tokens < 1) throw RequestError("invalid_argument", "max_tokens must be at least 1");
  if (p.logprobs > vocab) throw RequestError("invalid_argument", "logprobs exceeds the vocabulary size");
}

void LlmEngine::add_request(const std::string& id, std::vector<int32_t> prompt, SamplingParams params,
                            const Disaggregation& d) {
  validate(prompt, params, d);
  if (sequences_.count(id)) throw RequestError("invalid_argument", "request id " + id + " is already running");
  if (d.hold_kv_for_remote_decode && held_.count(id)) {
    throw RequestError("invalid_argument", "request id " + id + " still holds KV blocks for a remote decode");
  }
  stalled_ = false;
  auto owned = std::make_unique<Sequence>(id, std::move(prompt), std::move(params), options_.block_size, seed_source_.next());
  Sequence* seq = owned.get();
  seq->hold_kv_for_remote_decode = d.hold_kv_for_remote_decode;
  sequences_[id] = std::move(owned);
  if (!d.remote_prefill) {
    scheduler_->add(seq);
    return;
  }
  seq->remote_first_token = d.first_token;
  if (scheduler_->reserve_remote(seq)) {
    pending_reservations_.push_back(KvReservationRecord{id, seq->block_table, seq->num_cached_blocks});
    return;
  }
  // No room for the prompt's KV now: compute it here instead, as for a preempted request.
  if (!accept_remote_first_token(seq)) scheduler_->add(seq);
}

bool LlmEngine::accept_remote_first_token(Sequence* seq) {
  seq->append_token(seq->remote_first_token);
  // The prefill worker drew once from this request's generator (same seed) to sample the first
  // token; drawing once here too keeps a seeded request on the draws one engine would make.
  if (!is_greedy(seq->sampling)) seq->rng.uniform();
  const char* reason = stop_reason(*seq);
  if (reason == nullptr) return false;
  // No token ids: the prefill worker delivered the first token; usage counts it.
  RequestOutput out = base_output(*seq);
  finish(seq, reason, &out);
  pending_outputs_.push_back(std::move(out));
  return true;
}

Sequence* LlmEngine::waiting_for_remote_kv(const std::string& id) {
  auto it = sequences_.find(id);
  if (it == sequences_.end() || it->second->status != SeqStatus::WaitingForRemoteKv) return nullptr;
  return it->second.get();
}

bool LlmEngine::end_remote_kv_wait(const std::string& id, bool kv_arrived) {
  Sequence* seq = waiting_for_remote_kv(id);
  if (seq == nullptr) return false;
  stalled_ = false;
  if (kv_arrived) {
    scheduler_->commit_remote(seq);
  } else {
    scheduler_->recompute_remote(seq);
  }
  accept_remote_first_token(seq);
  return true;
}

bool LlmEngine::release_held_kv(const std::string& id) {
  auto it = held_.find(id);
  if (it == held_.end()) return false;
  stalled_ = false;
  // Tail first, as a finished sequence releases its blocks: the prefix is likelier to be shared.
  std::vector<int32_t> reversed(it->second.block_ids.rbegin(), it->second.block_ids.rend());
  pool_->release(reversed);
  held_.erase(it);
  return true;
}

std::unique_ptr<KvLayout> LlmEngine::kv_layout() const {
  auto layout = std::make_unique<KvLayout>();
  if (cuda_) {
    const CudaKvCacheMemory m = cuda_->kv_cache_memory();
    layout->address = m.base;
    layout->length = m.bytes;
    layout->on_device = true;
    layout->device_id = m.device_id;
    layout->dtype = cuda_->dtype();
    for (int layer = 0; layer < m.num_layers; ++layer) {
      for (int kv = 0; kv < 2; ++kv) {
        layout->segments.push_back(KvLayout::Segment{(2LL * layer + kv) * m.area_bytes, m.block_bytes, m.block_bytes});
      }
    }
    return layout;
  }
  layout->address = cache_->data();
  layout->dtype = "float32";
  layout->length = cache_->bytes();
  const int64_t block_bytes = cache_->block_bytes();
  for (int layer = 0; layer < cache_->shape().num_layers; ++layer) {
    for (int kv = 0; kv < 2; ++kv) {
      layout->segments.push_back(KvLayout::Segment{cache_->layer_offset_bytes(layer, kv), block_bytes, block_bytes});
    }
  }
  return layout;
}

RequestOutput LlmEngine::base_output(const Sequence& seq) const {
  RequestOutput out;
  out.request_id = seq.request_id;
  out.prompt_tokens = seq.num_prompt_tokens;
  out.completion_tokens = seq.num_output_tokens();
  out.cached_tokens = std::max(0, seq.num_cached_prompt_tokens);
  out.has_logprobs = seq.sampling.logprobs >= 0;
  return out;
}

const char* LlmEngine::stop_reason(const Sequence& seq) const {
  const SamplingParams& p = seq.sampling;
  const int32_t token = seq.tokens.back();
  const bool past_min = seq.num_output_tokens() >= p.min_tokens;
  const auto& eos = model_->config().eos_token_ids;
  if (past_min && !p.ignore_eos && std::find(eos.begin(), eos.end(), token) != eos.end()) return "stop";
  if (past_min && std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), token) != p.stop_token_ids.end()) {
    return "stop";
  }
  if (seq.num_output_tokens() >= p.max_tokens || seq.num_tokens() >= max_model_len_) return "length";
  return nullptr;
}

void LlmEngine::finish(Sequence* seq, const std::string& reason, RequestOutput* out) {
  if (seq->hold_kv_for_remote_decode && (reason == "stop" || reason == "length")) {
    // Every token was computed before the last was sampled, so the prompt's blocks hold its KV
    // (on the GPU too: sampling waits for the step's kernels before the token is known).
    HeldKv held{scheduler_->remove_keeping_prefix(seq, seq->num_prompt_blocks()), seq->num_prompt_tokens};
    out->has_held_kv = true;
    out->held_block_ids = held.block_ids;
    out->held_num_tokens = held.num_tokens;
    held_[seq->request_id] = std::move(held);
  } else {
    scheduler_->remove(seq);
  }
  out->finish_reason = reason;
  sequences_.erase(seq->request_id);  // destroys seq
}

bool LlmEngine::abort_request(const std::string& id) {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) return false;
  stalled_ = false;
  RequestOutput out = base_output(*it->second);
  finish(it->second.get(), "cancelled", &out);
  pending_outputs_.push_back(std::move(out));
  return true;
}

StepResult LlmEngine::step() {
  StepResult result;
  result.outputs.swap(pending_outputs_);
  const int64_t preemptions_before = scheduler_->preemptions();
  SchedulerOutput plan = scheduler_->schedule();
  result.num_tokens = plan.num_tokens;
  stalled_ = plan.scheduled.empty() && scheduler_->preemptions() == preemptions_before;

  // Flatten the scheduled tokens; the ones whose logits are needed are the last of each
  // sequence that has all its known tokens computed after this step.
  ForwardBatch& b = batch_;
  b.tokens.clear();
  b.positions.clear();
  b.slots.clear();
  b.token_seq.clear();
  b.block_tables.clear();
  b.logit_tokens.clear();
  std::vector<Sequence*> sampled;
  const int bs = options_.block_size;
  for (size_t s = 0; s < plan.scheduled.size(); ++s) {
    Sequence* seq = plan.scheduled[s].seq;
    const int start = seq->num_computed_tokens, n = plan.scheduled[s].num_new_tokens;
    for (int pos = start; pos < start + n; ++pos) {
      b.tokens.push_back(seq->tokens[pos]);
      b.positions.push_back(pos);
      b.slots.push_back(seq->block_table[pos / bs] * bs + pos % bs);
      b.token_seq.push_back(static_cast<int32_t>(s));
    }
    b.block_tables.push_back(seq->block_table.data());
    if (start + n == seq->num_tokens()) {
      b.logit_tokens.push_back(static_cast<int32_t>(b.tokens.size()) - 1);
      sampled.push_back(seq);
    }
  }
  const int vocab = model_->config().vocab_size;
  std::vector<SampledToken> tokens(sampled.size());
  auto context_of = [&](const Sequence* seq) {
    return SamplingContext{seq->tokens.data(), seq->num_prompt_tokens, seq->output_tokens(), seq->num_output_tokens(),
                           &model_->config().eos_token_ids};
  };
  if (cuda_) {
    std::vector<SampleRequest> requests;
    for (Sequence* seq : sampled) requests.push_back({&seq->sampling, context_of(seq), &seq->rng});
    if (!b.tokens.empty()) cuda_->step(b, requests, &tokens);
  } else if (!b.tokens.empty()) {
    logits_.resize(static_cast<size_t>(b.logit_tokens.size()) * vocab);
    model_->forward(b, *cache_, *backend_, logits_.data());
    for (size_t i = 0; i < sampled.size(); ++i) {
      tokens[i] = sample_token(logits_.data() + i * vocab, vocab, sampled[i]->sampling, context_of(sampled[i]),
                               sampled[i]->rng);
    }
  }
  scheduler_->on_computed(plan);

  for (size_t i = 0; i < sampled.size(); ++i) {
    Sequence* seq = sampled[i];
    SampledToken& tok = tokens[i];
    seq->append_token(tok.token);
    RequestOutput out = base_output(*seq);
    out.token_ids.push_back(tok.token);
    if (out.has_logprobs) out.logprobs.push_back(std::move(tok));
    if (const char* reason = stop_reason(*seq)) finish(seq, reason, &out);
    result.outputs.push_back(std::move(out));
  }
  // Taken last: if the forward pass throws they are delivered by the next step, since a
  // reservation lost on the way would leave its request waiting for good.
  if (cuda_ && !pending_reservations_.empty()) {
    // A reserved block may have been another sequence's until this step's commands, and a
    // prompt-chunk step (no sampling, so no synchronize) may still be storing KV into it:
    // the copy into it must not start before those stores end. Once committed, the blocks
    // are read only by steps launched after the copy's own stream synchronize (the agent
    // reports a read done only then), so that direction needs nothing here.
    cuda_->synchronize();
  }
  result.reservations.swap(pending_reservations_);
  result.events = pool_->take_events();
  return result;
}

void LlmEngine::fail_all(const std::string& message) {
  std::vector<Sequence*> all;
  // Sequences waiting for remote KV took no part in the step, and a copy may still be writing
  // into their blocks: they must not be released before it ends (commit or recompute).
  for (auto& [id, seq] : sequences_)
    if (seq->status != SeqStatus::WaitingForRemoteKv) all.push_back(seq.get());
  for (Sequence* seq : all) {
    RequestOutput out = base_output(*seq);
    out.error_message = message;
    finish(seq, "error", &out);
    pending_outputs_.push_back(std::move(out));
  }
}

EngineStats LlmEngine::stats() const {
  EngineStats s;
  s.running = scheduler_->num_running();
  s.waiting = scheduler_->num_waiting() + scheduler_->num_waiting_for_remote_kv();
  s.kv_blocks_total = pool_->num_blocks();
  s.kv_blocks_used = pool_->num_blocks() - pool_->num_free();
  s.prefix_cache_queries = scheduler_->prefix_cache_queries();
  s.prefix_cache_hits = scheduler_->prefix_cache_hits();
  s.preemptions = scheduler_->preemptions();
  return s;
}

std::string LlmEngine::check_invariants() const {
  std::string problem = pool_->check_invariants();
  if (problem.empty()) problem = scheduler_->check_invariants();
  if (!problem.empty()) return problem;
  const int bs = options_.block_size;
  for (const auto& [id, held] : held_) {
    if (static_cast<int>(held.block_ids.size()) != (held.num_tokens + bs - 1) / bs) {
      return "request " + id + " holds a block count that does not match its prompt";
    }
  }
  // Every reference is held by exactly one block-table or held-KV entry.
  std::vector<int> refs(pool_->num_blocks(), 0);
  for (const auto& [id, seq] : sequences_)
    for (int32_t b : seq->block_table) ++refs[b];
  for (const auto& [id, held] : held_)
    for (int32_t b : held.block_ids) ++refs[b];
  const size_t queued = static_cast<size_t>(scheduler_->num_waiting()) + scheduler_->num_running() +
                        scheduler_->num_waiting_for_remote_kv();
  if (queued != sequences_.size()) return "the scheduler's queues and the engine's requests disagree";
  for (int b = 0; b < pool_->num_blocks(); ++b) {
    if (refs[b] != pool_->ref_count(b)) return "block " + std::to_string(b) + " reference count disagrees with block tables";
  }
  return "";
}

}  // namespace sy
