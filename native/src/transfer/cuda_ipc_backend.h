// The CUDA IPC backend: READs of a peer's GPU memory on the same host, by mapping the peer's
// allocation into this process (cudaIpcOpenMemHandle) and copying on a stream of its own, on
// one worker thread. Built only where the CUDA toolkit is found (SWITCHYARD_TRANSFER_CUDA_IPC);
// added to an agent only when a GPU is visible.
//
// How a read is copied: descriptor pairs that continue the previous pair on both sides are
// merged first. Into device memory, the whole read is then one launch of a gather kernel over
// a list of <= 32 KiB pieces (cuda_copy_kernels.cu, where nvcc built it), since one
// cudaMemcpyAsync per KV block costs microseconds each: the 14 336 blocks of a 4k-token prompt
// took 74 ms that way on an H200, the kernel 0.28 ms (bench/transfer_cuda.ts). Into host memory, or without
// the kernel, one cudaMemcpyAsync per merged run. SWITCHYARD_CUDA_IPC_COPY=kernel | batch (one
// cudaMemcpyBatchAsync over the merged runs) | memcpy picks the method, for benchmarks; with
// SWITCHYARD_CUDA_IPC_TRACE=1 each read prints its descriptor counts and host and GPU times
// to stderr.
//
// Limits, by CUDA IPC's rules: the two agents run in different processes on one host (same
// boot id in their metadata); a device region is registered at the start of its cudaMalloc
// allocation (the IPC handle maps the whole allocation from its base); the destination may be
// device or host memory. A copy already on the GPU cannot be interrupted: the deadline is
// checked before each job and after its copies. A read is reported done only after its stream
// has been synchronized, so whoever learns of it (the decode worker's engine, committing the
// blocks) may read the bytes from any stream in work it launches afterwards.
#pragma once
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <cuda_runtime_api.h>

#include "transfer/backend.h"
#include "transfer/cuda_copy_kernels.h"

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
  enum class CopyMethod { Kernel, Batch, Memcpy };
  /** What the worker keeps per device: its stream, timing events, the piece list's buffers. */
  struct DeviceState {
    cudaStream_t stream = nullptr;
    cudaEvent_t start = nullptr;
    cudaEvent_t stop = nullptr;
    void* host_pieces = nullptr;    // pinned
    void* device_pieces = nullptr;
    size_t piece_capacity = 0;      // pieces each buffer holds
    int multiprocessors = 1;
  };
  struct Run {
    uint64_t src;
    uint64_t dst;
    uint64_t bytes;
  };

  void run();
  void execute(const ReadJob& job);
  DeviceState& device_state(int device);
  /** The peer's region mapped into this process, opened once per (peer, region). */
  uint8_t* mapped(const AgentMetadata& peer, const MemoryRegion& remote);

  CopyMethod method_ = CopyMethod::Kernel;
  bool trace_ = false;

  const std::string host_id_;
  BackendEvents& events_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<ReadJob> queue_;
  std::set<uint64_t> canceled_;
  bool stopped_ = false;
  std::thread worker_;
  struct Mapping {
    std::string handle;  // the cudaIpcMemHandle_t it was opened from
    void* pointer = nullptr;
  };
  // Worker thread only.
  std::map<std::pair<std::string, uint64_t>, Mapping> opened_;
  std::map<int, DeviceState> devices_;
  std::vector<Run> runs_;
  std::vector<CopyPiece> plan_;
};

}  // namespace sy::transfer
