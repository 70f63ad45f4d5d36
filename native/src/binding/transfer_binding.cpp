// The Node-API binding of the transfer agent (its own addon, switchyard_transfer.node, so it
// builds and loads apart from the engine). `TransferAgent` wraps sy::transfer::TransferAgent.
// Completions and notifications cross from the agent's I/O thread to JavaScript through one
// thread-safe function, referenced only while reads are pending (or keepAlive is set), so an
// idle agent never holds the process open. Registered JavaScript buffers are referenced until
// deregistered AND no transfer still uses them. Every C++ exception becomes a JavaScript Error
// whose `code` is the transfer error kind ("invalid", "timeout", ...); nothing here aborts.
#include <napi.h>

#include <cstring>
#include <map>
#include <memory>
#include <vector>

#include "transfer/transfer_agent.h"
#ifdef SWITCHYARD_TRANSFER_CUDA_KERNELS
#include <utility>

#include "transfer/cuda_bench_tools.h"
#endif

namespace sy::transfer {
namespace {

[[noreturn]] void throw_js(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, code));
  throw e;
}

// Runs `body`, turning C++ exceptions into JavaScript errors.
template <class F>
auto guarded(Napi::Env env, F&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;
  } catch (const TransferError& e) {
    throw_js(env, error_kind_name(e.kind()), e.what());
  } catch (const std::exception& e) {
    throw_js(env, "system", e.what());
  }
}

uint64_t to_u64(Napi::Env env, Napi::Value v, const std::string& what) {
  if (v.IsBigInt()) {
    bool lossless = false;
    uint64_t x = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw_js(env, "invalid", what + " does not fit in 64 bits");
    return x;
  }
  if (!v.IsNumber()) throw_js(env, "invalid", what + " must be a non-negative integer");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d != static_cast<double>(static_cast<uint64_t>(d)) || d > 9007199254740991.0) {
    throw_js(env, "invalid", what + " must be a non-negative integer, not " + v.ToString().Utf8Value());
  }
  return static_cast<uint64_t>(d);
}

uint64_t option_u64(Napi::Env env, const Napi::Object& o, const char* key, uint64_t fallback) {
  Napi::Value v = o.Get(key);
  return v.IsUndefined() || v.IsNull() ? fallback : to_u64(env, v, key);
}

std::string option_string(const Napi::Object& o, const char* key, const std::string& fallback) {
  Napi::Value v = o.Get(key);
  return v.IsString() ? v.As<Napi::String>().Utf8Value() : fallback;
}

// Bytes of a string, Buffer, typed array or ArrayBuffer.
std::string to_bytes(Napi::Env env, Napi::Value v, const std::string& what) {
  if (v.IsString()) return v.As<Napi::String>().Utf8Value();
  if (v.IsTypedArray()) {
    auto a = v.As<Napi::TypedArray>();
    const char* p = static_cast<const char*>(a.ArrayBuffer().Data()) + a.ByteOffset();
    return std::string(p, a.ByteLength());
  }
  if (v.IsArrayBuffer()) {
    auto a = v.As<Napi::ArrayBuffer>();
    return std::string(static_cast<const char*>(a.Data()), a.ByteLength());
  }
  throw_js(env, "invalid", what + " must be a string, a Uint8Array or an ArrayBuffer");
}

// A block list {region, offsets, length}: offsets.length blocks of `length` bytes of one region,
// the compact form of a KV read (a Float64Array, Uint32Array or BigUint64Array of offsets is
// read in place, with no JavaScript object per block).
bool is_block_list(Napi::Value v) { return v.IsObject() && !v.IsArray() && v.As<Napi::Object>().Has("offsets"); }

// Into `out`, whose offsets' storage is reused: a fresh 100 KiB vector per read costs page faults.
void to_block_list(Napi::Env env, const Napi::Object& list, const std::string& what, BlockList& out) {
  out.region_id = to_u64(env, list.Get("region"), what + ".region");
  out.length = to_u64(env, list.Get("length"), what + ".length");
  Napi::Value offsets = list.Get("offsets");
  std::vector<uint64_t>& o = out.offsets;
  auto bad_number = [&](size_t i) {
    throw_js(env, "invalid", what + ".offsets[" + std::to_string(i) + "] must be a non-negative integer");
  };
  auto exact = [](double x) {
    return x >= 0 && x <= 9007199254740991.0 && x == static_cast<double>(static_cast<uint64_t>(x));
  };
  if (offsets.IsTypedArray()) {
    auto typed = offsets.As<Napi::TypedArray>();
    const size_t n = typed.ElementLength();
    o.resize(n);
    const uint8_t* data = static_cast<const uint8_t*>(typed.ArrayBuffer().Data()) + typed.ByteOffset();
    switch (typed.TypedArrayType()) {
      case napi_float64_array: {
        const double* x = reinterpret_cast<const double*>(data);
        for (size_t i = 0; i < n; ++i) {
          if (!exact(x[i])) bad_number(i);
          o[i] = static_cast<uint64_t>(x[i]);
        }
        break;
      }
      case napi_uint32_array:
        for (size_t i = 0; i < n; ++i) o[i] = reinterpret_cast<const uint32_t*>(data)[i];
        break;
      case napi_biguint64_array:
        std::memcpy(o.data(), data, n * sizeof(uint64_t));
        break;
      default:
        throw_js(env, "invalid", what + ".offsets must be a Float64Array, Uint32Array, BigUint64Array or array of numbers");
    }
  } else if (offsets.IsArray()) {
    auto a = offsets.As<Napi::Array>();
    o.resize(a.Length());
    for (uint32_t i = 0; i < a.Length(); ++i) {
      Napi::Value x = a.Get(i);
      if (!x.IsNumber()) throw_js(env, "invalid", what + ".offsets[" + std::to_string(i) + "] must be a number");
      const double d = x.As<Napi::Number>().DoubleValue();
      if (!exact(d)) bad_number(i);
      o[i] = static_cast<uint64_t>(d);
    }
  } else {
    throw_js(env, "invalid", what + ".offsets must be a typed array or an array of byte offsets");
  }
}

std::vector<BlockDescriptor> to_descriptors(Napi::Env env, Napi::Value v, const std::string& what) {
  if (is_block_list(v)) {
    BlockList list;
    to_block_list(env, v.As<Napi::Object>(), what, list);
    return list.descriptors();
  }
  if (!v.IsArray()) throw_js(env, "invalid", what + " must be an array of descriptors or a block list {region, offsets, length}");
  auto a = v.As<Napi::Array>();
  std::vector<BlockDescriptor> out(a.Length());
  // Keys made once: a KV read has thousands of descriptors, and a key made from a C string
  // costs a string internalization on every Get.
  const Napi::String k_length = Napi::String::New(env, "length"), k_address = Napi::String::New(env, "address"),
                     k_device = Napi::String::New(env, "deviceId"), k_region = Napi::String::New(env, "region"),
                     k_offset = Napi::String::New(env, "offset");
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Value e = a.Get(i);
    if (!e.IsObject()) {
      throw_js(env, "invalid", what + "[" + std::to_string(i) + "] must be {region, offset, length} or {address, length}");
    }
    auto o = e.As<Napi::Object>();
    BlockDescriptor& d = out[i];
    // The error's name is built only on the slow path.
    auto field = [&](const Napi::String& key, const char* name) -> uint64_t {
      Napi::Value x = o.Get(key);
      if (x.IsBigInt()) {
        bool lossless = false;
        uint64_t u = x.As<Napi::BigInt>().Uint64Value(&lossless);
        if (lossless) return u;
      } else if (x.IsNumber()) {
        double d = x.As<Napi::Number>().DoubleValue();
        if (d >= 0 && d <= 9007199254740991.0 && d == static_cast<double>(static_cast<uint64_t>(d))) {
          return static_cast<uint64_t>(d);
        }
      }
      return to_u64(env, x, what + "[" + std::to_string(i) + "]." + name);
    };
    d.length = field(k_length, "length");
    Napi::Value address = o.Get(k_address);
    if (!address.IsUndefined()) {
      d.by_address = true;
      d.address = field(k_address, "address");
      Napi::Value device = o.Get(k_device);
      d.device_id = device.IsUndefined() || device.IsNull() ? 0 : static_cast<int32_t>(field(k_device, "deviceId"));
    } else {
      d.region_id = field(k_region, "region");
      Napi::Value offset = o.Get(k_offset);
      d.offset = offset.IsUndefined() || offset.IsNull() ? 0 : field(k_offset, "offset");
    }
  }
  return out;
}

/** What outlives the wrapper object while thread-safe calls are queued. */
struct JsSide {
  Napi::ThreadSafeFunction events;
  uint64_t pending_reads = 0;
  bool keep_alive = false;
  bool referenced = false;
  bool released = false;

  void update_ref(Napi::Env env) {
    if (released) return;
    bool want = pending_reads > 0 || keep_alive;
    if (want == referenced) return;
    referenced = want;
    if (want) {
      events.Ref(env);
    } else {
      events.Unref(env);
    }
  }
};

class TransferAgentWrap : public Napi::ObjectWrap<TransferAgentWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "TransferAgent",
                       {
                           InstanceMethod("name", &TransferAgentWrap::Name),
                           InstanceMethod("address", &TransferAgentWrap::Address),
                           InstanceMethod("listenPort", &TransferAgentWrap::ListenPort),
                           InstanceMethod("backends", &TransferAgentWrap::Backends),
                           InstanceMethod("registerMemory", &TransferAgentWrap::RegisterMemory),
                           InstanceMethod("registerAddress", &TransferAgentWrap::RegisterAddress),
                           InstanceMethod("deregisterMemory", &TransferAgentWrap::DeregisterMemory),
                           InstanceMethod("metadata", &TransferAgentWrap::Metadata),
                           InstanceMethod("loadRemoteMetadata", &TransferAgentWrap::LoadRemoteMetadata),
                           InstanceMethod("forgetRemote", &TransferAgentWrap::ForgetRemote),
                           InstanceMethod("postRead", &TransferAgentWrap::PostRead),
                           InstanceMethod("status", &TransferAgentWrap::Status),
                           InstanceMethod("cancel", &TransferAgentWrap::Cancel),
                           InstanceMethod("release", &TransferAgentWrap::Release),
                           InstanceMethod("sendNotification", &TransferAgentWrap::SendNotification),
                           InstanceMethod("getNotifications", &TransferAgentWrap::GetNotifications),
                           InstanceMethod("stats", &TransferAgentWrap::Stats),
                           InstanceMethod("setKeepAlive", &TransferAgentWrap::SetKeepAlive),
                           InstanceMethod("close", &TransferAgentWrap::Close),
                       });
  }

  // new TransferAgent(options, onEvent: (kind: "transfer" | "notification", id: number, doneBytes?: number) => void)
  TransferAgentWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TransferAgentWrap>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsObject() || !info[1].IsFunction()) {
      throw_js(env, "invalid", "new TransferAgent(options, onEvent) needs an options object and a function");
    }
    auto o = info[0].As<Napi::Object>();
    AgentOptions options;
    options.name = option_string(o, "name", "");
    options.tcp.listen_host = option_string(o, "listenHost", "127.0.0.1");
    options.tcp.listen_port = static_cast<uint16_t>(option_u64(env, o, "listenPort", 0));
    options.tcp.chunk_bytes = option_u64(env, o, "chunkBytes", options.tcp.chunk_bytes);
    options.tcp.max_inflight_bytes = option_u64(env, o, "maxInflightBytes", options.tcp.max_inflight_bytes);
    options.advertise_host = option_string(o, "advertiseHost", "");
    options.advertise_port = static_cast<uint16_t>(option_u64(env, o, "advertisePort", 0));
    options.timeout_ms = static_cast<uint32_t>(option_u64(env, o, "timeoutMs", options.timeout_ms));
    Napi::Value backends = o.Get("backends");
    if (!backends.IsUndefined() && !backends.IsNull()) {
      if (!backends.IsArray()) throw_js(env, "invalid", "backends must be an array of backend names");
      auto a = backends.As<Napi::Array>();
      options.read_backends.clear();
      for (uint32_t i = 0; i < a.Length(); ++i) {
        Napi::Value name = a.Get(i);
        if (!name.IsString()) throw_js(env, "invalid", "backends[" + std::to_string(i) + "] must be a string");
        options.read_backends.push_back(name.As<Napi::String>().Utf8Value());
      }
    }
    options.ucx_transports = option_string(o, "ucxTransports", "");
    std::string error_mode = option_string(o, "ucxErrorMode", "peer");
    if (error_mode != "peer" && error_mode != "none") {
      throw_js(env, "invalid", "ucxErrorMode must be \"peer\" or \"none\", not \"" + error_mode + "\"");
    }
    options.ucx_peer_error_handling = error_mode == "peer";
    guarded(env, [&] {
      agent_ = std::make_unique<TransferAgent>(options);
      return 0;
    });
    js_ = std::make_shared<JsSide>();
    js_->events = Napi::ThreadSafeFunction::New(env, info[1].As<Napi::Function>(), "switchyard transfer events", 0, 1);
    js_->events.Unref(env);
    std::shared_ptr<JsSide> js = js_;
    agent_->set_event_hook([js](const AgentEvent& event) {
      auto* copy = new AgentEvent(event);
      napi_status s = js->events.NonBlockingCall(copy, [js](Napi::Env env, Napi::Function fn, AgentEvent* e) {
        std::unique_ptr<AgentEvent> owned(e);
        if (env == nullptr || fn.IsEmpty()) return;  // the environment is shutting down
        bool transfer = e->kind == AgentEvent::Kind::TransferFinished;
        if (transfer && js->pending_reads > 0) js->pending_reads--;
        js->update_ref(env);
        // Plain Node-API calls, statuses ignored, not Napi::Function::Call: an event still queued
        // when Node tears the environment down arrives where JavaScript cannot run, and the C++
        // exception Call would throw there has no JavaScript caller to go to (std::terminate).
        // An exception the handler itself throws stays pending, and Node reports it as uncaught.
        // A transfer done passes its bytes (third argument), so the handler need not ask status().
        const bool done = transfer && !e->failed;
        napi_value receiver, args[3], result;
        if (napi_get_undefined(env, &receiver) != napi_ok ||
            napi_create_string_utf8(env, transfer ? "transfer" : "notification", NAPI_AUTO_LENGTH, &args[0]) != napi_ok ||
            napi_create_double(env, static_cast<double>(e->transfer_id), &args[1]) != napi_ok ||
            (done && napi_create_double(env, static_cast<double>(e->bytes), &args[2]) != napi_ok)) {
          return;
        }
        napi_call_function(env, receiver, fn, done ? 3 : 2, args, &result);
      });
      if (s != napi_ok) delete copy;
    });
  }

  ~TransferAgentWrap() override { Shutdown(); }

 private:
  struct HeldMemory {
    Napi::Reference<Napi::Value> owner;
    std::weak_ptr<const MemoryRegion> region;
  };

  TransferAgent& agent(Napi::Env env) {
    if (!agent_ || closed_) throw_js(env, "closed", "the transfer agent is closed");
    ReleaseRetired();
    return *agent_;
  }

  // Buffers deregistered while a transfer still used them: let go once no transfer does.
  void ReleaseRetired() {
    for (auto it = retired_.begin(); it != retired_.end();) {
      it = it->region.expired() ? retired_.erase(it) : std::next(it);
    }
  }

  void Shutdown() {
    if (closed_) return;
    closed_ = true;
    if (agent_) agent_->close();  // joins the I/O thread: no event is queued after this
    if (js_) {
      js_->released = true;
      js_->events.Release();
    }
    held_.clear();
    retired_.clear();
  }

  static Napi::Object RegionObject(Napi::Env env, const MemoryRegion& r) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("id", Napi::Number::New(env, static_cast<double>(r.id)));
    o.Set("length", Napi::Number::New(env, static_cast<double>(r.length)));
    o.Set("address", Napi::BigInt::New(env, r.base));
    o.Set("kind", memory_kind_name(r.kind));
    o.Set("deviceId", Napi::Number::New(env, r.device_id));
    return o;
  }

  Napi::Value Name(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), agent(info.Env()).name()); }
  Napi::Value Address(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), agent(info.Env()).address());
  }
  Napi::Value ListenPort(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), agent(info.Env()).listen_port());
  }
  Napi::Value Backends(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto names = agent(env).backends();
    Napi::Array a = Napi::Array::New(env, names.size());
    for (size_t i = 0; i < names.size(); ++i) a.Set(static_cast<uint32_t>(i), names[i]);
    return a;
  }

  // registerMemory(memory: ArrayBuffer | ArrayBufferView): region
  Napi::Value RegisterMemory(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    TransferAgent& a = agent(env);
    Napi::Value v = info[0];
    uint8_t* base;
    size_t length;
    if (v.IsTypedArray()) {
      auto t = v.As<Napi::TypedArray>();
      base = static_cast<uint8_t*>(t.ArrayBuffer().Data()) + t.ByteOffset();
      length = t.ByteLength();
    } else if (v.IsDataView()) {
      auto d = v.As<Napi::DataView>();
      base = static_cast<uint8_t*>(d.ArrayBuffer().Data()) + d.ByteOffset();
      length = d.ByteLength();
    } else if (v.IsArrayBuffer()) {
      auto b = v.As<Napi::ArrayBuffer>();
      base = static_cast<uint8_t*>(b.Data());
      length = b.ByteLength();
    } else {
      throw_js(env, "invalid", "registerMemory needs an ArrayBuffer, a typed array, a DataView or a Buffer");
    }
    auto region = guarded(env, [&] {
      return a.register_memory(MemoryKind::Host, 0, reinterpret_cast<uint64_t>(base), length);
    });
    held_[region->id] = HeldMemory{Napi::Persistent(v), region};
    return RegionObject(env, *region);
  }

  // registerAddress(address: bigint, length: number, kind: "host" | "cuda", deviceId: number): region.
  // For memory owned by other native code (the engine's KV cache), which must outlive the registration.
  Napi::Value RegisterAddress(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    TransferAgent& a = agent(env);
    uint64_t address = to_u64(env, info[0], "address");
    uint64_t length = to_u64(env, info[1], "length");
    std::string kind = info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "host";
    if (kind != "host" && kind != "cuda") throw_js(env, "invalid", "memory kind must be \"host\" or \"cuda\", not \"" + kind + "\"");
    int32_t device = info[3].IsNumber() ? info[3].As<Napi::Number>().Int32Value() : 0;
    auto region = guarded(env, [&] {
      return a.register_memory(kind == "cuda" ? MemoryKind::Cuda : MemoryKind::Host, device, address, length);
    });
    return RegionObject(env, *region);
  }

  Napi::Value DeregisterMemory(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint64_t id = to_u64(env, info[0], "region id");
    bool removed = agent(env).deregister_memory(id);
    auto it = held_.find(id);
    if (it != held_.end()) {
      retired_.push_back(std::move(it->second));
      held_.erase(it);
      ReleaseRetired();
    }
    return Napi::Boolean::New(env, removed);
  }

  Napi::Value Metadata(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string blob = guarded(env, [&] { return agent(env).metadata(); });
    return Napi::Buffer<char>::Copy(env, blob.data(), blob.size());
  }

  Napi::Value LoadRemoteMetadata(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string blob = to_bytes(env, info[0], "metadata");
    return Napi::String::New(env, guarded(env, [&] { return agent(env).load_remote_metadata(blob); }));
  }

  Napi::Value ForgetRemote(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return Napi::Boolean::New(env, agent(env).forget_remote(info[0].ToString().Utf8Value()));
  }

  // postRead(remote, remoteDescs, localDescs, notification?, timeoutMs?): transfer id
  Napi::Value PostRead(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    TransferAgent& a = agent(env);
    if (!info[0].IsString()) throw_js(env, "invalid", "postRead needs the remote agent's name");
    std::string remote = info[0].As<Napi::String>().Utf8Value();
    // Two block lists stay lists (checked per list, copied by CUDA IPC as they are); anything
    // else becomes one descriptor per block.
    const bool lists = is_block_list(info[1]) && is_block_list(info[2]);
    std::vector<BlockDescriptor> remote_descs, local_descs;
    if (lists) {
      to_block_list(env, info[1].As<Napi::Object>(), "remoteDescs", remote_scratch_);
      to_block_list(env, info[2].As<Napi::Object>(), "localDescs", local_scratch_);
    } else {
      remote_descs = to_descriptors(env, info[1], "remoteDescs");
      local_descs = to_descriptors(env, info[2], "localDescs");
    }
    bool has_notification = info.Length() > 3 && !info[3].IsUndefined() && !info[3].IsNull();
    std::string notification = has_notification ? to_bytes(env, info[3], "notification") : std::string();
    uint32_t timeout_ms = info.Length() > 4 && !info[4].IsUndefined()
                              ? static_cast<uint32_t>(to_u64(env, info[4], "timeoutMs"))
                              : 0;
    const std::string* note = has_notification ? &notification : nullptr;
    uint64_t id = guarded(env, [&] {
      return lists ? a.post_read(remote, remote_scratch_, local_scratch_, note, timeout_ms)
                   : a.post_read(remote, remote_descs, local_descs, note, timeout_ms);
    });
    js_->pending_reads++;
    js_->update_ref(env);
    return Napi::Number::New(env, static_cast<double>(id));
  }

  // status(id): { state: "pending" | "done" | "error", bytes, code?, message? }
  Napi::Value Status(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint64_t id = to_u64(env, info[0], "transfer id");
    TransferStatus s = guarded(env, [&] { return agent(env).status(id); });
    Napi::Object o = Napi::Object::New(env);
    o.Set("state", s.state == TransferState::Pending ? "pending" : s.state == TransferState::Done ? "done" : "error");
    o.Set("bytes", Napi::Number::New(env, static_cast<double>(s.bytes)));
    if (s.state == TransferState::Error) {
      o.Set("code", error_kind_name(s.error_kind));
      o.Set("message", s.message);
    }
    return o;
  }

  Napi::Value Cancel(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    agent(env).cancel(to_u64(env, info[0], "transfer id"));
    return env.Undefined();
  }

  Napi::Value Release(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!closed_) agent(env).release(to_u64(env, info[0], "transfer id"));
    return env.Undefined();
  }

  Napi::Value SendNotification(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    TransferAgent& a = agent(env);
    if (!info[0].IsString()) throw_js(env, "invalid", "sendNotification needs the peer agent's name");
    std::string peer = info[0].As<Napi::String>().Utf8Value();
    std::string bytes = to_bytes(env, info[1], "notification");
    guarded(env, [&] {
      a.send_notification(peer, std::move(bytes));
      return 0;
    });
    return env.Undefined();
  }

  Napi::Value GetNotifications(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto notes = agent(env).take_notifications();
    Napi::Array a = Napi::Array::New(env, notes.size());
    for (size_t i = 0; i < notes.size(); ++i) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("from", notes[i].from);
      o.Set("bytes", Napi::Buffer<char>::Copy(env, notes[i].bytes.data(), notes[i].bytes.size()));
      a.Set(static_cast<uint32_t>(i), o);
    }
    return a;
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    ServeStats s = agent(env).serve_stats();
    Napi::Object o = Napi::Object::New(env);
    o.Set("chunksServed", Napi::Number::New(env, static_cast<double>(s.reads_served)));
    o.Set("bytesServed", Napi::Number::New(env, static_cast<double>(s.bytes_served)));
    o.Set("readsRejected", Napi::Number::New(env, static_cast<double>(s.reads_rejected)));
    if (!s.last_rejection.empty()) o.Set("lastRejection", s.last_rejection);
    return o;
  }

  Napi::Value SetKeepAlive(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_) return env.Undefined();
    js_->keep_alive = info[0].ToBoolean().Value();
    js_->update_ref(env);
    return env.Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Shutdown();
    return info.Env().Undefined();
  }

  std::unique_ptr<TransferAgent> agent_;
  std::shared_ptr<JsSide> js_;
  std::map<uint64_t, HeldMemory> held_;
  std::vector<HeldMemory> retired_;
  // A block-list read's offsets, converted from JavaScript; the agent reads them during post_read only.
  BlockList remote_scratch_;
  BlockList local_scratch_;
  bool closed_ = false;
};

#ifdef SWITCHYARD_TRANSFER_CUDA_KERNELS
// cudaTools: device memory and ceilings for bench/transfer_cuda.ts (cuda_bench_tools.h).
// Piece lists are BigUint64Arrays of (a, b, bytes) triples.
std::vector<CopyPiece> to_pieces(Napi::Env env, Napi::Value v) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_biguint64_array) {
    throw_js(env, "invalid", "pieces must be a BigUint64Array of (a, b, bytes) triples");
  }
  auto a = v.As<Napi::BigUint64Array>();
  std::vector<CopyPiece> out(a.ElementLength() / 3);
  for (size_t i = 0; i < out.size(); ++i) out[i] = {a[3 * i], a[3 * i + 1], a[3 * i + 2]};
  return out;
}

Napi::Array to_js_numbers(Napi::Env env, const std::vector<double>& xs) {
  Napi::Array a = Napi::Array::New(env, xs.size());
  for (size_t i = 0; i < xs.size(); ++i) a.Set(static_cast<uint32_t>(i), Napi::Number::New(env, xs[i]));
  return a;
}

Napi::Object CudaTools(Napi::Env env) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("alloc", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
          Napi::Env env = info.Env();
          uint64_t bytes = to_u64(env, info[0], "bytes");
          int device = info.Length() > 1 ? static_cast<int>(to_u64(env, info[1], "deviceId")) : 0;
          return Napi::BigInt::New(env, guarded(env, [&] { return cuda_tools::device_alloc(bytes, device); }));
        }));
  o.Set("free", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
          Napi::Env env = info.Env();
          uint64_t address = to_u64(env, info[0], "address");
          guarded(env, [&] { cuda_tools::device_free(address); });
          return env.Undefined();
        }));
  o.Set("fillPattern", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
          Napi::Env env = info.Env();
          uint64_t address = to_u64(env, info[0], "address"), bytes = to_u64(env, info[1], "bytes");
          uint32_t seed = static_cast<uint32_t>(to_u64(env, info[2], "seed"));
          guarded(env, [&] { cuda_tools::fill_pattern(address, bytes, seed); });
          return env.Undefined();
        }));
  o.Set("countMismatches", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
          Napi::Env env = info.Env();
          auto pieces = to_pieces(env, info[0]);  // (destination address, source offset, bytes)
          for (CopyPiece& p : pieces) std::swap(p.src, p.dst);
          uint32_t seed = static_cast<uint32_t>(to_u64(env, info[1], "seed"));
          uint64_t n = guarded(env, [&] { return cuda_tools::count_pattern_mismatches(pieces, seed); });
          return Napi::Number::New(env, static_cast<double>(n));
        }));
  o.Set("memcpyMs", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
          Napi::Env env = info.Env();
          uint64_t dst = to_u64(env, info[0], "dst"), src = to_u64(env, info[1], "src"), bytes = to_u64(env, info[2], "bytes");
          int iterations = static_cast<int>(to_u64(env, info[3], "iterations"));
          return to_js_numbers(env, guarded(env, [&] { return cuda_tools::memcpy_ms(dst, src, bytes, iterations); }));
        }));
  o.Set("gatherMs", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
          Napi::Env env = info.Env();
          auto runs = to_pieces(env, info[0]);
          int iterations = static_cast<int>(to_u64(env, info[1], "iterations"));
          uint32_t blocks_per_sm = info.Length() > 2 ? static_cast<uint32_t>(to_u64(env, info[2], "blocksPerSm")) : 4;
          bool streaming_stores = info.Length() > 3 && info[3].ToBoolean().Value();
          return to_js_numbers(env, guarded(env, [&] {
                                 return cuda_tools::gather_copy_ms(runs, iterations, blocks_per_sm, streaming_stores);
                               }));
        }));
  return o;
}
#endif

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("TransferAgent", TransferAgentWrap::Define(env));
  // builtBackends(): the backends this build has ("tcp", "cuda_ipc", "ucx").
  exports.Set("builtBackends", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto names = TransferAgent::built_backends();
    Napi::Array a = Napi::Array::New(env, names.size());
    for (size_t i = 0; i < names.size(); ++i) a.Set(static_cast<uint32_t>(i), names[i]);
    return a;
  }));
#ifdef SWITCHYARD_TRANSFER_CUDA_KERNELS
  exports.Set("cudaTools", CudaTools(env));
#endif
  return exports;
}

}  // namespace
}  // namespace sy::transfer

static Napi::Object InitTransferAddon(Napi::Env env, Napi::Object exports) { return sy::transfer::Init(env, exports); }
NODE_API_MODULE(switchyard_transfer, InitTransferAddon)
