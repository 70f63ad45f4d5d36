#include "transfer/tcp_backend.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "transfer/byte_io.h"
#include "transfer/tcp_socket.h"

namespace sy::transfer {

using wire::FrameType;
using wire::kHeaderBytes;

namespace {

// Bytes received from one connection per poll wakeup, so one busy peer cannot starve others.
constexpr uint64_t kReceiveBudgetBytes = 16 << 20;
// A connection whose peer has this many answers queued is not read from until they drain:
// the serving side's backpressure against a reader that requests faster than it receives.
constexpr size_t kMaxQueuedFrames = 1024;
constexpr int kIdlePollMs = 1000;
// Receive buffer for headers and small bodies; a body with at least kDirectReceiveBytes left
// is received straight into its destination instead (one copy fewer, one recv per piece).
constexpr size_t kStagingBytes = 32 * 1024;
constexpr uint64_t kDirectReceiveBytes = 8 * 1024;

std::string hello_body(const std::string& name) {
  ByteWriter w;
  w.u32(wire::kProtocolVersion);
  w.bytes(name);
  return std::move(w.str());
}

}  // namespace

TcpBackend::TcpBackend(std::string agent_name, TcpOptions options, const RegionTable& regions,
                       BackendEvents& events)
    : agent_name_(std::move(agent_name)),
      self_("agent '" + agent_name_ + "'"),
      options_(options),
      regions_(regions),
      events_(events),
      commands_(agent_name_) {
  if (options_.chunk_bytes == 0) throw TransferError(ErrorKind::Invalid, "chunkBytes must be positive");
  if (options_.max_inflight_bytes == 0) throw TransferError(ErrorKind::Invalid, "maxInflightBytes must be positive");
  Listener listener = listen_tcp(options_.listen_host, options_.listen_port);
  listen_fd_ = listener.fd;
  port_ = listener.port;
  io_thread_ = std::thread([this] { run(); });
}

TcpBackend::~TcpBackend() {
  shutdown();
  if (listen_fd_ >= 0) close(listen_fd_);
}

bool TcpBackend::can_read(const AgentMetadata& peer, const MemoryRegion& remote, const MemoryRegion& local) const {
  return peer.has_backend("tcp") && remote.kind == MemoryKind::Host && local.kind == MemoryKind::Host;
}

void TcpBackend::post_read(ReadJob job) { commands_.push(BackendCommand::read(std::move(job))); }

void TcpBackend::cancel(uint64_t transfer_id) {
  try {
    commands_.push(BackendCommand::cancel(transfer_id));
  } catch (const TransferError&) {
    // Closed: shutdown fails every transfer anyway.
  }
}

void TcpBackend::send_notification(const std::string& peer, std::shared_ptr<const AgentMetadata> address,
                                   std::string bytes) {
  BackendCommand c = BackendCommand::notify(peer, std::move(address), std::move(bytes));
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!c.address && !greeted_peers_.count(peer)) {
      throw TransferError(ErrorKind::Invalid, "cannot notify agent '" + peer +
                                                  "': no connection with it and no metadata loaded for it");
    }
  }
  commands_.push(std::move(c));
}

void TcpBackend::shutdown() {
  commands_.close();
  if (io_thread_.joinable() && io_thread_.get_id() != std::this_thread::get_id()) io_thread_.join();
}

ServeStats TcpBackend::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

std::string TcpBackend::describe_peer(const Connection& c) const {
  std::string who = c.peer.empty() ? "an unnamed peer" : "agent '" + c.peer + "'";
  return c.address.empty() ? who : who + " at " + c.address;
}

// ---- I/O thread ----

void TcpBackend::run() {
  std::vector<pollfd> fds;
  std::vector<uint64_t> fd_connection;  // connection id of fds[i], 0 for the command queue and listener
  while (true) {
    bool stopping;
    std::deque<BackendCommand> commands = commands_.take(stopping);
    for (BackendCommand& c : commands) handle_command(c);
    if (stopping) break;
    check_deadlines();
    for (auto it = connections_.begin(); it != connections_.end();) {
      it = it->second->dropped ? connections_.erase(it) : std::next(it);
    }

    fds.clear();
    fd_connection.clear();
    fds.push_back({commands_.fd(), POLLIN, 0});
    fds.push_back({listen_fd_, POLLIN, 0});
    fd_connection.assign(2, 0);
    for (auto& [id, c] : connections_) {
      short events = 0;
      if (c->out.size() < kMaxQueuedFrames && !c->connecting) events |= POLLIN;
      if (c->connecting || !c->out.empty()) events |= POLLOUT;
      fds.push_back({c->fd, events, 0});
      fd_connection.push_back(id);
    }
    int ready = poll(fds.data(), fds.size(), poll_timeout_ms());
    if (ready < 0) {
      if (errno == EINTR) continue;
      fail_all(ErrorKind::System, system_message("poll failed in agent '" + agent_name_ + "'", errno));
      break;
    }
    if (fds[0].revents & POLLIN) commands_.clear_wakeup();
    if (fds[1].revents & POLLIN) {
      for (int fd; (fd = accept_connection(listen_fd_)) >= 0;) add_connection(fd, false, "", "");
    }
    for (size_t i = 2; i < fds.size(); ++i) {
      auto it = connections_.find(fd_connection[i]);
      if (it == connections_.end() || it->second->dropped) continue;
      Connection& c = *it->second;
      short re = fds[i].revents;
      if ((re & POLLOUT) || (c.connecting && (re & (POLLERR | POLLHUP)))) on_writable(c);
      if (!c.dropped && !c.connecting && (re & (POLLIN | POLLERR | POLLHUP))) on_readable(c);
    }
  }
  fail_all(ErrorKind::Closed, "agent '" + agent_name_ + "' was closed");
  for (auto& [id, c] : connections_) {
    if (c->fd >= 0) close(c->fd);
  }
  connections_.clear();
  // Closed here, not in the destructor: peers must see a closed agent refuse connections
  // even while JavaScript still holds the (closed) agent object.
  close(listen_fd_);
  listen_fd_ = -1;
}

int TcpBackend::poll_timeout_ms() const {
  if (reads_.empty()) return kIdlePollMs;
  auto now = Clock::now();
  auto soonest = Clock::time_point::max();
  for (const auto& [id, r] : reads_) soonest = std::min(soonest, r.job.deadline);
  if (soonest <= now) return 0;
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(soonest - now).count() + 1;
  return static_cast<int>(std::min<int64_t>(ms, kIdlePollMs));
}

void TcpBackend::handle_command(BackendCommand& command) {
  switch (command.kind) {
    case BackendCommand::Kind::Read: {
      std::string error;
      Connection* c = connection_to(command.job.peer, error);
      if (!c) {
        TransferError e(ErrorKind::Closed, "cannot reach agent '" + command.job.peer->name + "' at " +
                                               command.job.peer->address() + ": " + error);
        events_.transfer_finished(command.transfer_id, 0, &e);
        return;
      }
      ActiveRead r;
      r.job = std::move(command.job);
      r.connection_id = c->id;
      reads_.emplace(command.transfer_id, std::move(r));
      c->reads_waiting.push_back(command.transfer_id);
      request_chunks(*c);
      return;
    }
    case BackendCommand::Kind::Cancel: {
      TransferError e(ErrorKind::Canceled, "the read was canceled");
      finish_read(command.transfer_id, &e);
      return;
    }
    case BackendCommand::Kind::Notify: {
      Connection* c = find_connection(command.peer, true);
      if (!c) c = find_connection(command.peer, false);
      std::string error;
      if (!c && command.address) c = connection_to(command.address, error);
      // Fire and forget, like the notification itself: a peer that is gone cannot be told.
      if (c) queue_frame(*c, FrameType::Notification, 0, std::move(command.bytes));
      return;
    }
  }
}

TcpBackend::Connection* TcpBackend::find_connection(const std::string& peer, bool outbound) {
  for (auto& [id, c] : connections_) {
    if (!c->dropped && c->greeted && c->outbound == outbound && c->peer == peer) return c.get();
  }
  return nullptr;
}

TcpBackend::Connection* TcpBackend::connection_to(const std::shared_ptr<const AgentMetadata>& peer,
                                                  std::string& error) {
  const std::string address = peer->address();
  Connection* existing = find_connection(peer->name, true);
  // Metadata loaded again with a new address: the old connection leads to an old listener.
  if (existing && existing->address == address) return existing;
  int fd = start_connect(peer->host, peer->port, error);
  if (fd < 0) return nullptr;
  Connection* c = add_connection(fd, true, peer->name, address);
  c->connecting = true;
  c->greeted = true;
  queue_frame(*c, FrameType::Hello, 0, hello_body(agent_name_));
  return c;
}

TcpBackend::Connection* TcpBackend::add_connection(int fd, bool outbound, const std::string& peer,
                                                   const std::string& address) {
  auto c = std::make_unique<Connection>();
  c->id = next_connection_id_++;
  c->fd = fd;
  c->outbound = outbound;
  c->peer = peer;
  c->address = address;
  c->last_received = Clock::now();
  c->staging.resize(kStagingBytes);
  Connection* raw = c.get();
  connections_[raw->id] = std::move(c);
  return raw;
}

void TcpBackend::queue_frame(Connection& c, FrameType type, uint64_t request_id, std::string body) {
  OutFrame f;
  wire::encode_header({type, 0, request_id, body.size()}, f.header);
  f.body = std::move(body);
  c.out.push_back(std::move(f));
}

void TcpBackend::request_chunks(Connection& c) {
  while (c.pending_bytes < options_.max_inflight_bytes && !c.reads_waiting.empty()) {
    uint64_t id = c.reads_waiting.front();
    c.reads_waiting.pop_front();
    auto it = reads_.find(id);
    if (it == reads_.end()) continue;  // finished (failed or canceled) before all was requested
    ActiveRead& r = it->second;
    const Chunk chunk = r.cursor.next(r.job, options_.chunk_bytes);
    uint64_t request_id = c.next_request_id++;
    ByteWriter w;
    w.u64(chunk.remote.region->id);
    w.u64(chunk.remote.offset + chunk.offset);
    w.u64(chunk.length);
    queue_frame(c, FrameType::ReadRequest, request_id, std::move(w.str()));
    c.pending[request_id] = PendingChunk{id, chunk.local.pointer() + chunk.offset, chunk.length};
    c.pending_bytes += chunk.length;
    r.outstanding++;
    if (!r.cursor.done(r.job)) c.reads_waiting.push_back(id);
  }
}

void TcpBackend::on_writable(Connection& c) {
  if (c.connecting) {
    int err = connect_result(c.fd);
    if (err != 0) {
      drop_connection(c, ErrorKind::Closed, system_message("cannot connect to " + describe_peer(c), err));
      return;
    }
    c.connecting = false;
    c.last_received = Clock::now();
  }
  constexpr int kMaxIov = 64;
  while (!c.out.empty()) {
    iovec iov[kMaxIov];
    int n = 0;
    for (const OutFrame& f : c.out) {
      if (n + 2 > kMaxIov) break;
      uint64_t skip = f.sent;
      if (skip < kHeaderBytes) {
        iov[n++] = {const_cast<uint8_t*>(f.header) + skip, kHeaderBytes - skip};
        skip = 0;
      } else {
        skip -= kHeaderBytes;
      }
      const uint8_t* data = f.payload ? f.payload : reinterpret_cast<const uint8_t*>(f.body.data());
      uint64_t length = f.payload ? f.payload_length : f.body.size();
      if (skip < length) iov[n++] = {const_cast<uint8_t*>(data) + skip, length - skip};
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = n;
    ssize_t written = sendmsg(c.fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (written < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      drop_connection(c, ErrorKind::Closed, system_message("sending to " + describe_peer(c) + " failed", errno));
      return;
    }
    uint64_t left = static_cast<uint64_t>(written);
    while (left > 0) {
      OutFrame& f = c.out.front();
      uint64_t take = std::min(left, f.size() - f.sent);
      f.sent += take;
      left -= take;
      if (f.sent == f.size()) c.out.pop_front();
    }
  }
}

void TcpBackend::on_readable(Connection& c) {
  uint64_t budget = kReceiveBudgetBytes;
  while (!c.dropped && budget > 0) {
    ssize_t n;
    uint64_t left = c.in_body ? c.frame.body_length - c.body_received : 0;
    if (c.destination && left >= kDirectReceiveBytes) {
      n = recv(c.fd, c.destination + c.body_received, std::min(left, budget), 0);
      if (n > 0) {
        c.body_received += n;
        if (c.body_received == c.frame.body_length) {
          c.in_body = false;
          handle_frame(c);
        }
      }
    } else {
      n = recv(c.fd, c.staging.data(), c.staging.size(), 0);
      if (n > 0) absorb(c, c.staging.data(), static_cast<size_t>(n));
    }
    if (n > 0) {
      c.last_received = Clock::now();
      budget -= std::min<uint64_t>(budget, static_cast<uint64_t>(n));
      continue;
    }
    if (n == 0) {
      drop_connection(c, ErrorKind::Closed, describe_peer(c) + " closed the connection");
      return;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;
    drop_connection(c, ErrorKind::Closed, system_message("receiving from " + describe_peer(c) + " failed", errno));
    return;
  }
}

void TcpBackend::absorb(Connection& c, const uint8_t* data, size_t length) {
  while (length > 0 && !c.dropped) {
    if (!c.in_body) {
      size_t take = std::min(length, kHeaderBytes - c.header_received);
      std::memcpy(c.header + c.header_received, data, take);
      c.header_received += take;
      data += take;
      length -= take;
      if (c.header_received < kHeaderBytes) return;
      c.header_received = 0;
      c.frame = wire::decode_header(c.header);
      c.in_body = true;
      c.body_received = 0;
      c.destination = nullptr;
      if (!begin_body(c)) return;
      if (c.frame.body_length == 0) {
        c.in_body = false;
        handle_frame(c);
      }
      continue;
    }
    size_t take = static_cast<size_t>(std::min<uint64_t>(length, c.frame.body_length - c.body_received));
    if (c.destination) {
      std::memcpy(c.destination + c.body_received, data, take);
    } else if (c.frame.type != FrameType::ReadData) {
      std::memcpy(c.body.data() + c.body_received, data, take);
    }  // else: the answer to a finished read, dropped
    c.body_received += take;
    data += take;
    length -= take;
    if (c.body_received == c.frame.body_length) {
      c.in_body = false;
      handle_frame(c);
    }
  }
}

bool TcpBackend::begin_body(Connection& c) {
  const wire::FrameHeader& h = c.frame;
  std::string problem;
  switch (h.type) {
    case FrameType::Hello:
      if (c.outbound || c.greeted) problem = "a second Hello";
      else if (h.body_length > wire::kMaxHelloBytes) problem = "a Hello of " + std::to_string(h.body_length) + " bytes";
      break;
    case FrameType::ReadRequest:
      if (!c.greeted) problem = "a ReadRequest before Hello";
      else if (h.body_length != wire::kReadRequestBytes) problem = "a ReadRequest of the wrong size";
      break;
    case FrameType::ReadData:
    case FrameType::ReadError: {
      auto it = c.pending.find(h.request_id);
      if (!c.outbound || it == c.pending.end()) {
        problem = "an answer to request " + std::to_string(h.request_id) + ", which this agent never sent";
      } else if (h.type == FrameType::ReadError && h.body_length > wire::kMaxErrorBytes) {
        problem = "a ReadError of " + std::to_string(h.body_length) + " bytes";
      } else if (h.type == FrameType::ReadData && h.body_length != it->second.length) {
        problem = "ReadData of " + std::to_string(h.body_length) + " bytes for a request of " +
                  std::to_string(it->second.length);
      } else if (h.type == FrameType::ReadData && reads_.count(it->second.transfer_id)) {
        c.destination = it->second.destination;
        c.destination_transfer = it->second.transfer_id;
      }
      break;
    }
    case FrameType::Notification:
      if (!c.greeted) problem = "a Notification before Hello";
      else if (h.body_length > wire::kMaxNotificationBytes) problem = "a Notification of " + std::to_string(h.body_length) + " bytes";
      break;
    default:
      problem = "unknown frame type " + std::to_string(static_cast<uint32_t>(h.type));
  }
  if (!problem.empty()) {
    drop_connection(c, ErrorKind::Protocol, describe_peer(c) + " broke the transfer protocol: it sent " + problem);
    return false;
  }
  if (h.type != FrameType::ReadData) c.body.assign(h.body_length, '\0');
  return true;
}

void TcpBackend::handle_frame(Connection& c) {
  const wire::FrameHeader& h = c.frame;
  try {
    switch (h.type) {
      case FrameType::Hello: {
        ByteReader r(c.body.data(), c.body.size(), "Hello");
        uint32_t version = r.u32();
        std::string name = r.bytes(256);
        if (version != wire::kProtocolVersion) {
          drop_connection(c, ErrorKind::Protocol, "agent '" + name + "' speaks transfer protocol version " +
                                                       std::to_string(version) + ", this agent " +
                                                       std::to_string(wire::kProtocolVersion));
          return;
        }
        c.peer = name;
        c.greeted = true;
        std::lock_guard<std::mutex> lock(mu_);
        greeted_peers_.insert(name);
        return;
      }
      case FrameType::ReadRequest:
        serve_read(c);
        return;
      case FrameType::ReadData:
      case FrameType::ReadError: {
        auto it = c.pending.find(h.request_id);
        PendingChunk chunk = it->second;
        c.pending.erase(it);
        c.pending_bytes -= chunk.length;
        c.destination = nullptr;
        auto r = reads_.find(chunk.transfer_id);
        if (r != reads_.end()) {
          if (h.type == FrameType::ReadError) {
            TransferError e(ErrorKind::Rejected, "agent '" + c.peer + "' refused the read: " + c.body);
            finish_read(chunk.transfer_id, &e);
          } else {
            r->second.received += chunk.length;
            if (--r->second.outstanding == 0 && r->second.cursor.done(r->second.job)) finish_read(chunk.transfer_id, nullptr);
          }
        }
        request_chunks(c);
        return;
      }
      case FrameType::Notification:
        events_.notification_received(c.peer, std::move(c.body));
        c.body.clear();
        return;
    }
  } catch (const TransferError& e) {
    drop_connection(c, ErrorKind::Protocol, describe_peer(c) + " sent a malformed frame: " + e.what());
  }
}

void TcpBackend::serve_read(Connection& c) {
  ByteReader r(c.body.data(), c.body.size(), "ReadRequest");
  BlockDescriptor d;
  d.region_id = r.u64();
  d.offset = r.u64();
  d.length = r.u64();
  try {
    ResolvedBlock block = regions_.resolve(d, self_);
    if (block.region->kind != MemoryKind::Host) {
      throw TransferError(ErrorKind::Invalid, "region " + std::to_string(d.region_id) + " of agent '" + agent_name_ +
                                                  "' is device memory; the TCP backend serves host memory only");
    }
    OutFrame f;
    wire::encode_header({FrameType::ReadData, 0, c.frame.request_id, d.length}, f.header);
    f.payload = block.pointer();
    f.payload_length = d.length;
    f.pin = block.region;
    c.out.push_back(std::move(f));
    std::lock_guard<std::mutex> lock(mu_);
    stats_.reads_served++;
    stats_.bytes_served += d.length;
  } catch (const TransferError& e) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stats_.reads_rejected++;
      stats_.last_rejection = std::string("read from ") + describe_peer(c) + " rejected: " + e.what();
    }
    queue_frame(c, FrameType::ReadError, c.frame.request_id, e.what());
  }
}

void TcpBackend::finish_read(uint64_t transfer_id, const TransferError* error) {
  auto it = reads_.find(transfer_id);
  if (it == reads_.end()) return;
  const uint64_t received = it->second.received;
  auto c = connections_.find(it->second.connection_id);
  // The rest of a chunk being received for this read is discarded: its destination may be
  // reused as soon as the caller learns the outcome.
  if (c != connections_.end() && c->second->destination_transfer == transfer_id) c->second->destination = nullptr;
  reads_.erase(it);
  events_.transfer_finished(transfer_id, received, error);
}

void TcpBackend::drop_connection(Connection& c, ErrorKind kind, const std::string& reason) {
  if (c.dropped) return;
  c.dropped = true;
  std::vector<uint64_t> ids;
  for (const auto& [id, r] : reads_) {
    if (r.connection_id == c.id) ids.push_back(id);
  }
  for (uint64_t id : ids) {
    const ActiveRead& r = reads_.at(id);
    TransferError e(kind, reason + " (read " + std::to_string(r.received) + " of " +
                              std::to_string(r.job.total_bytes) + " bytes)");
    finish_read(id, &e);
  }
  close(c.fd);
  c.fd = -1;
  c.out.clear();
  if (!c.outbound && c.greeted) {
    Connection* other = nullptr;
    for (auto& [id, o] : connections_) {
      if (o.get() != &c && !o->dropped && !o->outbound && o->greeted && o->peer == c.peer) other = o.get();
    }
    if (!other) {
      std::lock_guard<std::mutex> lock(mu_);
      greeted_peers_.erase(c.peer);
    }
  }
}

void TcpBackend::fail_all(ErrorKind kind, const std::string& reason) {
  std::vector<uint64_t> ids;
  for (const auto& [id, r] : reads_) ids.push_back(id);
  TransferError e(kind, reason);
  for (uint64_t id : ids) finish_read(id, &e);
}

void TcpBackend::check_deadlines() {
  auto now = Clock::now();
  std::vector<uint64_t> expired;
  for (const auto& [id, r] : reads_) {
    if (now >= r.job.deadline) expired.push_back(id);
  }
  for (uint64_t id : expired) {
    auto it = reads_.find(id);
    if (it == reads_.end()) continue;  // failed with its connection below
    const ActiveRead& r = it->second;
    const uint32_t timeout_ms = r.job.timeout_ms;
    auto conn = connections_.find(r.connection_id);
    Connection* c = conn == connections_.end() ? nullptr : conn->second.get();
    std::string where = c ? describe_peer(*c) : "agent '" + r.job.peer->name + "'";
    TransferError e(ErrorKind::Timeout, "read of " + std::to_string(r.job.total_bytes) + " bytes from " + where +
                                            " timed out after " + std::to_string(r.job.timeout_ms) + " ms (read " +
                                            std::to_string(r.received) + " bytes)");
    bool silent = c && now - c->last_received >= std::chrono::milliseconds(timeout_ms);
    finish_read(id, &e);  // invalidates r
    if (silent) {
      drop_connection(*c, ErrorKind::Timeout,
                      "nothing arrived from " + where + " for " + std::to_string(timeout_ms) + " ms");
    }
  }
}

}  // namespace sy::transfer
