#include "transfer/ucx_backend.h"

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "transfer/byte_io.h"

namespace sy::transfer {
namespace {

// The "ucx" section of agent metadata:
//   u32 version, u32 memory kinds (bit per MemoryKind), u32 length + worker address,
//   u32 region count, then per region: u64 region id, u32 length + packed remote key.
constexpr uint32_t kSectionVersion = 1;
constexpr size_t kMaxWorkerAddressBytes = 64 * 1024;
constexpr size_t kMaxRkeyBytes = 64 * 1024;
// Notifications are active messages with this id; the payload is u32 length + sender name,
// then the notification's bytes.
constexpr unsigned kNotificationAmId = 1;
constexpr int kIdleWaitMs = 1000;
// While a failed read waits for its gets, its endpoint is force-closed (purging them) once
// nothing has completed on it for this long (or the read's timeout, if shorter).
constexpr int64_t kMaxSilenceMs = 1000;
// After a force close, how long a failed read waits for UCX to purge its gets before it is
// reported anyway (its memory stays pinned until they do complete).
constexpr int64_t kCloseGraceMs = 2000;
// Shutdown: queued notifications get this long to leave, then endpoints this long to close.
constexpr int64_t kShutdownFlushMs = 200;
constexpr int64_t kShutdownCloseMs = 1000;
// Progress calls per loop turn before commands and deadlines are looked at again.
constexpr int kProgressBatch = 64;

std::string ucx_message(const std::string& what, ucs_status_t status) {
  return what + ": " + ucs_status_string(status);
}

uint32_t kind_bit(MemoryKind kind) { return 1u << static_cast<uint32_t>(kind); }

ErrorKind error_kind_of(ucs_status_t status) {
  switch (status) {
    case UCS_ERR_CANCELED:  // purged by a force close: the endpoint was dropped
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_REJECTED:
    case UCS_ERR_NOT_CONNECTED:
    case UCS_ERR_IO_ERROR:
      return ErrorKind::Closed;
    default:
      return ErrorKind::System;
  }
}

/** The fixed part of a peer's section; `reader` is left at the region count. */
struct SectionHeader {
  uint32_t memory_kinds = 0;
  std::string worker_address;
};

const std::string* find_section(const AgentMetadata& peer) {
  auto it = peer.sections.find("ucx");
  return it == peer.sections.end() ? nullptr : &it->second;
}

/** The memory kinds a peer's section offers, without copying the rest; 0 when it is unusable. */
uint32_t peek_memory_kinds(const std::string& section) {
  if (section.size() < 8) return 0;
  ByteReader r(section.data(), 8, "the UCX section of agent metadata");
  return r.u32() == kSectionVersion ? r.u32() : 0;
}

SectionHeader read_header(ByteReader& r, const AgentMetadata& peer) {
  uint32_t version = r.u32();
  if (version != kSectionVersion) {
    throw TransferError(ErrorKind::Protocol, "agent '" + peer.name + "' exported UCX metadata version " +
                                                 std::to_string(version) + "; this agent reads version " +
                                                 std::to_string(kSectionVersion));
  }
  SectionHeader h;
  h.memory_kinds = r.u32();
  h.worker_address = r.bytes(kMaxWorkerAddressBytes);
  return h;
}

}  // namespace

UcxBackend::UcxBackend(std::string agent_name, UcxOptions options, BackendEvents& events)
    : agent_name_(std::move(agent_name)), options_(std::move(options)), events_(events), commands_(agent_name_) {
  if (options_.chunk_bytes == 0) throw TransferError(ErrorKind::Invalid, "chunkBytes must be positive");
  if (options_.max_inflight_bytes == 0) throw TransferError(ErrorKind::Invalid, "maxInflightBytes must be positive");
  const std::string transports = options_.transports.empty() ? "UCX's default transports" : "transports '" + options_.transports + "'";

  ucp_config_t* config = nullptr;
  ucs_status_t s = ucp_config_read(nullptr, nullptr, &config);
  if (s != UCS_OK) throw TransferError(ErrorKind::System, ucx_message("cannot read UCX's configuration", s));
  if (!options_.transports.empty()) {
    s = ucp_config_modify(config, "TLS", options_.transports.c_str());
    if (s != UCS_OK) {
      ucp_config_release(config);
      throw TransferError(ErrorKind::Invalid, ucx_message("UCX rejects " + transports, s));
    }
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED | UCP_PARAM_FIELD_NAME;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  // Memory is mapped on the caller's thread while the progress thread drives the worker.
  params.mt_workers_shared = 1;
  params.name = agent_name_.c_str();
  s = ucp_init(&params, config, &context_);
  ucp_config_release(config);
  if (s != UCS_OK) throw TransferError(ErrorKind::System, ucx_message("cannot start UCX with " + transports, s));

  try {
    ucp_context_attr_t attr{};
    attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
    s = ucp_context_query(context_, &attr);
    if (s != UCS_OK) throw TransferError(ErrorKind::System, ucx_message("ucp_context_query", s));
    memory_kinds_ = kind_bit(MemoryKind::Host);
    if (attr.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) memory_kinds_ |= kind_bit(MemoryKind::Cuda);

    ucp_worker_params_t wp{};
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SINGLE;  // the progress thread alone uses it once started
    s = ucp_worker_create(context_, &wp, &worker_);
    if (s != UCS_OK) throw TransferError(ErrorKind::System, ucx_message("cannot create a UCX worker with " + transports, s));
    ucp_address_t* address = nullptr;
    size_t address_length = 0;
    s = ucp_worker_get_address(worker_, &address, &address_length);
    if (s != UCS_OK) throw TransferError(ErrorKind::System, ucx_message("ucp_worker_get_address", s));
    worker_address_.assign(reinterpret_cast<const char*>(address), address_length);
    ucp_worker_release_address(worker_, address);
    s = ucp_worker_get_efd(worker_, &worker_fd_);
    if (s != UCS_OK) throw TransferError(ErrorKind::System, ucx_message("ucp_worker_get_efd", s));

    ucp_am_handler_param_t am{};
    am.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                    UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
    am.id = kNotificationAmId;
    am.flags = UCP_AM_FLAG_WHOLE_MSG;
    am.cb = &UcxBackend::on_notification;
    am.arg = this;
    s = ucp_worker_set_am_recv_handler(worker_, &am);
    if (s != UCS_OK) throw TransferError(ErrorKind::System, ucx_message("ucp_worker_set_am_recv_handler", s));
  } catch (...) {
    if (worker_) ucp_worker_destroy(worker_);
    ucp_cleanup(context_);
    throw;
  }
  progress_thread_ = std::thread([this] { run(); });
}

UcxBackend::~UcxBackend() {
  shutdown();
  {
    std::lock_guard<std::mutex> lock(regions_mu_);
    for (auto& [id, m] : mapped_) ucp_mem_unmap(context_, m.memh);
    mapped_.clear();
  }
  ucp_cleanup(context_);
}

bool UcxBackend::can_read(const AgentMetadata& peer, const MemoryRegion& remote, const MemoryRegion& local) const {
  const std::string* section = find_section(peer);
  return section && (memory_kinds_ & kind_bit(local.kind)) && (peek_memory_kinds(*section) & kind_bit(remote.kind));
}

bool UcxBackend::reaches(const AgentMetadata& peer) const {
  const std::string* section = find_section(peer);
  return section && peek_memory_kinds(*section) != 0;
}

bool UcxBackend::add_region(const MemoryRegion& region) {
  if (!(memory_kinds_ & kind_bit(region.kind))) return false;
  ucp_mem_map_params_t p{};
  p.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
  p.address = reinterpret_cast<void*>(region.base);
  p.length = region.length;
  p.memory_type = region.kind == MemoryKind::Cuda ? UCS_MEMORY_TYPE_CUDA : UCS_MEMORY_TYPE_HOST;
  const std::string what = "region " + std::to_string(region.id) + " (" + std::to_string(region.length) + " bytes of " +
                           memory_kind_name(region.kind) + " memory)";
  MappedRegion m;
  ucs_status_t s = ucp_mem_map(context_, &p, &m.memh);
  if (s != UCS_OK) throw TransferError(ErrorKind::System, ucx_message("ucp_mem_map of " + what, s));
  void* packed = nullptr;
  size_t packed_length = 0;
  s = ucp_rkey_pack(context_, m.memh, &packed, &packed_length);
  if (s != UCS_OK) {
    ucp_mem_unmap(context_, m.memh);
    throw TransferError(ErrorKind::System, ucx_message("ucp_rkey_pack of " + what, s));
  }
  m.packed_rkey.assign(static_cast<const char*>(packed), packed_length);
  ucp_rkey_buffer_release(packed);
  std::lock_guard<std::mutex> lock(regions_mu_);
  mapped_[region.id] = std::move(m);
  return true;
}

void UcxBackend::remove_region(uint64_t region_id) {
  std::lock_guard<std::mutex> lock(regions_mu_);
  auto it = mapped_.find(region_id);
  if (it == mapped_.end()) return;
  ucp_mem_unmap(context_, it->second.memh);
  mapped_.erase(it);
}

std::string UcxBackend::metadata_section() const {
  ByteWriter w;
  w.u32(kSectionVersion);
  w.u32(memory_kinds_);
  w.bytes(worker_address_);
  std::lock_guard<std::mutex> lock(regions_mu_);
  w.u32(static_cast<uint32_t>(mapped_.size()));
  for (const auto& [id, m] : mapped_) {
    w.u64(id);
    w.bytes(m.packed_rkey);
  }
  return std::move(w.str());
}

// ---- caller's thread ----

void UcxBackend::post_read(ReadJob job) { commands_.push(BackendCommand::read(std::move(job))); }

void UcxBackend::cancel(uint64_t transfer_id) {
  try {
    commands_.push(BackendCommand::cancel(transfer_id));
  } catch (const TransferError&) {
    // Closed: shutdown fails every read anyway.
  }
}

void UcxBackend::send_notification_to(const std::shared_ptr<const AgentMetadata>& peer, std::string bytes) {
  commands_.push(BackendCommand::notify(peer->name, peer, std::move(bytes)));
}

void UcxBackend::shutdown() {
  commands_.close();
  if (progress_thread_.joinable() && progress_thread_.get_id() != std::this_thread::get_id()) progress_thread_.join();
}

// ---- progress thread ----

void UcxBackend::on_operation_done(void* request, ucs_status_t status, void* user_data) {
  auto* op = static_cast<Operation*>(user_data);
  op->backend->operation_done(op, status);
  ucp_request_free(request);
}

void UcxBackend::on_endpoint_error(void* arg, ucp_ep_h, ucs_status_t status) {
  // Only noted here: the endpoint is closed from the loop, outside UCX's callback.
  auto* e = static_cast<Endpoint*>(arg);
  if (e->error_status == UCS_OK) e->error_status = status;
}

ucs_status_t UcxBackend::on_notification(void* arg, const void*, size_t, void* data, size_t length,
                                         const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxBackend*>(arg);
  // This agent's senders send eagerly; a rendezvous message is not one of its notifications.
  if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) return UCS_OK;
  try {
    ByteReader r(data, length, "a UCX notification");
    std::string from = r.bytes(255);
    size_t offset = 4 + from.size();
    std::string bytes(static_cast<const char*>(data) + offset, length - offset);
    if (!from.empty()) self->events_.notification_received(from, std::move(bytes));
  } catch (const TransferError&) {
    // Malformed: dropped, as the TCP backend drops a connection that sends one.
  }
  return UCS_OK;
}

void UcxBackend::run() {
  while (true) {
    bool stopping;
    std::deque<BackendCommand> commands = commands_.take(stopping);
    stopping_ = stopping;
    for (BackendCommand& c : commands) handle_command(c);
    if (stopping) break;
    bool busy = !commands.empty();
    for (int i = 0; i < kProgressBatch && ucp_worker_progress(worker_) > 0; ++i) busy = true;
    for (auto& [id, e] : endpoints_) busy = pump(*e) || busy;
    busy = settle() || busy;
    if (busy) continue;
    // Sleep until the worker or a command has something: arm, then wait on both fds.
    ucs_status_t armed = ucp_worker_arm(worker_);
    if (armed == UCS_ERR_BUSY) continue;
    int timeout_ms = armed == UCS_OK ? wait_timeout_ms() : std::min(wait_timeout_ms(), 1);
    pollfd fds[2] = {{worker_fd_, POLLIN, 0}, {commands_.fd(), POLLIN, 0}};
    poll(fds, 2, timeout_ms);
    if (fds[1].revents & POLLIN) commands_.clear_wakeup();
  }

  // Notifications already queued get a moment to leave; then every endpoint is force-closed,
  // which purges its operations, and every read still here fails as closed.
  auto now = Clock::now();
  const auto flush_until = now + std::chrono::milliseconds(kShutdownFlushMs);
  while (notifications_outstanding_ > 0 && Clock::now() < flush_until) {
    if (ucp_worker_progress(worker_) == 0) usleep(100);
  }
  for (auto& [id, r] : reads_) fail_read(r, ErrorKind::Closed, "agent '" + agent_name_ + "' was closed");
  for (auto& [id, e] : endpoints_) {
    e->current = false;
    e->reads_waiting.clear();
    close_endpoint(*e);
  }
  current_endpoint_.clear();
  const auto close_until = Clock::now() + std::chrono::milliseconds(kShutdownCloseMs);
  auto closing = [&] {
    for (auto& [id, e] : endpoints_) {
      if (e->close_request && ucp_request_check_status(e->close_request) == UCS_INPROGRESS) return true;
    }
    return false;
  };
  while (closing() && Clock::now() < close_until) {
    if (ucp_worker_progress(worker_) == 0) usleep(100);
  }
  for (auto& [id, r] : reads_) {
    if (!r.reported) report(id, r);
  }
  for (auto& [id, e] : endpoints_) {
    if (e->close_request) ucp_request_free(e->close_request);
    e->close_request = nullptr;
    for (auto& [region, key] : e->rkeys) ucp_rkey_destroy(key);
    e->rkeys.clear();
  }
  // Destroying the worker completes whatever it still holds; reads_ pins their memory until then.
  ucp_worker_destroy(worker_);
  worker_ = nullptr;
  reads_.clear();
  endpoints_.clear();
}

void UcxBackend::handle_command(BackendCommand& command) {
  switch (command.kind) {
    case BackendCommand::Kind::Read:
      if (stopping_) {
        TransferError e(ErrorKind::Closed, "agent '" + agent_name_ + "' was closed");
        events_.transfer_finished(command.transfer_id, 0, &e);
      } else {
        start_read(std::move(command.job));
      }
      return;
    case BackendCommand::Kind::Cancel: {
      auto it = reads_.find(command.transfer_id);
      if (it != reads_.end()) fail_read(it->second, ErrorKind::Canceled, "the read was canceled");
      return;
    }
    case BackendCommand::Kind::Notify:
      send_notification_now(command.address, std::move(command.bytes));
      return;
  }
}

void UcxBackend::start_read(ReadJob job) {
  const uint64_t id = job.transfer_id;
  std::string error;
  Endpoint* e = endpoint_to(*job.peer, error);
  if (!e) {
    TransferError err(ErrorKind::Closed, "cannot reach " + describe(*job.peer) + " over UCX: " + error);
    events_.transfer_finished(id, 0, &err);
    return;
  }
  // Every region the read touches needs its key unpacked on this endpoint (once per endpoint).
  for (const ResolvedBlock& b : job.remote) {
    if (e->rkeys.count(b.region->id)) continue;
    try {
      remote_key(*e, *job.peer, b.region->id);
    } catch (const TransferError& err) {
      events_.transfer_finished(id, 0, &err);
      return;
    }
  }
  ActiveRead r;
  r.job = std::move(job);
  r.endpoint_id = e->id;
  reads_.emplace(id, std::move(r));
  e->reads_waiting.push_back(id);
}

std::string UcxBackend::describe(const AgentMetadata& peer) const { return "agent '" + peer.name + "'"; }

UcxBackend::Endpoint* UcxBackend::endpoint_to(const AgentMetadata& peer, std::string& error) {
  const std::string* section = find_section(peer);
  if (!section) {
    error = "its metadata has no UCX section (it was not started with the UCX backend)";
    return nullptr;
  }
  SectionHeader header;
  try {
    ByteReader r(section->data(), section->size(), "the UCX section of agent metadata");
    header = read_header(r, peer);
  } catch (const TransferError& e) {
    error = e.what();
    return nullptr;
  }
  auto current = current_endpoint_.find(peer.name);
  if (current != current_endpoint_.end()) {
    Endpoint& e = *endpoints_.at(current->second);
    if (e.worker_address == header.worker_address) return &e;
    // The peer restarted (a new worker): new operations go to a new endpoint, and this one
    // closes once its reads are done (settle).
    e.current = false;
    current_endpoint_.erase(current);
  }
  auto e = std::make_unique<Endpoint>();
  e->id = next_endpoint_id_++;
  e->peer = peer.name;
  e->worker_address = header.worker_address;
  e->last_progress = Clock::now();
  ucp_ep_params_t p{};
  p.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
  p.address = reinterpret_cast<const ucp_address_t*>(e->worker_address.data());
  p.err_mode = UCP_ERR_HANDLING_MODE_NONE;
  if (options_.peer_error_handling) {
    p.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLER;
    p.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    p.err_handler.cb = &UcxBackend::on_endpoint_error;
    p.err_handler.arg = e.get();
  }
  ucs_status_t s = ucp_ep_create(worker_, &p, &e->ep);
  if (s != UCS_OK) {
    error = ucx_message("ucp_ep_create", s);
    if (s == UCS_ERR_UNREACHABLE) {
      error += " (no UCX transport of this agent reaches the peer's worker: compare the two agents' UCX transports "
               "and error handling; shared memory needs both to turn peer error handling off)";
    }
    return nullptr;
  }
  Endpoint* raw = e.get();
  current_endpoint_[peer.name] = raw->id;
  endpoints_.emplace(raw->id, std::move(e));
  return raw;
}

ucp_rkey_h UcxBackend::remote_key(Endpoint& endpoint, const AgentMetadata& peer, uint64_t region_id) {
  auto cached = endpoint.rkeys.find(region_id);
  if (cached != endpoint.rkeys.end()) return cached->second;
  const std::string* section = find_section(peer);
  if (!section) throw TransferError(ErrorKind::Invalid, describe(peer) + " exported no UCX metadata");
  ByteReader r(section->data(), section->size(), "the UCX section of agent metadata");
  read_header(r, peer);
  uint32_t n = r.u32();
  for (uint32_t i = 0; i < n; ++i) {
    uint64_t id = r.u64();
    std::string packed = r.bytes(kMaxRkeyBytes);
    if (id != region_id) continue;
    ucp_rkey_h key = nullptr;
    ucs_status_t s = ucp_ep_rkey_unpack(endpoint.ep, packed.data(), &key);
    if (s != UCS_OK) {
      throw TransferError(ErrorKind::System, ucx_message("cannot unpack the UCX key of region " + std::to_string(region_id) +
                                                             " of " + describe(peer),
                                                         s));
    }
    endpoint.rkeys[region_id] = key;
    return key;
  }
  throw TransferError(ErrorKind::Invalid, describe(peer) + " exported no UCX key for its region " +
                                              std::to_string(region_id) + " (its UCX backend does not map " +
                                              "that kind of memory)");
}

bool UcxBackend::pump(Endpoint& e) {
  bool posted = false;
  while (!e.broken && !e.close_started && e.inflight_bytes < options_.max_inflight_bytes && !e.reads_waiting.empty()) {
    uint64_t id = e.reads_waiting.front();
    e.reads_waiting.pop_front();
    auto it = reads_.find(id);
    if (it == reads_.end() || it->second.failed) continue;
    ActiveRead& r = it->second;
    const Chunk chunk = r.cursor.next(r.job, options_.chunk_bytes);
    auto* op = new Operation;
    op->backend = this;
    op->transfer_id = id;
    op->endpoint_id = e.id;
    op->length = chunk.length;
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.send = &UcxBackend::on_operation_done;
    p.user_data = op;
    if (chunk.local.region->kind == MemoryKind::Cuda) {
      p.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMORY_TYPE;
      p.memory_type = UCS_MEMORY_TYPE_CUDA;
    }
    if (e.outstanding == 0) e.last_progress = Clock::now();
    e.outstanding++;
    e.inflight_bytes += chunk.length;
    r.outstanding++;
    uint8_t* destination = chunk.local.pointer() + chunk.offset;
    const uint64_t source = chunk.remote.region->base + chunk.remote.offset + chunk.offset;
    if (!r.cursor.done(r.job)) e.reads_waiting.push_back(id);
    posted = true;
    ucs_status_ptr_t s = ucp_get_nbx(e.ep, destination, chunk.length, source, e.rkeys.at(chunk.remote.region->id), &p);
    if (s == nullptr) {
      operation_done(op, UCS_OK);
    } else if (UCS_PTR_IS_ERR(s)) {
      operation_done(op, UCS_PTR_STATUS(s));
    }  // else: on_operation_done, from a later progress call
  }
  return posted;
}

void UcxBackend::operation_done(Operation* op, ucs_status_t status) {
  std::unique_ptr<Operation> owned(op);
  auto e = endpoints_.find(op->endpoint_id);
  if (e != endpoints_.end()) {
    e->second->outstanding--;
    e->second->last_progress = Clock::now();
    if (op->kind == Operation::Kind::Get) e->second->inflight_bytes -= op->length;
  }
  if (op->kind == Operation::Kind::Notify) {
    notifications_outstanding_--;
    return;  // a notification that failed is lost, as over a TCP connection that drops
  }
  auto it = reads_.find(op->transfer_id);
  if (it == reads_.end()) return;
  ActiveRead& r = it->second;
  r.outstanding--;
  if (status == UCS_OK) {
    r.received += op->length;
  } else {
    fail_read(r, error_kind_of(status), ucx_message("a get of " + std::to_string(op->length) + " bytes from " +
                                                        describe(*r.job.peer) + " failed",
                                                    status));
  }
}

void UcxBackend::fail_read(ActiveRead& read, ErrorKind kind, const std::string& message) {
  if (read.failed || read.reported) return;
  read.failed = true;
  read.error_kind = kind;
  read.error_message = message;
  read.failed_at = Clock::now();
}

void UcxBackend::break_endpoint(Endpoint& e, const std::string& reason) {
  if (e.broken) return;
  e.broken = true;
  if (e.current) {
    e.current = false;
    auto it = current_endpoint_.find(e.peer);
    if (it != current_endpoint_.end() && it->second == e.id) current_endpoint_.erase(it);
  }
  for (auto& [id, r] : reads_) {
    if (r.endpoint_id == e.id) fail_read(r, ErrorKind::Closed, reason);
  }
  e.reads_waiting.clear();
  close_endpoint(e);
}

void UcxBackend::close_endpoint(Endpoint& e) {
  if (e.close_started) return;
  e.close_started = true;
  e.close_started_at = Clock::now();
  // FORCE: no flush handshake with a peer that may be gone; operations still queued are
  // purged (completed with an error), so none writes into a destination after its read is
  // reported. UCX allows it only in error handling mode PEER; without, the close flushes, and
  // may never finish with a dead peer (settle() reports its reads after kCloseGraceMs anyway).
  ucp_request_param_t p{};
  if (options_.peer_error_handling) {
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = UCP_EP_CLOSE_FLAG_FORCE;
  }
  ucs_status_ptr_t s = ucp_ep_close_nbx(e.ep, &p);
  if (s == nullptr || UCS_PTR_IS_ERR(s)) {
    e.closed = true;
  } else {
    e.close_request = s;
  }
}

void UcxBackend::report(uint64_t transfer_id, ActiveRead& r) {
  r.reported = true;
  if (!r.failed) {
    events_.transfer_finished(transfer_id, r.received, nullptr);
    return;
  }
  TransferError e(r.error_kind, r.error_message + " (read " + std::to_string(r.received) + " of " +
                                    std::to_string(r.job.total_bytes) + " bytes)");
  events_.transfer_finished(transfer_id, r.received, &e);
}

bool UcxBackend::settle() {
  bool acted = false;
  const auto now = Clock::now();
  for (auto& [id, e] : endpoints_) {
    if (e->error_status != UCS_OK && !e->broken) {
      break_endpoint(*e, ucx_message("the UCX endpoint to agent '" + e->peer + "' failed", e->error_status));
      acted = true;
    }
  }
  for (auto& [id, r] : reads_) {
    if (!r.failed && now >= r.job.deadline) {
      fail_read(r, ErrorKind::Timeout, "read of " + std::to_string(r.job.total_bytes) + " bytes from " +
                                           describe(*r.job.peer) + " over UCX timed out after " +
                                           std::to_string(r.job.timeout_ms) + " ms");
      acted = true;
    }
  }
  // A failed read waits for its gets; if its endpoint has gone silent, the peer is not going
  // to answer them: drop the endpoint, which purges them.
  for (auto& [id, r] : reads_) {
    if (!r.failed || r.reported || r.outstanding == 0) continue;
    auto e = endpoints_.find(r.endpoint_id);
    if (e == endpoints_.end() || e->second->close_started) continue;
    const int64_t silence_ms = std::min<int64_t>(r.job.timeout_ms, kMaxSilenceMs);
    if (now - e->second->last_progress >= std::chrono::milliseconds(silence_ms)) {
      break_endpoint(*e->second, "nothing arrived from agent '" + e->second->peer + "' over UCX for " +
                                     std::to_string(silence_ms) + " ms");
      acted = true;
    }
  }
  for (auto& [id, e] : endpoints_) {
    if (e->close_request && ucp_request_check_status(e->close_request) != UCS_INPROGRESS) {
      ucp_request_free(e->close_request);
      e->close_request = nullptr;
      e->closed = true;
      acted = true;
    }
  }
  for (auto it = reads_.begin(); it != reads_.end();) {
    ActiveRead& r = it->second;
    if (!r.reported) {
      bool finished = r.outstanding == 0 && (r.failed || r.cursor.done(r.job));
      if (!finished && r.failed) {
        // UCX did not purge the gets of a closed endpoint in time: report anyway; the job keeps
        // the memory pinned until they complete.
        auto e = endpoints_.find(r.endpoint_id);
        auto since = e == endpoints_.end() ? r.failed_at : std::max(r.failed_at, e->second->close_started_at);
        bool closing = e == endpoints_.end() || e->second->close_started;
        finished = closing && now - since >= std::chrono::milliseconds(kCloseGraceMs);
      }
      if (finished) {
        report(it->first, r);
        acted = true;
      }
    }
    it = r.reported && r.outstanding == 0 ? reads_.erase(it) : std::next(it);
  }
  for (auto it = endpoints_.begin(); it != endpoints_.end();) {
    Endpoint& e = *it->second;
    if (!e.current && !e.close_started && e.outstanding == 0 && e.reads_waiting.empty()) {
      close_endpoint(e);
      acted = true;
    }
    if (e.closed && e.outstanding == 0) {
      // Keys go once nothing uses them; they belong to the worker's tables, not to the endpoint.
      for (auto& [region, key] : e.rkeys) ucp_rkey_destroy(key);
      it = endpoints_.erase(it);
      acted = true;
      continue;
    }
    ++it;
  }
  return acted;
}

int UcxBackend::wait_timeout_ms() const {
  const auto now = Clock::now();
  auto soonest = now + std::chrono::milliseconds(kIdleWaitMs);
  for (const auto& [id, r] : reads_) {
    if (!r.failed) {
      soonest = std::min(soonest, r.job.deadline);
      continue;
    }
    auto e = endpoints_.find(r.endpoint_id);
    if (e == endpoints_.end()) continue;
    if (!e->second->close_started) {
      soonest = std::min(soonest, e->second->last_progress + std::chrono::milliseconds(
                                                                 std::min<int64_t>(r.job.timeout_ms, kMaxSilenceMs)));
    } else {
      soonest = std::min(soonest, std::max(r.failed_at, e->second->close_started_at) + std::chrono::milliseconds(kCloseGraceMs));
    }
  }
  for (const auto& [id, e] : endpoints_) {
    // A close completes in progress calls; look again soon rather than wait on the fd.
    if (e->close_request) soonest = std::min(soonest, now + std::chrono::milliseconds(10));
  }
  if (soonest <= now) return 0;
  return static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(soonest - now).count() + 1);
}

void UcxBackend::send_notification_now(const std::shared_ptr<const AgentMetadata>& peer, std::string bytes) {
  std::string error;
  Endpoint* e = endpoint_to(*peer, error);
  if (!e || e->broken) return;  // lost, as over a TCP connection that cannot be opened
  auto* op = new Operation;
  op->kind = Operation::Kind::Notify;
  op->backend = this;
  op->endpoint_id = e->id;
  ByteWriter w;
  w.bytes(agent_name_);
  op->payload = std::move(w.str());
  op->payload.append(bytes);
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  p.cb.send = &UcxBackend::on_operation_done;
  p.user_data = op;
  p.flags = UCP_AM_SEND_FLAG_EAGER;
  if (e->outstanding == 0) e->last_progress = Clock::now();
  e->outstanding++;
  notifications_outstanding_++;
  ucs_status_ptr_t s = ucp_am_send_nbx(e->ep, kNotificationAmId, nullptr, 0, op->payload.data(), op->payload.size(), &p);
  if (s == nullptr) {
    operation_done(op, UCS_OK);
  } else if (UCS_PTR_IS_ERR(s)) {
    operation_done(op, UCS_PTR_STATUS(s));
  }
}

}  // namespace sy::transfer
