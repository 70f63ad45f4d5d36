#include "transfer/cuda_ipc_backend.h"

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "transfer/cuda_copy_kernels.h"

namespace sy::transfer {
namespace {

void check(cudaError_t rc, const std::string& what) {
  if (rc != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error state of this thread
    throw TransferError(ErrorKind::System, what + ": " + cudaGetErrorString(rc));
  }
}

/** Puts the calling thread's current device back: a posting thread (JavaScript's) may use CUDA itself. */
class DeviceRestorer {
 public:
  DeviceRestorer() {
    if (cudaGetDevice(&previous_) != cudaSuccess) {
      cudaGetLastError();
      previous_ = -1;
    }
  }
  ~DeviceRestorer() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }

 private:
  int previous_ = -1;
};

double us(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

long long steady_ns(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

}  // namespace

CudaIpcBackend::Staging::~Staging() {
  if (host) cudaFreeHost(host);
  if (device_offsets) cudaFree(device_offsets);
  if (done) cudaEventDestroy(done);
  if (start) cudaEventDestroy(start);
  if (stop) cudaEventDestroy(stop);
}

std::unique_ptr<CudaIpcBackend> CudaIpcBackend::create(std::string host_id, BackendEvents& events) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    cudaGetLastError();
    return nullptr;
  }
  return std::unique_ptr<CudaIpcBackend>(new CudaIpcBackend(std::move(host_id), events));
}

CudaIpcBackend::CudaIpcBackend(std::string host_id, BackendEvents& events)
    : host_id_(std::move(host_id)), events_(events) {
  const char* method = std::getenv("SWITCHYARD_CUDA_IPC_COPY");
  if (method && std::strcmp(method, "batch") == 0) method_ = CopyMethod::Batch;
  if (method && std::strcmp(method, "memcpy") == 0) method_ = CopyMethod::Memcpy;
  const char* trace = std::getenv("SWITCHYARD_CUDA_IPC_TRACE");
  trace_ = trace && trace[0] && std::strcmp(trace, "0") != 0;
  worker_ = std::thread([this] { run(); });
}

CudaIpcBackend::~CudaIpcBackend() { shutdown(); }

bool CudaIpcBackend::can_read(const AgentMetadata& peer, const MemoryRegion& remote, const MemoryRegion& local) const {
  return remote.kind == MemoryKind::Cuda && peer.has_backend("cuda_ipc") && peer.host_id == host_id_ &&
         remote.backend_blob.size() == sizeof(cudaIpcMemHandle_t);
}

std::string CudaIpcBackend::export_region(const MemoryRegion& region) {
  if (region.kind != MemoryKind::Cuda) return {};
  check(cudaSetDevice(region.device_id), "cudaSetDevice(" + std::to_string(region.device_id) + ")");
  cudaIpcMemHandle_t handle;
  check(cudaIpcGetMemHandle(&handle, reinterpret_cast<void*>(region.base)),
        "cudaIpcGetMemHandle (register device memory at the start of its cudaMalloc allocation)");
  return std::string(reinterpret_cast<const char*>(&handle), sizeof handle);
}

void CudaIpcBackend::post_read(ReadJob job) {
  Work work;
  work.posted = Clock::now();
  {
    // Held while issuing, so a shutdown cannot slip between the check and the queue.
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) throw TransferError(ErrorKind::Closed, "the CUDA IPC backend is closed");
    if (job.remote_list.region && !issue_block_list(job, work)) expand_block_lists(job);
    job.remote_list.offsets = job.local_list.offsets = nullptr;  // the caller's: copied by now
    work.job = std::move(job);
    queue_.push_back(std::move(work));
  }
  wake_.notify_one();
}

bool CudaIpcBackend::issue_block_list(const ReadJob& job, Work& work) {
#ifdef SWITCHYARD_TRANSFER_CUDA_KERNELS
  const ResolvedBlockList& from = job.remote_list;
  const ResolvedBlockList& to = job.local_list;
  const size_t n = from.count;
  if (method_ != CopyMethod::Kernel || to.region->kind != MemoryKind::Cuda || n > UINT32_MAX ||
      ((to.region->base | from.length | from.offset_bits | to.offset_bits) & 15) != 0) {
    return false;
  }
  std::lock_guard<std::mutex> cuda_lock(cuda_mu_);
  DeviceRestorer restore;
  const int device = to.region->device_id;
  check(cudaSetDevice(device), "cudaSetDevice(" + std::to_string(device) + ")");
  DeviceState& state = device_state(device);
  uint8_t* src_base = mapped(*job.peer, *from.region);
  if ((reinterpret_cast<uint64_t>(src_base) & 15) != 0) return false;  // (a mapping starts at an allocation)
  std::unique_ptr<Staging> staging = take_staging(device, state, 2 * n);
  std::memcpy(staging->host, from.offsets, n * sizeof(uint64_t));
  std::memcpy(staging->host + n, to.offsets, n * sizeof(uint64_t));
  try {
    if (trace_) check(cudaEventRecord(staging->start, state.stream), "cudaEventRecord");
    check(cudaMemcpyAsync(staging->device_offsets, staging->host, 2 * n * sizeof(uint64_t), cudaMemcpyHostToDevice,
                          state.stream),
          "cudaMemcpyAsync of the block offsets");
    // A block of 256 threads per piece (streaming stores): the piece-list kernel was as fast that
    // way as with 4 blocks per SM on random KV blocks and 4-6% faster on runs of them
    // (bench/transfer_cuda.ts, "Gather kernel alone").
    check(launch_gather_block_list(reinterpret_cast<uint64_t>(src_base), to.region->base, staging->device_offsets,
                                   static_cast<uint32_t>(n), from.length, INT32_MAX, state.stream),
          "the block-list gather kernel");
    if (trace_) check(cudaEventRecord(staging->stop, state.stream), "cudaEventRecord");
    check(cudaEventRecord(staging->done, state.stream), "cudaEventRecord");
  } catch (...) {
    cudaStreamSynchronize(state.stream);  // nothing queued may still read the staging buffer when it is freed
    cudaGetLastError();
    throw;
  }
  work.staging = std::move(staging);
  work.blocks = n;
  work.pieces = block_list_pieces(n, from.length);
  work.issued = Clock::now();
  return true;
#else
  return false;  // built without nvcc: the worker copies per merged run
#endif
}

std::unique_ptr<CudaIpcBackend::Staging> CudaIpcBackend::take_staging(int device, DeviceState& state, size_t offsets) {
  std::unique_ptr<Staging> staging;
  if (!state.free_staging.empty()) {
    staging = std::move(state.free_staging.back());
    state.free_staging.pop_back();
  } else {
    staging = std::make_unique<Staging>();
    staging->device = device;
    check(cudaEventCreateWithFlags(&staging->done, cudaEventDisableTiming), "cudaEventCreate");
    check(cudaEventCreate(&staging->start), "cudaEventCreate");
    check(cudaEventCreate(&staging->stop), "cudaEventCreate");
  }
  if (staging->capacity < offsets) {
    if (staging->host) cudaFreeHost(staging->host);
    if (staging->device_offsets) cudaFree(staging->device_offsets);
    staging->host = staging->device_offsets = nullptr;
    staging->capacity = 0;
    const size_t capacity = offsets + offsets / 2;
    check(cudaMallocHost(&staging->host, capacity * sizeof(uint64_t)), "cudaMallocHost of block offsets");
    check(cudaMalloc(&staging->device_offsets, capacity * sizeof(uint64_t)), "cudaMalloc of block offsets");
    staging->capacity = capacity;
  }
  return staging;
}

void CudaIpcBackend::cancel(uint64_t transfer_id) {
  std::lock_guard<std::mutex> lock(mu_);
  canceled_.insert(transfer_id);
}

void CudaIpcBackend::shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
  }
  wake_.notify_one();
  if (worker_.joinable()) worker_.join();
}

void CudaIpcBackend::run() {
  while (true) {
    Work work;
    bool canceled = false;
    bool stopping = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] { return stopped_ || !queue_.empty(); });
      if (queue_.empty()) break;
      work = std::move(queue_.front());
      queue_.pop_front();
      canceled = !work.staging && canceled_.erase(work.job.transfer_id) > 0;
      stopping = stopped_;
    }
    const ReadJob& job = work.job;
    if (work.staging) {
      finish_issued(work, stopping);
    } else if (stopping) {
      TransferError e(ErrorKind::Closed, "the agent was closed");
      events_.transfer_finished(job.transfer_id, 0, &e);
    } else if (canceled) {
      TransferError e(ErrorKind::Canceled, "the read was canceled");
      events_.transfer_finished(job.transfer_id, 0, &e);
    } else if (Clock::now() >= job.deadline) {
      TransferError e(ErrorKind::Timeout, "the read timed out before the GPU copy started");
      events_.transfer_finished(job.transfer_id, 0, &e);
    } else {
      std::string trace;
      try {
        trace = execute(job);
        events_.transfer_finished(job.transfer_id, job.total_bytes, nullptr);
      } catch (const TransferError& e) {
        events_.transfer_finished(job.transfer_id, 0, &e);
      }
      if (!trace.empty()) std::fputs(trace.c_str(), stderr);  // after the report: off the read's path
    }
  }
  std::lock_guard<std::mutex> cuda_lock(cuda_mu_);
  for (auto& [key, mapping] : opened_) cudaIpcCloseMemHandle(mapping.pointer);
  opened_.clear();
  for (auto& [device, state] : devices_) {
    cudaSetDevice(device);
    state.free_staging.clear();
    if (state.stream) cudaStreamDestroy(state.stream);
    if (state.start) cudaEventDestroy(state.start);
    if (state.stop) cudaEventDestroy(state.stop);
    if (state.done) cudaEventDestroy(state.done);
    if (state.host_pieces) cudaFreeHost(state.host_pieces);
    if (state.device_pieces) cudaFree(state.device_pieces);
  }
  devices_.clear();
}

void CudaIpcBackend::finish_issued(Work& work, bool stopping) {
  const ReadJob& job = work.job;
  const int device = work.staging->device;
  cudaSetDevice(device);
  const cudaError_t rc = cudaEventSynchronize(work.staging->done);
  const auto finished = Clock::now();
  float gpu_ms = 0;
  if (trace_ && rc == cudaSuccess) cudaEventElapsedTime(&gpu_ms, work.staging->start, work.staging->stop);
  {
    // Free again before the read is reported, so the caller's next read finds it.
    std::lock_guard<std::mutex> cuda_lock(cuda_mu_);
    devices_[device].free_staging.push_back(std::move(work.staging));
  }
  if (rc != cudaSuccess) {
    cudaGetLastError();
    TransferError e(ErrorKind::System, std::string("the block-list gather copy: ") + cudaGetErrorString(rc));
    events_.transfer_finished(job.transfer_id, 0, &e);
  } else if (stopping) {
    TransferError e(ErrorKind::Closed, "the agent was closed");
    events_.transfer_finished(job.transfer_id, 0, &e);
  } else {
    events_.transfer_finished(job.transfer_id, job.total_bytes, nullptr);
  }
  if (trace_ && rc == cudaSuccess) {
    const size_t n = work.blocks;
    std::fprintf(stderr,
                 "cuda_ipc trace: read %llu: %zu descriptors, %zu runs, %llu copies, kernel, %llu bytes: "
                 "issue %.1f us, gpu %.1f us, total %.1f us, block lists, done at %lld ns\n",
                 static_cast<unsigned long long>(job.transfer_id), n, n, static_cast<unsigned long long>(work.pieces),
                 static_cast<unsigned long long>(job.total_bytes), us(work.issued - work.posted), gpu_ms * 1000.0,
                 us(finished - work.posted), steady_ns(finished));
  }
}

CudaIpcBackend::DeviceState& CudaIpcBackend::device_state(int device) {
  DeviceState& state = devices_[device];
  if (!state.stream) {
    check(cudaStreamCreateWithFlags(&state.stream, cudaStreamNonBlocking), "cudaStreamCreate");
    check(cudaEventCreate(&state.start), "cudaEventCreate");
    check(cudaEventCreate(&state.stop), "cudaEventCreate");
    check(cudaEventCreateWithFlags(&state.done, cudaEventDisableTiming), "cudaEventCreate");
    check(cudaDeviceGetAttribute(&state.multiprocessors, cudaDevAttrMultiProcessorCount, device),
          "cudaDeviceGetAttribute");
  }
  return state;
}

uint8_t* CudaIpcBackend::mapped(const AgentMetadata& peer, const MemoryRegion& remote) {
  auto key = std::make_pair(peer.name, remote.id);
  auto it = opened_.find(key);
  if (it != opened_.end()) {
    if (it->second.handle == remote.backend_blob) return static_cast<uint8_t*>(it->second.pointer);
    // A restarted peer (same name, same region id) exports another allocation: the old mapping
    // points at memory that is gone; once the copies already issued are through, none uses it.
    for (auto& [device, state] : devices_) {
      if (state.stream) cudaStreamSynchronize(state.stream);
    }
    cudaGetLastError();
    cudaIpcCloseMemHandle(it->second.pointer);
    opened_.erase(it);
  }
  cudaIpcMemHandle_t handle;
  std::memcpy(&handle, remote.backend_blob.data(), sizeof handle);
  void* pointer = nullptr;
  check(cudaIpcOpenMemHandle(&pointer, handle, cudaIpcMemLazyEnablePeerAccess),
        "cudaIpcOpenMemHandle of region " + std::to_string(remote.id) + " of agent '" + peer.name +
            "' (CUDA IPC needs the two agents in different processes)");
  opened_[key] = Mapping{remote.backend_blob, pointer};
  return static_cast<uint8_t*>(pointer);
}

std::string CudaIpcBackend::execute(const ReadJob& job) {
  const auto started = Clock::now();
  std::unique_lock<std::mutex> cuda_lock(cuda_mu_);  // let go once the copies are issued
  // Copies are issued from the device of the local blocks (or the remote one for host
  // destinations); cudaMemcpyDefault routes memcpy by its pointers (unified addressing). The
  // kernel runs on the local device and reads the peer's memory through the IPC mapping.
  const MemoryRegion& first_local = *job.local[0].region;
  const int device = first_local.kind == MemoryKind::Cuda ? first_local.device_id : job.remote[0].region->device_id;
  bool local_on_device = true;
  for (const ResolvedBlock& b : job.local) {
    if (b.region->kind != MemoryKind::Cuda || b.region->device_id != device) {
      local_on_device = false;
      break;
    }
  }
  check(cudaSetDevice(device), "cudaSetDevice(" + std::to_string(device) + ")");
  DeviceState& state = device_state(device);

  // Merge pairs that continue the previous one on both sides (consecutive KV blocks).
  runs_.clear();
  const MemoryRegion* last_region = nullptr;
  uint8_t* last_base = nullptr;
  for (size_t i = 0; i < job.remote.size(); ++i) {
    const MemoryRegion* region = job.remote[i].region.get();
    if (region != last_region) {
      last_base = mapped(*job.peer, *region);
      last_region = region;
    }
    const uint64_t src = reinterpret_cast<uint64_t>(last_base + job.remote[i].offset);
    const uint64_t dst = reinterpret_cast<uint64_t>(job.local[i].pointer());
    const uint64_t bytes = job.local[i].length;
    if (!runs_.empty() && runs_.back().src + runs_.back().bytes == src && runs_.back().dst + runs_.back().bytes == dst) {
      runs_.back().bytes += bytes;
    } else {
      runs_.push_back({src, dst, bytes});
    }
  }

  CopyMethod method = method_;
#ifndef SWITCHYARD_TRANSFER_CUDA_KERNELS
  if (method == CopyMethod::Kernel) method = CopyMethod::Memcpy;  // built without nvcc
#endif
  if (!local_on_device) method = CopyMethod::Memcpy;
  size_t pieces = runs_.size();
  const auto memcpy_runs = [&] {
    for (size_t i = 0; i < runs_.size(); ++i) {
      check(cudaMemcpyAsync(reinterpret_cast<void*>(runs_[i].dst), reinterpret_cast<const void*>(runs_[i].src),
                            runs_[i].bytes, cudaMemcpyDefault, state.stream),
            "cudaMemcpyAsync of run " + std::to_string(i));
    }
  };
  // The trace's GPU time starts at the first GPU operation, after the host has planned the copy.
  const auto mark_start = [&] {
    if (trace_) check(cudaEventRecord(state.start, state.stream), "cudaEventRecord");
  };
  switch (method) {
    case CopyMethod::Kernel: {
#ifdef SWITCHYARD_TRANSFER_CUDA_KERNELS
      std::vector<CopyPiece>& plan = plan_;  // kept between reads: no reallocation
      plan.clear();
      for (const Run& r : runs_) plan_copy_pieces(r.src, r.dst, r.bytes, plan);
      pieces = plan.size();
      if (plan.size() > state.piece_capacity) {
        if (state.host_pieces) cudaFreeHost(state.host_pieces);
        if (state.device_pieces) cudaFree(state.device_pieces);
        state.host_pieces = state.device_pieces = nullptr;
        state.piece_capacity = 0;
        const size_t capacity = plan.size() + plan.size() / 2;
        check(cudaMallocHost(&state.host_pieces, capacity * sizeof(CopyPiece)), "cudaMallocHost of the piece list");
        check(cudaMalloc(&state.device_pieces, capacity * sizeof(CopyPiece)), "cudaMalloc of the piece list");
        state.piece_capacity = capacity;
      }
      // The pinned buffer is reused only after the previous queued read finished (this thread waits for each).
      std::memcpy(state.host_pieces, plan.data(), plan.size() * sizeof(CopyPiece));
      mark_start();
      check(cudaMemcpyAsync(state.device_pieces, state.host_pieces, plan.size() * sizeof(CopyPiece),
                            cudaMemcpyHostToDevice, state.stream),
            "cudaMemcpyAsync of the piece list");
      // 4 blocks of 256 threads per SM fill it (8 x 16-byte loads in flight per thread);
      // streaming stores were 1-4% faster (bench/transfer_cuda.ts).
      check(launch_gather_copy(static_cast<const CopyPiece*>(state.device_pieces), static_cast<uint32_t>(plan.size()),
                               static_cast<uint32_t>(state.multiprocessors) * 4, state.stream, /*streaming_stores=*/true),
            "the gather copy kernel");
#endif
      break;
    }
    case CopyMethod::Batch: {
#if CUDART_VERSION >= 12080
      std::vector<void*> dsts(runs_.size());
      std::vector<const void*> srcs(runs_.size());
      std::vector<size_t> sizes(runs_.size());
      for (size_t i = 0; i < runs_.size(); ++i) {
        dsts[i] = reinterpret_cast<void*>(runs_[i].dst);
        srcs[i] = reinterpret_cast<const void*>(runs_[i].src);
        sizes[i] = runs_[i].bytes;
      }
      mark_start();
      cudaMemcpyAttributes attributes{};
      attributes.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
      size_t attribute_index = 0;
      check(cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(), runs_.size(), &attributes, &attribute_index, 1,
                                 state.stream),
            "cudaMemcpyBatchAsync of " + std::to_string(runs_.size()) + " runs");
      break;
#else
      mark_start();
      memcpy_runs();  // cudaMemcpyBatchAsync needs CUDA 12.8
      break;
#endif
    }
    case CopyMethod::Memcpy:
      mark_start();
      memcpy_runs();
      break;
  }
  if (trace_) check(cudaEventRecord(state.stop, state.stream), "cudaEventRecord");
  check(cudaEventRecord(state.done, state.stream), "cudaEventRecord");
  const auto issued = Clock::now();
  cuda_lock.unlock();
  check(cudaEventSynchronize(state.done), "the copy (cudaEventSynchronize)");
  const auto finished = Clock::now();
  if (!trace_) return {};
  float gpu_ms = 0;
  cudaEventElapsedTime(&gpu_ms, state.start, state.stop);
  static const char* const kMethodNames[] = {"kernel", "batch", "memcpy"};
  char line[512];
  std::snprintf(line, sizeof line,
                "cuda_ipc trace: read %llu: %zu descriptors, %zu runs, %zu copies, %s, %llu bytes: "
                "issue %.1f us, gpu %.1f us, total %.1f us, pairs, done at %lld ns\n",
                static_cast<unsigned long long>(job.transfer_id), job.remote.size(), runs_.size(), pieces,
                kMethodNames[static_cast<int>(method)], static_cast<unsigned long long>(job.total_bytes),
                us(issued - started), gpu_ms * 1000.0, us(finished - started), steady_ns(finished));
  return line;
}

}  // namespace sy::transfer
