// The UCX backend: READs as ucp_get_nbx of the peer's registered memory, over whatever
// transport UCX finds between the two workers: InfiniBand/RoCE verbs (true one-sided RDMA),
// else tcp or shared memory, over which UCX emulates a get with active messages that the
// serving agent's progress thread answers (UCX 1.13's CMA serves only its own rendezvous, not
// user gets). Built only where libucx-dev was found (SWITCHYARD_TRANSFER_UCX); started in an
// agent only when its options ask for "ucx".
//
// One UCP context and worker per agent, driven by one progress thread: every worker call
// (endpoints, remote keys, gets, active messages) happens on it, woken by the worker's event
// fd or by a command. Registering memory (ucp_mem_map, ucp_rkey_pack) is a context call made
// on the caller's thread; the context is created thread-safe for it. The agent's metadata
// carries a "ucx" section: this worker's address, the memory kinds it maps, and a packed
// remote key per registered region.
//
// A READ is split into gets of at most `chunk_bytes`; at most `max_inflight_bytes` of gets
// are outstanding per peer, reads to one peer taking turns a chunk at a time. A transfer is
// reported once none of its gets can still write into its destination: on success, and on
// failure after its outstanding gets completed or were purged. No hang, whatever the peer
// does: a read fails when UCX reports the peer's endpoint broken (error handling mode PEER),
// and at its deadline; a failed read whose gets stay silent gets its endpoint force-closed,
// which purges them, so the next read to that peer opens a new endpoint.
//
// Limits:
// - This agent does not check a peer's gets (TransferAgent's serve stats are TCP's) and
//   refuses none. Over verbs the NIC checks the key, and deregistering a region (which unmaps
//   it) revokes it. Where UCX emulates gets, the serving process's UCX copies from whatever
//   address it is asked for: a peer with stale metadata reads what is there now, and memory
//   since unmapped crashes the serving process. Deregister (and free) a region only once no
//   peer will read it: KV blocks are freed on the read's notification.
// - Device memory needs a UCX built with CUDA (ucp_context_query reports the CUDA memory
//   type). Debian's libucx0 is not: there, and wherever the context lacks it, this backend
//   maps host memory only and device reads go over CUDA IPC (one host) or not at all.
// - A peer that dies is noticed by the transport (a reset TCP connection, a verbs error) or
//   by UCX's keepalive; until then only the read's deadline fails it. That needs UCX's error
//   handling mode PEER (the default here), which UCX 1.13 offers over tcp and verbs only: on
//   one host without verbs, reads then go over UCX's tcp. Shared memory needs
//   peer_error_handling = false, and then gives no failure detection.
#pragma once
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

#include <ucp/api/ucp.h>

#include "transfer/backend.h"
#include "transfer/chunk_cursor.h"
#include "transfer/command_queue.h"

namespace sy::transfer {

struct UcxOptions {
  /** UCX transports, in UCX_TLS syntax ("tcp", "sm", "rc,sm"); empty: UCX's own choice
   *  (the UCX_TLS environment variable, else every transport it finds). */
  std::string transports;
  /**
   * UCP_ERR_HANDLING_MODE_PEER: UCX reports a peer's failure and a force close purges what
   * was in flight to it. UCX 1.13 (Debian 12) offers it only over tcp and verbs, not over
   * shared memory; false (mode NONE) lets shared memory carry the reads, and a dead peer is
   * then noticed only at the read's deadline.
   */
  bool peer_error_handling = true;
  uint64_t chunk_bytes = 1 << 20;
  /** Per peer: bytes of gets posted and not yet completed. */
  uint64_t max_inflight_bytes = 16 << 20;
};

class UcxBackend final : public TransferBackend {
 public:
  /** Throws TransferError(System) with UCX's message when the context or worker cannot start. */
  UcxBackend(std::string agent_name, UcxOptions options, BackendEvents& events);
  ~UcxBackend() override;
  UcxBackend(const UcxBackend&) = delete;
  UcxBackend& operator=(const UcxBackend&) = delete;

  const char* name() const override { return "ucx"; }
  bool can_read(const AgentMetadata& peer, const MemoryRegion& remote, const MemoryRegion& local) const override;
  bool add_region(const MemoryRegion& region) override;
  void remove_region(uint64_t region_id) override;
  std::string metadata_section() const override;
  bool reaches(const AgentMetadata& peer) const override;
  void send_notification_to(const std::shared_ptr<const AgentMetadata>& peer, std::string bytes) override;
  void post_read(ReadJob job) override;
  void cancel(uint64_t transfer_id) override;
  void shutdown() override;

 private:
  /** A get or an active message in flight; the user data of its UCX request. */
  struct Operation {
    enum class Kind { Get, Notify } kind = Kind::Get;
    UcxBackend* backend = nullptr;
    uint64_t transfer_id = 0;
    uint64_t endpoint_id = 0;
    uint64_t length = 0;
    std::string payload;  // Notify: the message, alive until UCX is done with it
  };

  struct Endpoint {
    uint64_t id = 0;
    std::string peer;
    std::string worker_address;
    ucp_ep_h ep = nullptr;
    bool current = true;  // new reads and notifications to `peer` go here
    ucs_status_t error_status = UCS_OK;  // set by UCX's error callback; acted on by settle()
    bool broken = false;  // failed, or force-closed for silence: no new operations
    std::string broken_reason;
    void* close_request = nullptr;
    bool close_started = false;
    bool closed = false;
    Clock::time_point close_started_at;
    uint64_t inflight_bytes = 0;
    uint32_t outstanding = 0;  // operations not yet completed (gets and notifications)
    /** Last completion, or the post that made `outstanding` nonzero: how long it has been silent. */
    Clock::time_point last_progress;
    std::unordered_map<uint64_t, ucp_rkey_h> rkeys;  // the peer's region id -> unpacked key
    /** Reads with chunks not yet posted, served round-robin one chunk at a time. */
    std::deque<uint64_t> reads_waiting;
  };

  struct ActiveRead {
    ReadJob job;
    uint64_t endpoint_id = 0;
    ChunkCursor cursor;  // the chunks not yet posted
    uint64_t received = 0;
    uint32_t outstanding = 0;
    /** The outcome is decided (error, cancel, timeout); reported once `outstanding` is 0. */
    bool failed = false;
    ErrorKind error_kind = ErrorKind::System;
    std::string error_message;
    Clock::time_point failed_at;
    bool reported = false;  // after a close that never purged its gets: kept until they complete
  };

  struct MappedRegion {
    ucp_mem_h memh = nullptr;
    std::string packed_rkey;
  };

  static void on_operation_done(void* request, ucs_status_t status, void* user_data);
  static void on_endpoint_error(void* arg, ucp_ep_h ep, ucs_status_t status);
  static ucs_status_t on_notification(void* arg, const void* header, size_t header_length, void* data,
                                      size_t length, const ucp_am_recv_param_t* param);

  void run();
  void handle_command(BackendCommand& command);
  void start_read(ReadJob job);
  void send_notification_now(const std::shared_ptr<const AgentMetadata>& peer, std::string bytes);
  /** The current endpoint to `peer`, opened from its metadata when there is none; null (and `error` set) when UCX cannot. */
  Endpoint* endpoint_to(const AgentMetadata& peer, std::string& error);
  /** The key of the peer's region, unpacked on `endpoint` once; throws TransferError when its metadata has none. */
  ucp_rkey_h remote_key(Endpoint& endpoint, const AgentMetadata& peer, uint64_t region_id);
  /** Posts gets while the endpoint has in-flight budget; returns whether it posted any. */
  bool pump(Endpoint& endpoint);
  void operation_done(Operation* op, ucs_status_t status);
  void fail_read(ActiveRead& read, ErrorKind kind, const std::string& message);
  void break_endpoint(Endpoint& endpoint, const std::string& reason);
  void close_endpoint(Endpoint& endpoint);
  /** Deadlines, silent endpoints, finished reads, closed endpoints; returns whether it did anything. */
  bool settle();
  int wait_timeout_ms() const;
  void report(uint64_t transfer_id, ActiveRead& read);
  std::string describe(const AgentMetadata& peer) const;

  const std::string agent_name_;
  const UcxOptions options_;
  BackendEvents& events_;
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  std::string worker_address_;
  uint32_t memory_kinds_ = 0;  // bit per MemoryKind this context maps
  int worker_fd_ = -1;

  mutable std::mutex regions_mu_;  // guards mapped_
  std::map<uint64_t, MappedRegion> mapped_;

  CommandQueue commands_;
  std::thread progress_thread_;

  // Progress thread only.
  bool stopping_ = false;
  uint32_t notifications_outstanding_ = 0;
  uint64_t next_endpoint_id_ = 1;
  std::map<uint64_t, std::unique_ptr<Endpoint>> endpoints_;
  std::map<std::string, uint64_t> current_endpoint_;  // peer name -> endpoint id
  std::map<uint64_t, ActiveRead> reads_;
};

}  // namespace sy::transfer
