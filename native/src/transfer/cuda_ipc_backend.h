// The CUDA IPC backend: READs of a peer's GPU memory on the same host, by mapping the peer's
// allocation into this process (cudaIpcOpenMemHandle) and copying on a stream of its own, on
// one worker thread. Built only where the CUDA toolkit is found (SWITCHYARD_TRANSFER_CUDA_IPC);
// added to an agent only when a GPU is visible.
//
// How a read is copied. A read whose two sides are block lists (a KV read), into device memory,
// 16-byte aligned, is issued on the posting thread itself: the two offset arrays go into a
// pinned staging buffer, one async copy uploads them, and one launch of a gather kernel
// computes each 32 KiB piece's addresses from (base, offset, block length, piece index); the
// worker thread only waits for the read's event and reports it. Any other read is queued for
// the worker: descriptor pairs that continue the previous pair on both sides are merged, then,
// into device memory, the whole read is one launch of the gather kernel over a list of <= 32
// KiB pieces planned on the host (cuda_copy_kernels.cu, where nvcc built it), since one
// cudaMemcpyAsync per KV block costs microseconds each: the 14 336 blocks of a 4k-token prompt
// took 74 ms that way on an H200, the kernel 0.28 ms (bench/transfer_cuda.ts). Into host
// memory, or without the kernel, one cudaMemcpyAsync per merged run.
// SWITCHYARD_CUDA_IPC_COPY=kernel | batch (one cudaMemcpyBatchAsync over the merged runs) |
// memcpy picks the method, for benchmarks (batch and memcpy queue block lists too); with
// SWITCHYARD_CUDA_IPC_TRACE=1 each read prints its descriptor counts, host and GPU times and
// the steady clock at which the worker saw it finish to stderr.
//
// Limits, by CUDA IPC's rules: the two agents run in different processes on one host (same
// boot id in their metadata); a device region is registered at the start of its cudaMalloc
// allocation (the IPC handle maps the whole allocation from its base); the destination may be
// device or host memory. A copy already on the GPU cannot be interrupted: a queued read's
// deadline and cancel are checked before it starts, and a read issued at posting is past both.
// A read is reported done only after the event recorded behind its copy has completed, so
// whoever learns of it (the decode worker's engine, committing the blocks) may read the bytes
// from any stream in work it launches afterwards.
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
  bool reads_block_lists() const override { return true; }
  void post_read(ReadJob job) override;
  void cancel(uint64_t transfer_id) override;
  void shutdown() override;

 private:
  CudaIpcBackend(std::string host_id, BackendEvents& events);
  enum class CopyMethod { Kernel, Batch, Memcpy };
  /** One block-list read's offsets on their way to the GPU, and its events; reused once it is done. */
  struct Staging {
    int device = 0;
    uint64_t* host = nullptr;            // pinned: remote offsets, then local offsets
    uint64_t* device_offsets = nullptr;
    size_t capacity = 0;                 // offsets each buffer holds
    cudaEvent_t done = nullptr;          // recorded behind the copy
    cudaEvent_t start = nullptr;         // trace only
    cudaEvent_t stop = nullptr;
    ~Staging();
  };
  /** What the backend keeps per device: its stream, events, the piece list's buffers, free staging. */
  struct DeviceState {
    cudaStream_t stream = nullptr;
    cudaEvent_t start = nullptr;
    cudaEvent_t stop = nullptr;
    cudaEvent_t done = nullptr;     // behind a queued read's copies
    void* host_pieces = nullptr;    // pinned
    void* device_pieces = nullptr;
    size_t piece_capacity = 0;      // pieces each buffer holds
    int multiprocessors = 1;
    std::vector<std::unique_ptr<Staging>> free_staging;
  };
  /** A read in the worker's queue: to be copied by the worker, or already issued (staging set). */
  struct Work {
    ReadJob job;
    std::unique_ptr<Staging> staging;
    size_t blocks = 0;
    uint64_t pieces = 0;
    Clock::time_point posted;
    Clock::time_point issued;
  };
  struct Run {
    uint64_t src;
    uint64_t dst;
    uint64_t bytes;
  };

  void run();
  /** Issues a queued read's copies and waits for them; returns its trace line (empty without trace). */
  std::string execute(const ReadJob& job);
  /** Waits for an issued read, reports it, and keeps its staging for the next one. */
  void finish_issued(Work& work, bool stopping);
  /** Puts a block-list read on the GPU from the posting thread; false when it must be queued instead. */
  bool issue_block_list(const ReadJob& job, Work& work);
  std::unique_ptr<Staging> take_staging(int device, DeviceState& state, size_t offsets);
  DeviceState& device_state(int device);
  /** The peer's region mapped into this process, opened once per (peer, region). */
  uint8_t* mapped(const AgentMetadata& peer, const MemoryRegion& remote);

  CopyMethod method_ = CopyMethod::Kernel;
  bool trace_ = false;

  const std::string host_id_;
  BackendEvents& events_;
  std::mutex mu_;  // guards the queue; held by a posting thread while it issues, so shutdown waits for it
  std::condition_variable wake_;
  std::deque<Work> queue_;
  std::set<uint64_t> canceled_;
  bool stopped_ = false;
  std::thread worker_;
  struct Mapping {
    std::string handle;  // the cudaIpcMemHandle_t it was opened from
    void* pointer = nullptr;
  };
  std::mutex cuda_mu_;  // guards opened_ and devices_ (the posting thread and the worker both issue)
  std::map<std::pair<std::string, uint64_t>, Mapping> opened_;
  std::map<int, DeviceState> devices_;
  // Worker thread only.
  std::vector<Run> runs_;
  std::vector<CopyPiece> plan_;
};

}  // namespace sy::transfer
