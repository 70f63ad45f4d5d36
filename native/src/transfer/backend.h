// The seam between the agent and the ways bytes move. The agent validates a read (every
// descriptor inside a registered region, pairs of equal length), picks the backend that can
// move those kinds of memory between this agent and the peer, and hands it a ReadJob. The
// backend owns the job until it reports the outcome, exactly once, through
// BackendEvents::transfer_finished: on success, error, timeout, cancel, or its own shutdown.
//
// Backends: TCP (host memory, any two hosts; always built), CUDA IPC (device memory, one
// host; built only with CUDA) and UCX (host memory, and device memory where UCX was built with
// CUDA; any two hosts, over RDMA where the fabric has it; built only with libucx-dev, used only
// when the agent is asked to). Notifications travel over TCP, the control channel, except to a
// peer this agent reads from over UCX: those go as UCX active messages (transfer_agent.cpp).
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "transfer/agent_metadata.h"
#include "transfer/memory_region.h"
#include "transfer/transfer_error.h"

namespace sy::transfer {

using Clock = std::chrono::steady_clock;

struct ReadJob {
  uint64_t transfer_id = 0;
  std::shared_ptr<const AgentMetadata> peer;
  /** remote[i] is read into local[i]; both have the same length. Remote blocks refer to the
   *  peer's regions as its metadata described them; local blocks pin this agent's regions. */
  std::vector<ResolvedBlock> remote;
  std::vector<ResolvedBlock> local;
  /** Instead of remote and local, only for a backend whose reads_block_lists() is true: both
   *  sides given as block lists of as many blocks of one length (remote_list.region is set).
   *  Their offsets are the caller's, valid only inside post_read (ResolvedBlockList). */
  ResolvedBlockList remote_list;
  ResolvedBlockList local_list;
  uint64_t total_bytes = 0;
  uint32_t timeout_ms = 0;
  Clock::time_point deadline;
};

/** Turns a job's block lists into remote/local pairs, the form every backend reads and may keep. */
inline void expand_block_lists(ReadJob& job) {
  if (!job.remote_list.region) return;
  const size_t n = job.remote_list.count;
  job.remote.reserve(n);
  job.local.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    job.remote.push_back(ResolvedBlock{job.remote_list.region, job.remote_list.offsets[i], job.remote_list.length});
    job.local.push_back(ResolvedBlock{job.local_list.region, job.local_list.offsets[i], job.local_list.length});
  }
  job.remote_list = {};
  job.local_list = {};
}

class BackendEvents {
 public:
  virtual ~BackendEvents() = default;
  /** `error` is null on success. Called on the backend's thread. */
  virtual void transfer_finished(uint64_t transfer_id, uint64_t bytes, const TransferError* error) = 0;
  virtual void notification_received(const std::string& from_agent, std::string bytes) = 0;
};

class TransferBackend {
 public:
  virtual ~TransferBackend() = default;
  virtual const char* name() const = 0;
  /** Whether this backend moves bytes from `remote` (of `peer`) into `local`. */
  virtual bool can_read(const AgentMetadata& peer, const MemoryRegion& remote, const MemoryRegion& local) const = 0;
  /** What a peer needs to reach `region` through this backend (e.g. an IPC handle); may be empty. */
  virtual std::string export_region(const MemoryRegion& region) { return {}; }
  /**
   * A region was registered (before any peer can learn of it): a backend that serves memory by
   * its own registration (UCX's ucp_mem_map) does it here. Returns whether this backend now
   * reaches the region; throws TransferError to refuse it.
   */
  virtual bool add_region(const MemoryRegion& region) { return false; }
  /** The region was deregistered: peers must no longer read it through this backend. */
  virtual void remove_region(uint64_t region_id) {}
  /** This backend's section of the agent's metadata (e.g. UCX's worker address and keys); empty for none. */
  virtual std::string metadata_section() const { return {}; }
  /** Whether `peer`'s metadata lets this backend reach it (for notifications; reads ask can_read). */
  virtual bool reaches(const AgentMetadata& peer) const { return false; }
  /** Queues a notification to `peer`; only called where reaches(peer). TCP's has its own entry point. */
  virtual void send_notification_to(const std::shared_ptr<const AgentMetadata>& peer, std::string bytes) {
    throw TransferError(ErrorKind::Invalid, std::string("the ") + name() + " backend sends no notifications");
  }
  /** Whether post_read takes a job in its block-list form (else the agent expands it first). */
  virtual bool reads_block_lists() const { return false; }
  virtual void post_read(ReadJob job) = 0;
  /** Fails the transfer with ErrorKind::Canceled if it has not finished; no-op otherwise. */
  virtual void cancel(uint64_t transfer_id) = 0;
  /** Fails every unfinished transfer with ErrorKind::Closed and stops; idempotent. */
  virtual void shutdown() = 0;
};

}  // namespace sy::transfer
