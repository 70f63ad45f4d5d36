#include "transfer/transfer_agent.h"

#include <unistd.h>

#include <algorithm>

#ifdef SWITCHYARD_TRANSFER_CUDA_IPC
#include "transfer/cuda_ipc_backend.h"
#endif
#ifdef SWITCHYARD_TRANSFER_UCX
#include "transfer/ucx_backend.h"
#endif

namespace sy::transfer {

namespace {

std::string default_advertise_host(const std::string& listen_host) {
  if (listen_host.empty() || listen_host == "0.0.0.0" || listen_host == "::") {
    char name[256] = {0};
    if (gethostname(name, sizeof name - 1) == 0 && name[0]) return name;
  }
  return listen_host;
}

}  // namespace

TransferAgent::TransferAgent(AgentOptions options) : options_(std::move(options)), host_id_(local_host_id()) {
  if (options_.name.empty()) throw TransferError(ErrorKind::Invalid, "a transfer agent needs a name");
  if (options_.name.size() > 255) throw TransferError(ErrorKind::Invalid, "agent names are at most 255 bytes");
  if (options_.timeout_ms == 0) throw TransferError(ErrorKind::Invalid, "timeoutMs must be positive");
  BackendEvents& events = *this;  // a private base: convertible here, not inside make_unique
  tcp_ = std::make_unique<TcpBackend>(options_.name, options_.tcp, regions_, events);
  if (options_.advertise_host.empty()) options_.advertise_host = default_advertise_host(options_.tcp.listen_host);
  if (options_.advertise_port == 0) options_.advertise_port = tcp_->port();
  backends_.push_back(tcp_.get());
  bool tcp_reads = false;
  for (const std::string& b : options_.read_backends) {
    if (b == "tcp") {
      if (!tcp_reads) read_order_.push_back(tcp_.get());
      tcp_reads = true;
    } else if (b == "ucx") {
#ifdef SWITCHYARD_TRANSFER_UCX
      if (ucx_) continue;
      UcxOptions ucx;
      ucx.transports = options_.ucx_transports;
      ucx.peer_error_handling = options_.ucx_peer_error_handling;
      ucx.chunk_bytes = options_.tcp.chunk_bytes;
      ucx.max_inflight_bytes = options_.tcp.max_inflight_bytes;
      ucx_ = std::make_unique<UcxBackend>(options_.name, std::move(ucx), events);
      backends_.push_back(ucx_.get());
      read_order_.push_back(ucx_.get());
#else
      throw TransferError(ErrorKind::Invalid,
                          "this build has no UCX backend: libucx-dev was not installed when the transfer addon "
                          "was built (apt-get install libucx-dev, then npm install)");
#endif
    } else {
      throw TransferError(ErrorKind::Invalid, "unknown transfer backend '" + b + "' (expected \"tcp\" or \"ucx\")");
    }
  }
  if (read_order_.empty()) throw TransferError(ErrorKind::Invalid, "backends must name at least one of \"tcp\", \"ucx\"");
#ifdef SWITCHYARD_TRANSFER_CUDA_IPC
  device_ = CudaIpcBackend::create(host_id_, events);
  if (device_) {
    backends_.push_back(device_.get());
    read_order_.insert(read_order_.begin(), device_.get());
  }
#endif
}

TransferAgent::~TransferAgent() { close(); }

std::string TransferAgent::address() const {
  AgentMetadata m;
  m.host = options_.advertise_host;
  m.port = options_.advertise_port;
  return m.address();
}

std::vector<std::string> TransferAgent::backends() const {
  std::vector<std::string> names;
  for (const TransferBackend* b : backends_) names.emplace_back(b->name());
  return names;
}

std::vector<std::string> TransferAgent::built_backends() {
  std::vector<std::string> names = {"tcp"};
#ifdef SWITCHYARD_TRANSFER_CUDA_IPC
  names.emplace_back("cuda_ipc");
#endif
#ifdef SWITCHYARD_TRANSFER_UCX
  names.emplace_back("ucx");
#endif
  return names;
}

std::shared_ptr<const MemoryRegion> TransferAgent::register_memory(MemoryKind kind, int32_t device_id, uint64_t base,
                                                                   uint64_t length) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) throw TransferError(ErrorKind::Closed, "agent '" + name() + "' is closed");
  }
  // Device memory is reachable only through a backend that exports it (a CUDA IPC handle) or
  // maps it (UCX built with CUDA); host memory always through TCP, and UCX maps it too.
  std::string blob;
  if (kind != MemoryKind::Host) {
    MemoryRegion probe;
    probe.kind = kind;
    probe.device_id = device_id;
    probe.base = base;
    probe.length = length;
    for (TransferBackend* b : backends_) {
      blob = b->export_region(probe);
      if (!blob.empty()) break;
    }
  }
  auto region = regions_.add(kind, kind == MemoryKind::Host ? 0 : device_id, base, length, std::move(blob));
  bool reachable = kind == MemoryKind::Host || !region->backend_blob.empty();
  try {
    for (TransferBackend* b : backends_) reachable = b->add_region(*region) || reachable;
  } catch (...) {
    deregister_memory(region->id);
    throw;
  }
  if (!reachable) {
    deregister_memory(region->id);
    throw TransferError(ErrorKind::Invalid, std::string("cannot register ") + memory_kind_name(kind) +
                                                " memory: this agent has no backend for it (CUDA IPC needs a build "
                                                "with CUDA and a visible GPU; UCX needs a UCX built with CUDA)");
  }
  return region;
}

bool TransferAgent::deregister_memory(uint64_t region_id) {
  bool removed = regions_.remove(region_id);
  if (removed) {
    for (TransferBackend* b : backends_) b->remove_region(region_id);
  }
  return removed;
}

std::string TransferAgent::metadata() const {
  AgentMetadata m;
  m.name = name();
  m.backends = backends();
  m.host = options_.advertise_host;
  m.port = options_.advertise_port;
  m.host_id = host_id_;
  m.regions = regions_.list();
  for (const TransferBackend* b : backends_) {
    std::string section = b->metadata_section();
    if (!section.empty()) m.sections[b->name()] = std::move(section);
  }
  return encode_metadata(m);
}

std::string TransferAgent::load_remote_metadata(const std::string& blob) {
  auto m = std::make_shared<AgentMetadata>(decode_metadata(blob));
  std::string peer = m->name;
  std::lock_guard<std::mutex> lock(mu_);
  remotes_[peer] = std::move(m);
  return peer;
}

bool TransferAgent::forget_remote(const std::string& peer) {
  std::lock_guard<std::mutex> lock(mu_);
  return remotes_.erase(peer) > 0;
}

std::shared_ptr<const AgentMetadata> TransferAgent::remote_metadata(const std::string& peer) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = remotes_.find(peer);
  return it == remotes_.end() ? nullptr : it->second;
}

std::shared_ptr<const AgentMetadata> TransferAgent::peer_to_read(const std::string& remote) const {
  auto peer = remote_metadata(remote);
  if (!peer) {
    throw TransferError(ErrorKind::Invalid,
                        "no metadata loaded for agent '" + remote + "': load its metadata before reading from it");
  }
  return peer;
}

uint64_t TransferAgent::post_read(const std::string& remote, const std::vector<BlockDescriptor>& remote_descs,
                                  const std::vector<BlockDescriptor>& local_descs, const std::string* notification,
                                  uint32_t timeout_ms) {
  auto peer = peer_to_read(remote);
  if (remote_descs.empty()) throw TransferError(ErrorKind::Invalid, "a read needs at least one descriptor");
  if (remote_descs.size() != local_descs.size()) {
    throw TransferError(ErrorKind::Invalid, "a read pairs remote and local descriptors one to one; got " +
                                                std::to_string(remote_descs.size()) + " remote and " +
                                                std::to_string(local_descs.size()) + " local");
  }
  ReadJob job;
  job.peer = peer;
  job.remote.reserve(remote_descs.size());
  job.local.reserve(local_descs.size());
  const std::string whose_remote = "agent '" + remote + "'";  // as its metadata, maybe stale, says
  const std::string whose_local = "this agent ('" + name() + "')";
  std::shared_ptr<const MemoryRegion> last_local;  // a KV read's local blocks share one region
  for (size_t i = 0; i < remote_descs.size(); ++i) {
    try {
      job.remote.push_back(resolve_in(peer->regions, remote_descs[i], whose_remote));
      const BlockDescriptor& d = local_descs[i];
      if (last_local && !d.by_address && d.region_id == last_local->id && d.length > 0 &&
          d.offset <= last_local->length && d.length <= last_local->length - d.offset) {
        job.local.push_back(ResolvedBlock{last_local, d.offset, d.length});  // no table lookup
      } else {
        job.local.push_back(regions_.resolve(d, whose_local));
        last_local = job.local.back().region;
      }
    } catch (const TransferError& e) {
      throw TransferError(e.kind(), "descriptor pair " + std::to_string(i) + ": " + e.what());
    }
    if (job.remote[i].length != job.local[i].length) {
      throw TransferError(ErrorKind::Invalid, "descriptor pair " + std::to_string(i) + ": remote block of " +
                                                  std::to_string(job.remote[i].length) + " bytes, local block of " +
                                                  std::to_string(job.local[i].length) + " bytes");
    }
    job.total_bytes += job.local[i].length;
  }
  TransferBackend* backend = nullptr;
  for (TransferBackend* b : read_order_) {
    bool all = true;
    for (size_t i = 0; all && i < job.remote.size(); ++i) {
      // Asked once per run of pairs in the same two regions (a KV read: thousands of pairs, few regions).
      if (i > 0 && job.remote[i].region == job.remote[i - 1].region && job.local[i].region == job.local[i - 1].region) continue;
      all = b->can_read(*peer, *job.remote[i].region, *job.local[i].region);
    }
    if (all) {
      backend = b;
      break;
    }
  }
  if (!backend) {
    bool device_memory = false;
    for (size_t i = 0; !device_memory && i < job.remote.size(); ++i) {
      device_memory = job.remote[i].region->kind == MemoryKind::Cuda || job.local[i].region->kind == MemoryKind::Cuda;
    }
    throw_no_backend(remote, *peer, device_memory);
  }
  return submit(remote, *backend, std::move(job), notification, timeout_ms);
}

uint64_t TransferAgent::post_read(const std::string& remote, const BlockList& remote_list, const BlockList& local_list,
                                  const std::string* notification, uint32_t timeout_ms) {
  auto peer = peer_to_read(remote);
  // Every offset is at most the largest, so the largest one's block inside its region puts every
  // block inside it: one region lookup and one bounds check per list.
  struct Checked {
    std::shared_ptr<const MemoryRegion> region;
    uint64_t offset_bits = 0;
  };
  auto check = [](const BlockList& list, const auto& find_region) {
    // Four independent lanes: one lane's max is a chain of dependent compares.
    uint64_t largest[4] = {0, 0, 0, 0}, bits[4] = {0, 0, 0, 0};
    const uint64_t* offsets = list.offsets.data();
    const size_t n = list.offsets.size();
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
      for (int k = 0; k < 4; ++k) {
        largest[k] = offsets[i + k] > largest[k] ? offsets[i + k] : largest[k];
        bits[k] |= offsets[i + k];
      }
    }
    for (; i < n; ++i) {
      largest[0] = offsets[i] > largest[0] ? offsets[i] : largest[0];
      bits[0] |= offsets[i];
    }
    BlockDescriptor d;
    d.region_id = list.region_id;
    d.offset = std::max(std::max(largest[0], largest[1]), std::max(largest[2], largest[3]));
    const uint64_t all_bits = bits[0] | bits[1] | bits[2] | bits[3];
    d.length = list.length;
    return Checked{find_region(d), all_bits};
  };
  Checked remote_blocks, local_blocks;
  const size_t n = remote_list.offsets.size();
  if (n > 0 && n == local_list.offsets.size() && remote_list.length > 0 && remote_list.length == local_list.length) {
    try {
      const std::string whose_remote = "agent '" + remote + "'";
      remote_blocks = check(remote_list, [&](const BlockDescriptor& d) { return resolve_in(peer->regions, d, whose_remote).region; });
      local_blocks = check(local_list, [&](const BlockDescriptor& d) { return regions_.resolve(d, "this agent").region; });
    } catch (const TransferError&) {
      remote_blocks.region = nullptr;  // checked pair by pair below, for the error that names the pair
    }
  }
  if (!remote_blocks.region || !local_blocks.region) {
    return post_read(remote, remote_list.descriptors(), local_list.descriptors(), notification, timeout_ms);
  }
  TransferBackend* backend = nullptr;
  for (TransferBackend* b : read_order_) {
    if (b->can_read(*peer, *remote_blocks.region, *local_blocks.region)) {
      backend = b;
      break;
    }
  }
  if (!backend) {
    throw_no_backend(remote, *peer,
                     remote_blocks.region->kind == MemoryKind::Cuda || local_blocks.region->kind == MemoryKind::Cuda);
  }
  ReadJob job;
  job.peer = peer;
  job.total_bytes = n * remote_list.length;
  job.remote_list = ResolvedBlockList{remote_blocks.region, remote_list.length, remote_list.offsets.data(), n,
                                      remote_blocks.offset_bits};
  job.local_list = ResolvedBlockList{local_blocks.region, local_list.length, local_list.offsets.data(), n,
                                     local_blocks.offset_bits};
  if (!backend->reads_block_lists()) expand_block_lists(job);
  return submit(remote, *backend, std::move(job), notification, timeout_ms);
}

void TransferAgent::throw_no_backend(const std::string& remote, const AgentMetadata& peer, bool device_memory) const {
  if (device_memory) {
    // TCP moves host memory only: it does not stage device memory through the host.
    const bool same_host = peer.host_id == host_id_;
    throw TransferError(ErrorKind::Invalid,
                        "agent '" + name() + "' cannot read these blocks of agent '" + remote + "'" +
                            (same_host ? "" : " on another host") + ": they involve CUDA device memory, which " +
                            (same_host ? "CUDA IPC moves only where both agents run it"
                                       : "CUDA IPC moves only between processes of one host") +
                            ", and TCP carries host memory only (a UCX built with CUDA can carry it, where both "
                            "agents run UCX)");
  }
  throw TransferError(ErrorKind::Invalid, "no backend of agent '" + name() + "' reads these blocks of agent '" + remote +
                                              "' (memory kinds or hosts differ from what its backends move)");
}

uint64_t TransferAgent::submit(const std::string& remote, TransferBackend& backend, ReadJob job,
                               const std::string* notification, uint32_t timeout_ms) {
  job.timeout_ms = timeout_ms ? timeout_ms : options_.timeout_ms;
  job.deadline = Clock::now() + std::chrono::milliseconds(job.timeout_ms);
  uint64_t id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) throw TransferError(ErrorKind::Closed, "agent '" + name() + "' is closed");
    id = next_transfer_id_++;
    TransferRecord& record = transfers_[id];
    record.remote = remote;
    if (notification) {
      record.has_notification = true;
      record.notification = *notification;
    }
  }
  job.transfer_id = id;
  try {
    backend.post_read(std::move(job));
  } catch (...) {
    std::lock_guard<std::mutex> lock(mu_);
    transfers_.erase(id);
    throw;
  }
  return id;
}

TransferStatus TransferAgent::status(uint64_t transfer_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = transfers_.find(transfer_id);
  if (it == transfers_.end() || it->second.released) {
    throw TransferError(ErrorKind::Invalid, "no transfer " + std::to_string(transfer_id) + " (released or never posted)");
  }
  return it->second.status;
}

void TransferAgent::cancel(uint64_t transfer_id) {
  for (TransferBackend* b : backends_) b->cancel(transfer_id);
}

void TransferAgent::release(uint64_t transfer_id) {
  bool pending = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = transfers_.find(transfer_id);
    if (it == transfers_.end()) return;
    pending = it->second.status.state == TransferState::Pending;
    if (pending) {
      it->second.released = true;  // erased when it finishes
    } else {
      transfers_.erase(it);
    }
  }
  if (pending) cancel(transfer_id);
}

void TransferAgent::send_notification(const std::string& peer, std::string bytes) {
  notify_peer(peer, remote_metadata(peer), std::move(bytes));
}

void TransferAgent::notify_peer(const std::string& peer, const std::shared_ptr<const AgentMetadata>& metadata,
                                std::string bytes) {
  // The channel follows the read preference, so one peer's notifications (a read's, and
  // notify()'s) all take one channel and arrive in order. Without metadata: TCP, over the
  // connection the peer opened.
  if (ucx_ && metadata) {
    for (const TransferBackend* b : read_order_) {
      if (b == ucx_.get() && ucx_->reaches(*metadata)) {
        ucx_->send_notification_to(metadata, std::move(bytes));
        return;
      }
      if (b == tcp_.get() && metadata->has_backend("tcp")) break;
    }
  }
  tcp_->send_notification(peer, metadata, std::move(bytes));
}

std::vector<Notification> TransferAgent::take_notifications() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Notification> out;
  out.swap(notifications_);
  return out;
}

void TransferAgent::set_event_hook(std::function<void(const AgentEvent&)> hook) {
  std::lock_guard<std::mutex> lock(mu_);
  hook_ = std::move(hook);
}

ServeStats TransferAgent::serve_stats() const { return tcp_->stats(); }

void TransferAgent::close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    closed_ = true;
  }
  // TCP last: the others' completions may still queue notifications over it.
  for (auto it = backends_.rbegin(); it != backends_.rend(); ++it) (*it)->shutdown();
  std::lock_guard<std::mutex> lock(mu_);
  hook_ = nullptr;
}

void TransferAgent::emit(const AgentEvent& event) {
  std::function<void(const AgentEvent&)> hook;
  {
    std::lock_guard<std::mutex> lock(mu_);
    hook = hook_;
  }
  if (hook) hook(event);
}

void TransferAgent::transfer_finished(uint64_t transfer_id, uint64_t bytes, const TransferError* error) {
  std::string remote;
  std::string notification;
  bool notify = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = transfers_.find(transfer_id);
    if (it != transfers_.end()) {
      notify = !error && it->second.has_notification;
      remote = it->second.remote;
      notification = std::move(it->second.notification);
    }
  }
  // Queued before the transfer reads as done, so a caller that closes this agent as soon as
  // it is done has not already dropped the notification.
  if (notify) {
    try {
      notify_peer(remote, remote_metadata(remote), std::move(notification));
    } catch (const TransferError&) {
      // This agent is closing or forgot the peer; the read itself succeeded.
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = transfers_.find(transfer_id);
    if (it != transfers_.end()) {
      if (it->second.released) {
        transfers_.erase(it);
      } else {
        TransferStatus& s = it->second.status;
        s.bytes = bytes;
        s.state = error ? TransferState::Error : TransferState::Done;
        if (error) {
          s.error_kind = error->kind();
          s.message = error->what();
        }
      }
    }
  }
  emit({AgentEvent::Kind::TransferFinished, transfer_id, error != nullptr, bytes});
}

void TransferAgent::notification_received(const std::string& from_agent, std::string bytes) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    notifications_.push_back({from_agent, std::move(bytes)});
  }
  emit({AgentEvent::Kind::Notification, 0});
}

}  // namespace sy::transfer
