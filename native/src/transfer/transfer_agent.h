// The transfer agent, in the spirit of NVIDIA NIXL: it registers memory, exports metadata a
// peer loads, and posts READs of a peer's blocks into its own, each finishing as done or as an
// error with a message, plus short notifications between agents. A decode worker reads a
// prefill worker's KV blocks this way and then notifies it, so the prefill worker can free them.
//
// Threads: every method may be called from one caller thread (JavaScript's); backends run
// their own threads and report through the event hook, which must not call back into the
// agent while holding locks of its own.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "transfer/agent_metadata.h"
#include "transfer/backend.h"
#include "transfer/memory_region.h"
#include "transfer/tcp_backend.h"

namespace sy::transfer {

struct AgentOptions {
  std::string name;
  TcpOptions tcp;
  /**
   * The backends that may carry reads of host memory, most preferred first: "tcp", "ucx". A
   * read goes over the first one both agents have. TCP runs whatever this says (it is the
   * listener and the control channel); UCX starts only when listed. Device memory of a peer
   * on this host goes over CUDA IPC whatever this says.
   */
  std::vector<std::string> read_backends = {"tcp"};
  /** UCX transports (UCX_TLS syntax), when "ucx" is listed; empty: UCX's default. */
  std::string ucx_transports;
  /** UcxOptions::peer_error_handling. */
  bool ucx_peer_error_handling = true;
  /** Host and port peers connect to; default: the listen host (the hostname when that is a
   *  wildcard) and the bound port. Set them when peers reach this agent through NAT or a proxy. */
  std::string advertise_host;
  uint16_t advertise_port = 0;
  /** Default deadline of a read, from posting to its last byte. */
  uint32_t timeout_ms = 10000;
};

enum class TransferState { Pending, Done, Error };

struct TransferStatus {
  TransferState state = TransferState::Pending;
  ErrorKind error_kind = ErrorKind::Invalid;  // when state == Error
  std::string message;
  uint64_t bytes = 0;  // bytes received (all of them when done)
};

struct Notification {
  std::string from;
  std::string bytes;
};

struct AgentEvent {
  enum class Kind { TransferFinished, Notification } kind;
  uint64_t transfer_id = 0;
  /** A finished transfer's outcome, so that the hook need not ask status() when it is done. */
  bool failed = false;
  uint64_t bytes = 0;
};

class TransferAgent final : private BackendEvents {
 public:
  explicit TransferAgent(AgentOptions options);
  ~TransferAgent() override;
  TransferAgent(const TransferAgent&) = delete;
  TransferAgent& operator=(const TransferAgent&) = delete;

  const std::string& name() const { return options_.name; }
  /** "host:port" this agent advertises. */
  std::string address() const;
  /** The port its TCP listener is bound to (the advertised one may differ). */
  uint16_t listen_port() const { return tcp_->port(); }
  /** The backends this agent runs (and its metadata advertises): "tcp"; "ucx" when asked for;
   *  "cuda_ipc" when built with CUDA and a GPU is visible. */
  std::vector<std::string> backends() const;
  /** The backends this build has, whether or not an agent runs them. */
  static std::vector<std::string> built_backends();

  /** The caller keeps [base, base + length) alive until deregistered and no transfer uses it. */
  std::shared_ptr<const MemoryRegion> register_memory(MemoryKind kind, int32_t device_id, uint64_t base,
                                                      uint64_t length);
  bool deregister_memory(uint64_t region_id);

  std::string metadata() const;
  /** Loads (or replaces) a peer's metadata; returns the peer's name. */
  std::string load_remote_metadata(const std::string& blob);
  bool forget_remote(const std::string& name);

  /**
   * Reads remote_descs[i] of agent `remote` into local_descs[i], for every i. Throws
   * TransferError(Invalid) at once for a bad descriptor or an unknown agent; anything later
   * is reported by status(). `notification`, when given, is sent to the remote agent after
   * the last byte has arrived. timeout_ms 0: the agent's default.
   */
  uint64_t post_read(const std::string& remote, const std::vector<BlockDescriptor>& remote_descs,
                     const std::vector<BlockDescriptor>& local_descs, const std::string* notification,
                     uint32_t timeout_ms);
  /**
   * The same read with both sides given as block lists of as many blocks of one length: each
   * list is checked against its region once (its largest offset), not block by block, and a
   * backend that reads block lists (CUDA IPC) gets them as they are (read during the call; the
   * caller may reuse the lists once it returns). A list that fails the check is checked pair by
   * pair, for the same error the descriptors would give.
   */
  uint64_t post_read(const std::string& remote, const BlockList& remote_list, const BlockList& local_list,
                     const std::string* notification, uint32_t timeout_ms);
  TransferStatus status(uint64_t transfer_id) const;
  /** Cancels a pending transfer (it finishes with ErrorKind::Canceled). */
  void cancel(uint64_t transfer_id);
  /** Forgets a transfer's status; a pending one is canceled first. */
  void release(uint64_t transfer_id);

  void send_notification(const std::string& peer, std::string bytes);
  std::vector<Notification> take_notifications();

  /** Called on a backend thread when a transfer finishes or a notification arrives. Set it
   *  before posting; it is never called after close() returns. */
  void set_event_hook(std::function<void(const AgentEvent&)> hook);
  ServeStats serve_stats() const;
  /** Fails every pending transfer (ErrorKind::Closed), closes the listener; idempotent. */
  void close();

 private:
  struct TransferRecord {
    TransferStatus status;
    std::string remote;
    bool has_notification = false;
    std::string notification;
    bool released = false;
  };

  std::shared_ptr<const AgentMetadata> peer_to_read(const std::string& remote) const;
  /** The error of a read that no backend of this agent carries. */
  [[noreturn]] void throw_no_backend(const std::string& remote, const AgentMetadata& peer, bool device_memory) const;
  /** Records the transfer and hands `job` (checked, its backend chosen) to `backend`. */
  uint64_t submit(const std::string& remote, TransferBackend& backend, ReadJob job, const std::string* notification,
                  uint32_t timeout_ms);
  void transfer_finished(uint64_t transfer_id, uint64_t bytes, const TransferError* error) override;
  void notification_received(const std::string& from_agent, std::string bytes) override;
  void emit(const AgentEvent& event);
  std::shared_ptr<const AgentMetadata> remote_metadata(const std::string& name) const;
  /** Notifications to a peer go over UCX when UCX is what this agent reads from it over, else TCP. */
  void notify_peer(const std::string& peer, const std::shared_ptr<const AgentMetadata>& metadata, std::string bytes);

  AgentOptions options_;
  std::string host_id_;
  RegionTable regions_;
  std::unique_ptr<TcpBackend> tcp_;
  std::unique_ptr<TransferBackend> device_;  // CUDA IPC, where built and a GPU is visible
  std::unique_ptr<TransferBackend> ucx_;     // UCX, where built and asked for
  std::vector<TransferBackend*> backends_;   // every backend running: tcp_ first
  /** Whom post_read asks, in order: the device backend, then read_backends' order. */
  std::vector<TransferBackend*> read_order_;

  mutable std::mutex mu_;  // guards everything below
  bool closed_ = false;
  uint64_t next_transfer_id_ = 1;
  std::map<std::string, std::shared_ptr<const AgentMetadata>> remotes_;
  std::map<uint64_t, TransferRecord> transfers_;
  std::vector<Notification> notifications_;
  std::function<void(const AgentEvent&)> hook_;
};

}  // namespace sy::transfer
