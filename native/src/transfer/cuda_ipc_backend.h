// The CUDA IPC backend: READs of a peer's GPU memory on the same host, by mapping the peer's
// allocation into this process (cudaIpcOpenMemHandle) and copying with cudaMemcpyAsync on a
// stream of its own, on one worker thread. Built only where the CUDA toolkit is found
// (SWITCHYARD_TRANSFER_CUDA_IPC); added to an agent only when a GPU is visible.
//
// Limits, by CUDA IPC's rules: the two agents run in different processes on one host (same
// boot id in their metadata); a device region is registered at the start of its cudaMalloc
// allocation (the IPC handle maps the whole allocation from its base); the destination may be
// device or host memory. A copy already on the GPU cannot be interrupted: the deadline is
// checked before each job and after its copies.
#pragma once
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "transfer/backend.h"

namespace sy::transfer {

class CudaIpcBackend final : public TransferBackend {
 public:
  /** Null when no GPU is visible (the agent then has no device backend). */
  static std::unique_ptr<CudaIpcBackend> create(std::string host_id, BackendEvents& events);
  ~CudaIpcBackend() override;

  const char* name() const override { return "cuda_ipc"; }
  bool can_read(const AgentMetadata& peer, const MemoryRegion& remote, const MemoryRegion& local) const override;
  std::string export_region(const MemoryRegion& region) override;
  void post_read(ReadJob job) override;
  void cancel(uint64_t transfer_id) override;
  void shutdown() override;

 private:
  CudaIpcBackend(std::string host_id, BackendEvents& events);
  void run();
  void execute(const ReadJob& job);
  /** The peer's region mapped into this process, opened once per (peer, region). */
  uint8_t* mapped(const AgentMetadata& peer, const MemoryRegion& remote);

  const std::string host_id_;
  BackendEvents& events_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<ReadJob> queue_;
  std::set<uint64_t> canceled_;
  bool stopped_ = false;
  std::thread worker_;
  // Worker thread only.
  std::map<std::pair<std::string, uint64_t>, void*> opened_;
};

}  // namespace sy::transfer
