// The TCP backend: one listener and one I/O thread per agent, polling every socket. A READ
// is split into chunks of at most `chunk_bytes`, and up to `max_inflight_bytes` of chunks are
// requested ahead on each connection, so the target always has the next chunk to send while
// the reader receives the last. The target sends ReadData straight from the registered
// region with writev; the reader receives it straight into the destination block. Nothing is
// copied through a staging buffer on either side.
//
// No hang, whatever the peer does: a transfer fails when its connection closes, when the
// peer refuses a chunk, when the peer breaks the protocol, or at its deadline. A connection on
// which nothing arrived for a whole timeout is dropped too, so the next read reconnects.
#pragma once
#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "transfer/backend.h"
#include "transfer/chunk_cursor.h"
#include "transfer/command_queue.h"
#include "transfer/tcp_wire.h"

namespace sy::transfer {

struct TcpOptions {
  std::string listen_host = "127.0.0.1";
  uint16_t listen_port = 0;
  uint64_t chunk_bytes = 1 << 20;
  /** Per connection: bytes requested and not yet received. */
  uint64_t max_inflight_bytes = 16 << 20;
};

struct ServeStats {
  uint64_t reads_served = 0;  // chunks
  uint64_t bytes_served = 0;
  uint64_t reads_rejected = 0;
  std::string last_rejection;
};

class TcpBackend final : public TransferBackend {
 public:
  TcpBackend(std::string agent_name, TcpOptions options, const RegionTable& regions, BackendEvents& events);
  ~TcpBackend() override;

  uint16_t port() const { return port_; }
  const char* name() const override { return "tcp"; }
  bool can_read(const AgentMetadata& peer, const MemoryRegion& remote, const MemoryRegion& local) const override;
  void post_read(ReadJob job) override;
  void cancel(uint64_t transfer_id) override;
  void shutdown() override;

  /**
   * Queues a notification to `peer`: over a connection already open with it, else over a new
   * one to `address` (its metadata). Throws TransferError(Invalid) when neither exists.
   */
  void send_notification(const std::string& peer, std::shared_ptr<const AgentMetadata> address, std::string bytes);
  ServeStats stats() const;

 private:
  /** A frame waiting to be sent: ReadData points into a registered region it pins. */
  struct OutFrame {
    uint8_t header[wire::kHeaderBytes];
    std::string body;
    const uint8_t* payload = nullptr;
    uint64_t payload_length = 0;
    std::shared_ptr<const MemoryRegion> pin;
    uint64_t sent = 0;
    uint64_t size() const { return wire::kHeaderBytes + body.size() + payload_length; }
  };

  /** A chunk this agent requested and has not yet received. */
  struct PendingChunk {
    uint64_t transfer_id = 0;
    uint8_t* destination = nullptr;
    uint64_t length = 0;
  };

  struct Connection {
    uint64_t id = 0;
    int fd = -1;
    bool outbound = false;    // this agent connected (and reads over it)
    bool connecting = false;  // outbound connect not yet complete
    bool greeted = false;     // the peer's name is known (outbound: from the start)
    bool dropped = false;     // closed; erased at the end of the loop iteration
    std::string peer;
    std::string address;
    Clock::time_point last_received;

    // The frame being received. A ReadData body goes to `destination`, or is discarded when
    // its transfer has already finished (its memory may be reused by then). Headers and small
    // bodies arrive through `staging`, many frames per recv; the rest of a large body is
    // received straight into its destination.
    std::vector<uint8_t> staging;
    uint8_t header[wire::kHeaderBytes];
    size_t header_received = 0;
    bool in_body = false;
    wire::FrameHeader frame;
    uint64_t body_received = 0;
    std::string body;
    uint8_t* destination = nullptr;
    uint64_t destination_transfer = 0;

    std::deque<OutFrame> out;
    std::unordered_map<uint64_t, PendingChunk> pending;
    uint64_t pending_bytes = 0;
    uint64_t next_request_id = 1;
    /** Reads with chunks not yet requested, served round-robin one chunk at a time. */
    std::deque<uint64_t> reads_waiting;
  };

  struct ActiveRead {
    ReadJob job;
    uint64_t connection_id = 0;
    ChunkCursor cursor;  // the chunks not yet requested
    uint64_t received = 0;
    uint32_t outstanding = 0;  // chunks requested, not yet answered
  };

  void run();
  void handle_command(BackendCommand& command);
  Connection* find_connection(const std::string& peer, bool outbound);
  Connection* connection_to(const std::shared_ptr<const AgentMetadata>& peer, std::string& error);
  Connection* add_connection(int fd, bool outbound, const std::string& peer, const std::string& address);
  void request_chunks(Connection& c);
  void on_readable(Connection& c);
  void absorb(Connection& c, const uint8_t* data, size_t length);
  void on_writable(Connection& c);
  bool begin_body(Connection& c);
  void handle_frame(Connection& c);
  void serve_read(Connection& c);
  std::string describe_peer(const Connection& c) const;
  void queue_frame(Connection& c, wire::FrameType type, uint64_t request_id, std::string body);
  void finish_read(uint64_t transfer_id, const TransferError* error);
  void drop_connection(Connection& c, ErrorKind kind, const std::string& reason);
  void fail_all(ErrorKind kind, const std::string& reason);
  void check_deadlines();
  int poll_timeout_ms() const;

  const std::string agent_name_;
  const std::string self_;  // "agent '<name>'", for messages
  const TcpOptions options_;
  const RegionTable& regions_;
  BackendEvents& events_;
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  CommandQueue commands_;

  mutable std::mutex mu_;  // guards greeted_peers_, stats_
  std::set<std::string> greeted_peers_;  // peers with an open connection, for send_notification
  ServeStats stats_;
  std::thread io_thread_;

  // Owned by the I/O thread.
  uint64_t next_connection_id_ = 1;
  std::map<uint64_t, std::unique_ptr<Connection>> connections_;
  std::unordered_map<uint64_t, ActiveRead> reads_;
};

}  // namespace sy::transfer
