// The Node-API binding: `Engine` wraps an EngineLoop. Step results cross from the engine
// thread to JavaScript through one thread-safe function, one call per step, so outputs and
// KV events arrive in step order and the event loop never waits for a step. Every C++
// exception becomes a JavaScript Error; nothing here aborts the process.
#include <napi.h>

#include <memory>

#include "engine/block_hash.h"
#include "engine/engine_loop.h"
#include "model/qwen3_cuda.h"
#include "util/xxh64.h"

namespace sy {
namespace {

int64_t get_int(const Napi::Object& o, const char* key, int64_t fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  if (v.IsBigInt()) {
    bool lossless;
    return v.As<Napi::BigInt>().Int64Value(&lossless);
  }
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string(key) + " must be a number");
  return v.As<Napi::Number>().Int64Value();
}

double get_number(const Napi::Object& o, const char* key, double fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string(key) + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

bool get_bool(const Napi::Object& o, const char* key, bool fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  return v.ToBoolean().Value();
}

std::vector<int32_t> get_int_array(Napi::Env env, Napi::Value v, const char* what) {
  std::vector<int32_t> out;
  if (v.IsUndefined() || v.IsNull()) return out;
  if (v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_int32_array) {
    auto a = v.As<Napi::Int32Array>();
    out.assign(a.Data(), a.Data() + a.ElementLength());
    return out;
  }
  if (!v.IsArray()) throw Napi::TypeError::New(env, std::string(what) + " must be an array of integers");
  auto a = v.As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Value e = a.Get(i);
    if (!e.IsNumber()) throw Napi::TypeError::New(env, std::string(what) + " must be an array of integers");
    out.push_back(e.As<Napi::Number>().Int32Value());
  }
  return out;
}

SamplingParams parse_sampling(Napi::Env env, const Napi::Object& o) {
  SamplingParams p;
  p.temperature = static_cast<float>(get_number(o, "temperature", 1.0));
  p.top_p = static_cast<float>(get_number(o, "topP", 1.0));
  p.top_k = static_cast<int>(get_int(o, "topK", 0));
  p.min_p = static_cast<float>(get_number(o, "minP", 0.0));
  Napi::Value seed = o.Get("seed");
  if (!seed.IsUndefined() && !seed.IsNull()) {
    p.has_seed = true;
    if (seed.IsBigInt()) {
      bool lossless;
      p.seed = seed.As<Napi::BigInt>().Uint64Value(&lossless);
    } else {
      p.seed = static_cast<uint64_t>(seed.As<Napi::Number>().Int64Value());
    }
  }
  p.max_tokens = static_cast<int>(get_int(o, "maxTokens", 16));
  p.min_tokens = static_cast<int>(get_int(o, "minTokens", 0));
  p.stop_token_ids = get_int_array(env, o.Get("stopTokenIds"), "stopTokenIds");
  p.ignore_eos = get_bool(o, "ignoreEos", false);
  p.presence_penalty = static_cast<float>(get_number(o, "presencePenalty", 0.0));
  p.frequency_penalty = static_cast<float>(get_number(o, "frequencyPenalty", 0.0));
  p.repetition_penalty = static_cast<float>(get_number(o, "repetitionPenalty", 1.0));
  p.logprobs = static_cast<int>(get_int(o, "logprobs", -1));
  return p;
}

Napi::Array to_js_ints(Napi::Env env, const std::vector<int32_t>& v) {
  Napi::Array a = Napi::Array::New(env, v.size());
  for (size_t i = 0; i < v.size(); ++i) a.Set(static_cast<uint32_t>(i), Napi::Number::New(env, v[i]));
  return a;
}

Napi::Array to_js_hashes(Napi::Env env, const std::vector<uint64_t>& v) {
  Napi::Array a = Napi::Array::New(env, v.size());
  for (size_t i = 0; i < v.size(); ++i) a.Set(static_cast<uint32_t>(i), Napi::BigInt::New(env, v[i]));
  return a;
}

Napi::Array to_js_events(Napi::Env env, const std::vector<KvEventRecord>& events, int block_size) {
  Napi::Array a = Napi::Array::New(env, events.size());
  for (size_t i = 0; i < events.size(); ++i) {
    const KvEventRecord& e = events[i];
    Napi::Object o = Napi::Object::New(env);
    switch (e.type) {
      case KvEventRecord::Type::Stored:
        o.Set("type", "stored");
        o.Set("blockHashes", to_js_hashes(env, e.block_hashes));
        if (e.has_parent) o.Set("parentBlockHash", Napi::BigInt::New(env, e.parent_hash));
        o.Set("tokenIds", to_js_ints(env, e.token_ids));
        o.Set("blockSize", Napi::Number::New(env, block_size));
        break;
      case KvEventRecord::Type::Removed:
        o.Set("type", "removed");
        o.Set("blockHashes", to_js_hashes(env, e.block_hashes));
        break;
      case KvEventRecord::Type::Cleared:
        o.Set("type", "cleared");
        break;
    }
    a.Set(static_cast<uint32_t>(i), o);
  }
  return a;
}

Napi::Object to_js_top(Napi::Env env, int32_t token, float logprob) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("tokenId", Napi::Number::New(env, token));
  o.Set("logprob", Napi::Number::New(env, logprob));
  return o;
}

Napi::Array to_js_outputs(Napi::Env env, const std::vector<RequestOutput>& outputs) {
  Napi::Array a = Napi::Array::New(env, outputs.size());
  for (size_t i = 0; i < outputs.size(); ++i) {
    const RequestOutput& r = outputs[i];
    Napi::Object o = Napi::Object::New(env);
    o.Set("requestId", r.request_id);
    o.Set("tokenIds", to_js_ints(env, r.token_ids));
    if (r.has_logprobs) {
      Napi::Array lps = Napi::Array::New(env, r.logprobs.size());
      for (size_t j = 0; j < r.logprobs.size(); ++j) {
        const SampledToken& s = r.logprobs[j];
        Napi::Object lp = to_js_top(env, s.token, s.logprob);
        Napi::Array top = Napi::Array::New(env, s.top.size());
        for (size_t k = 0; k < s.top.size(); ++k) top.Set(static_cast<uint32_t>(k), to_js_top(env, s.top[k].token, s.top[k].logprob));
        lp.Set("top", top);
        lps.Set(static_cast<uint32_t>(j), lp);
      }
      o.Set("logprobs", lps);
    }
    if (!r.finish_reason.empty()) o.Set("finishReason", r.finish_reason);
    if (!r.error_message.empty()) o.Set("errorMessage", r.error_message);
    o.Set("promptTokens", Napi::Number::New(env, r.prompt_tokens));
    o.Set("completionTokens", Napi::Number::New(env, r.completion_tokens));
    o.Set("cachedTokens", Napi::Number::New(env, r.cached_tokens));
    if (r.has_held_kv) {
      Napi::Object held = Napi::Object::New(env);
      held.Set("blockIds", to_js_ints(env, r.held_block_ids));
      held.Set("numTokens", Napi::Number::New(env, r.held_num_tokens));
      o.Set("heldKv", held);
    }
    a.Set(static_cast<uint32_t>(i), o);
  }
  return a;
}

Napi::Array to_js_reservations(Napi::Env env, const std::vector<KvReservationRecord>& reservations) {
  Napi::Array a = Napi::Array::New(env, reservations.size());
  for (size_t i = 0; i < reservations.size(); ++i) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("requestId", reservations[i].request_id);
    o.Set("blockIds", to_js_ints(env, reservations[i].block_ids));
    o.Set("numCachedBlocks", Napi::Number::New(env, reservations[i].num_cached_blocks));
    a.Set(static_cast<uint32_t>(i), o);
  }
  return a;
}

Napi::Array to_js_barriers(Napi::Env env, const std::vector<int64_t>& barriers) {
  Napi::Array a = Napi::Array::New(env, barriers.size());
  for (size_t i = 0; i < barriers.size(); ++i) {
    a.Set(static_cast<uint32_t>(i), Napi::Number::New(env, static_cast<double>(barriers[i])));
  }
  return a;
}

// { holdKvForRemoteDecode?: boolean, remoteFirstTokenId?: number }
Disaggregation parse_disaggregation(Napi::Env env, Napi::Value v) {
  Disaggregation d;
  if (v.IsUndefined() || v.IsNull()) return d;
  if (!v.IsObject()) throw Napi::TypeError::New(env, "disaggregation must be an object");
  Napi::Object o = v.As<Napi::Object>();
  d.hold_kv_for_remote_decode = get_bool(o, "holdKvForRemoteDecode", false);
  Napi::Value first = o.Get("remoteFirstTokenId");
  if (!first.IsUndefined() && !first.IsNull()) {
    if (!first.IsNumber()) throw Napi::TypeError::New(env, "remoteFirstTokenId must be a token id");
    d.remote_prefill = true;
    d.first_token = first.As<Napi::Number>().Int32Value();
  }
  return d;
}

class EngineHandle : public Napi::ObjectWrap<EngineHandle> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Engine",
                       {
                           InstanceMethod("add", &EngineHandle::Add),
                           InstanceMethod("abort", &EngineHandle::Abort),
                           InstanceMethod("commitRemoteKv", &EngineHandle::CommitRemoteKv),
                           InstanceMethod("recomputeRemoteKv", &EngineHandle::RecomputeRemoteKv),
                           InstanceMethod("releaseHeldKv", &EngineHandle::ReleaseHeldKv),
                           InstanceMethod("barrier", &EngineHandle::Barrier),
                           InstanceMethod("kvLayout", &EngineHandle::KvLayoutInfo),
                           InstanceMethod("stats", &EngineHandle::Stats),
                           InstanceMethod("kvSnapshot", &EngineHandle::KvSnapshot),
                           InstanceMethod("checkInvariants", &EngineHandle::CheckInvariants),
                           InstanceMethod("info", &EngineHandle::Info),
                           InstanceMethod("ref", &EngineHandle::Ref),
                           InstanceMethod("unref", &EngineHandle::Unref),
                           InstanceMethod("close", &EngineHandle::Close),
                       });
  }

  // new Engine(options, onStep(outputs, events, numTokens, reservations, barriers))
  EngineHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineHandle>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction()) {
      throw Napi::TypeError::New(env, "new Engine(options, onStep) expects an options object and a function");
    }
    Napi::Object o = info[0].As<Napi::Object>();
    EngineOptions opts;
    Napi::Value model = o.Get("model");
    if (!model.IsString()) throw Napi::TypeError::New(env, "options.model must be a model folder path");
    opts.model_dir = model.As<Napi::String>().Utf8Value();
    Napi::Value device = o.Get("device");
    if (!device.IsUndefined() && !device.IsNull()) {
      if (!device.IsString()) throw Napi::TypeError::New(env, "options.device must be \"cpu\" or \"cuda\"");
      opts.device = device.As<Napi::String>().Utf8Value();
    }
    opts.gpu_memory_utilization = get_number(o, "gpuMemoryUtilization", opts.gpu_memory_utilization);
    opts.enforce_eager = get_bool(o, "enforceEager", opts.enforce_eager);
    Napi::Value dtype = o.Get("dtype");
    if (!dtype.IsUndefined() && !dtype.IsNull()) {
      if (!dtype.IsString()) throw Napi::TypeError::New(env, "options.dtype must be \"auto\", \"bfloat16\" or \"float16\"");
      opts.dtype = dtype.As<Napi::String>().Utf8Value();
    }
    opts.block_size = static_cast<int>(get_int(o, "blockSize", opts.block_size));
    // On the GPU the cache is sized by gpuMemoryUtilization unless a byte count is given.
    opts.kv_cache_memory_bytes = get_int(o, "kvCacheMemoryBytes", opts.device == "cuda" ? 0 : opts.kv_cache_memory_bytes);
    opts.max_num_seqs = static_cast<int>(get_int(o, "maxNumSeqs", opts.max_num_seqs));
    opts.max_num_batched_tokens = static_cast<int>(get_int(o, "maxNumBatchedTokens", opts.max_num_batched_tokens));
    opts.max_model_len = static_cast<int>(get_int(o, "maxModelLen", 0));
    opts.enable_prefix_caching = get_bool(o, "enablePrefixCaching", true);
    opts.threads = static_cast<int>(get_int(o, "threads", 0));
    opts.reference_kernels = get_bool(o, "referenceKernels", false);
    opts.seed = static_cast<uint64_t>(get_int(o, "seed", 0));
    std::unique_ptr<LlmEngine> engine;
    try {
      engine = std::make_unique<LlmEngine>(opts);
    } catch (const std::exception& e) {
      throw Napi::Error::New(env, e.what());
    }
    block_size_ = opts.block_size;
    tsfn_ = Napi::ThreadSafeFunction::New(env, info[1].As<Napi::Function>(), "switchyard-engine", 0, 1);
    tsfn_.Unref(env);  // an idle engine does not keep Node alive; the JS side refs while requests run
    auto tsfn = tsfn_;
    const int bs = block_size_;
    loop_ = std::make_unique<EngineLoop>(std::move(engine), [tsfn, bs](StepResult&& r) mutable {
      auto* payload = new StepResult(std::move(r));
      napi_status status = tsfn.NonBlockingCall(payload, [bs](Napi::Env env, Napi::Function fn, StepResult* step) {
        std::unique_ptr<StepResult> owned(step);
        if (env == nullptr || fn.IsEmpty()) return;
        fn.Call({to_js_outputs(env, owned->outputs), to_js_events(env, owned->events, bs),
                 Napi::Number::New(env, owned->num_tokens), to_js_reservations(env, owned->reservations),
                 to_js_barriers(env, owned->barriers)});
      });
      if (status != napi_ok) delete payload;  // the function was released: JS is gone
    });
  }

  ~EngineHandle() override {
    if (loop_) loop_->stop();
    if (!released_) tsfn_.Release();
  }

 private:
  EngineLoop& loop(Napi::Env env) {
    if (closed_ || !loop_) throw Napi::Error::New(env, "the engine is closed");  // closed_ first: a CloseWorker may be resetting loop_
    return *loop_;
  }

  // add(requestId, promptTokenIds, sampling, disaggregation?); throws an Error with .code for a bad request.
  Napi::Value Add(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[0].IsString() || !info[2].IsObject()) {
      throw Napi::TypeError::New(env, "add(requestId, promptTokenIds, sampling, disaggregation?)");
    }
    std::vector<int32_t> prompt = get_int_array(env, info[1], "promptTokenIds");
    SamplingParams params = parse_sampling(env, info[2].As<Napi::Object>());
    Disaggregation disaggregation = parse_disaggregation(env, info[3]);
    try {
      loop(env).add(info[0].As<Napi::String>().Utf8Value(), std::move(prompt), std::move(params), disaggregation);
    } catch (const RequestError& e) {
      Napi::Error err = Napi::Error::New(env, e.what());
      err.Set("code", Napi::String::New(env, e.code));
      throw err;
    }
    return env.Undefined();
  }

  Napi::Value Abort(const Napi::CallbackInfo& info) {
    loop(info.Env()).abort(request_id(info));
    return info.Env().Undefined();
  }

  Napi::Value CommitRemoteKv(const Napi::CallbackInfo& info) {
    loop(info.Env()).commit_remote_kv(request_id(info));
    return info.Env().Undefined();
  }

  Napi::Value RecomputeRemoteKv(const Napi::CallbackInfo& info) {
    loop(info.Env()).recompute_remote_kv(request_id(info));
    return info.Env().Undefined();
  }

  Napi::Value ReleaseHeldKv(const Napi::CallbackInfo& info) {
    loop(info.Env()).release_held_kv(request_id(info));
    return info.Env().Undefined();
  }

  // barrier(id): `id` comes back in onStep's barriers once every earlier call is applied.
  Napi::Value Barrier(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "barrier(id: number)");
    loop(env).barrier(info[0].As<Napi::Number>().Int64Value());
    return env.Undefined();
  }

  // kvLayout(): { memory: { kind: "host" | "cuda", address, length, deviceId }, segments, dtype }.
  Napi::Value KvLayoutInfo(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::unique_ptr<KvLayout> layout = loop(env).engine().kv_layout();
    Napi::Object memory = Napi::Object::New(env);
    memory.Set("kind", layout->on_device ? "cuda" : "host");
    memory.Set("address", Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(layout->address))));
    memory.Set("length", Napi::Number::New(env, static_cast<double>(layout->length)));
    memory.Set("deviceId", Napi::Number::New(env, layout->device_id));
    Napi::Array segments = Napi::Array::New(env, layout->segments.size());
    for (size_t i = 0; i < layout->segments.size(); ++i) {
      Napi::Object s = Napi::Object::New(env);
      s.Set("offset", Napi::Number::New(env, static_cast<double>(layout->segments[i].offset)));
      s.Set("blockStride", Napi::Number::New(env, static_cast<double>(layout->segments[i].block_stride)));
      s.Set("blockBytes", Napi::Number::New(env, static_cast<double>(layout->segments[i].block_bytes)));
      segments.Set(static_cast<uint32_t>(i), s);
    }
    Napi::Object o = Napi::Object::New(env);
    o.Set("memory", memory);
    o.Set("segments", segments);
    o.Set("dtype", layout->dtype);
    return o;
  }

  static std::string request_id(const Napi::CallbackInfo& info) {
    if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(info.Env(), "expected a request id string");
    return info[0].As<Napi::String>().Utf8Value();
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    EngineStats s = loop(env).stats();
    Napi::Object o = Napi::Object::New(env);
    o.Set("runningRequests", s.running);
    o.Set("waitingRequests", s.waiting);
    o.Set("kvBlocksUsed", s.kv_blocks_used);
    o.Set("kvBlocksTotal", s.kv_blocks_total);
    o.Set("prefixCacheQueries", Napi::Number::New(env, static_cast<double>(s.prefix_cache_queries)));
    o.Set("prefixCacheHits", Napi::Number::New(env, static_cast<double>(s.prefix_cache_hits)));
    o.Set("preemptions", Napi::Number::New(env, static_cast<double>(s.preemptions)));
    return o;
  }

  Napi::Value KvSnapshot(const Napi::CallbackInfo& info) {
    return to_js_events(info.Env(), loop(info.Env()).kv_snapshot(), block_size_);
  }

  Napi::Value CheckInvariants(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), loop(info.Env()).check_invariants());
  }

  Napi::Value Info(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const LlmEngine& e = loop(env).engine();
    const ModelConfig& c = e.model_config();
    Napi::Object o = Napi::Object::New(env);
    o.Set("architecture", c.architecture);
    o.Set("blockSize", e.block_size());
    o.Set("maxModelLen", e.max_model_len());
    o.Set("maxNumBatchedTokens", e.max_num_batched_tokens());
    o.Set("numKvBlocks", e.num_kv_blocks());
    o.Set("vocabSize", c.vocab_size);
    o.Set("eosTokenIds", to_js_ints(env, c.eos_token_ids));
    o.Set("weightBytesPerStep", Napi::Number::New(env, static_cast<double>(e.weight_bytes_per_step())));
    o.Set("backend", e.backend_name());
    o.Set("backendDetail", e.backend_detail());
    o.Set("dtype", e.dtype());
    return o;
  }

  Napi::Value Ref(const Napi::CallbackInfo& info) {
    if (!released_) tsfn_.Ref(info.Env());
    return info.Env().Undefined();
  }
  Napi::Value Unref(const Napi::CallbackInfo& info) {
    if (!released_) tsfn_.Unref(info.Env());
    return info.Env().Undefined();
  }

  class CloseWorker : public Napi::AsyncWorker {
   public:
    CloseWorker(Napi::Env env, EngineHandle* handle)
        : Napi::AsyncWorker(env), handle_(handle), deferred_(Napi::Promise::Deferred::New(env)) {}
    Napi::Promise promise() { return deferred_.Promise(); }
    // The engine goes here, not when the garbage collector gets to the handle: its model,
    // KV cache and (on the GPU) device memory, streams and graphs are freed before close()
    // resolves, so an engine loaded next in the same process finds that memory free.
    void Execute() override { handle_->loop_.reset(); }
    void OnOK() override {
      handle_->Napi::ObjectWrap<EngineHandle>::Unref();
      if (!handle_->released_) {
        handle_->released_ = true;
        handle_->tsfn_.Release();
      }
      deferred_.Resolve(Env().Undefined());
    }
    void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

   private:
    EngineHandle* handle_;
    Napi::Promise::Deferred deferred_;
  };

  // Resolves once the engine thread has finished its step and exited and the engine is freed.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_) {
      auto d = Napi::Promise::Deferred::New(env);
      d.Resolve(env.Undefined());
      return d.Promise();
    }
    closed_ = true;
    Napi::ObjectWrap<EngineHandle>::Ref();  // keeps this object alive until the worker is done
    auto* worker = new CloseWorker(env, this);
    Napi::Promise p = worker->promise();
    worker->Queue();
    return p;
  }

  std::unique_ptr<EngineLoop> loop_;
  Napi::ThreadSafeFunction tsfn_;
  int block_size_ = 16;
  bool closed_ = false;
  bool released_ = false;
};

// xxh64(bytes: Uint8Array, seed: bigint): bigint
Napi::Value Xxh64(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto bytes = info[0].As<Napi::Uint8Array>();
  bool lossless;
  uint64_t seed = info[1].As<Napi::BigInt>().Uint64Value(&lossless);
  return Napi::BigInt::New(env, xxh64(bytes.Data(), bytes.ByteLength(), seed));
}

// blockHashes(tokenIds: number[] | Int32Array, blockSize: number, parent?: bigint): bigint[]
Napi::Value BlockHashes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<int32_t> tokens = get_int_array(env, info[0], "tokenIds");
  int bs = info[1].As<Napi::Number>().Int32Value();
  if (bs <= 0) throw Napi::RangeError::New(env, "blockSize must be positive");
  uint64_t parent = kRootParentHash;
  bool lossless;
  if (info.Length() > 2 && info[2].IsBigInt()) parent = info[2].As<Napi::BigInt>().Uint64Value(&lossless);
  std::vector<uint64_t> out;
  for (size_t b = 0; (b + 1) * bs <= tokens.size(); ++b) {
    parent = block_hash(parent, tokens.data() + b * bs, bs);
    out.push_back(parent);
  }
  return to_js_hashes(env, out);
}

// cudaInfo(): whether this addon has the CUDA backend and which GPU it sees.
Napi::Value CudaInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const CudaDeviceInfo d = cuda_device_info();
  Napi::Object o = Napi::Object::New(env);
  o.Set("built", d.built);
  o.Set("deviceCount", d.device_count);
  o.Set("name", d.name);
  o.Set("totalMemoryBytes", Napi::Number::New(env, static_cast<double>(d.total_memory_bytes)));
  if (!d.error.empty()) o.Set("error", d.error);
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("cudaInfo", Napi::Function::New(env, CudaInfo));
  exports.Set("Engine", EngineHandle::Define(env));
  exports.Set("xxh64", Napi::Function::New(env, Xxh64));
  exports.Set("blockHashes", Napi::Function::New(env, BlockHashes));
  return exports;
}

}  // namespace
}  // namespace sy

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return sy::Init(env, exports); }
NODE_API_MODULE(switchyard_native, InitAddon)
