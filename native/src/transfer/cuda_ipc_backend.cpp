#include "transfer/cuda_ipc_backend.h"

#include <cuda_runtime.h>

#include <cstring>

namespace sy::transfer {
namespace {

void check(cudaError_t rc, const std::string& what) {
  if (rc != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error state of this thread
    throw TransferError(ErrorKind::System, what + ": " + cudaGetErrorString(rc));
  }
}

}  // namespace

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
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) throw TransferError(ErrorKind::Closed, "the CUDA IPC backend is closed");
    queue_.push_back(std::move(job));
  }
  wake_.notify_one();
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
    ReadJob job;
    bool canceled = false;
    bool stopping = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] { return stopped_ || !queue_.empty(); });
      if (queue_.empty()) break;
      job = std::move(queue_.front());
      queue_.pop_front();
      canceled = canceled_.erase(job.transfer_id) > 0;
      stopping = stopped_;
    }
    if (stopping) {
      TransferError e(ErrorKind::Closed, "the agent was closed");
      events_.transfer_finished(job.transfer_id, 0, &e);
    } else if (canceled) {
      TransferError e(ErrorKind::Canceled, "the read was canceled");
      events_.transfer_finished(job.transfer_id, 0, &e);
    } else if (Clock::now() >= job.deadline) {
      TransferError e(ErrorKind::Timeout, "the read timed out before the GPU copy started");
      events_.transfer_finished(job.transfer_id, 0, &e);
    } else {
      try {
        execute(job);
        events_.transfer_finished(job.transfer_id, job.total_bytes, nullptr);
      } catch (const TransferError& e) {
        events_.transfer_finished(job.transfer_id, 0, &e);
      }
    }
  }
  for (auto& [key, pointer] : opened_) cudaIpcCloseMemHandle(pointer);
  opened_.clear();
}

uint8_t* CudaIpcBackend::mapped(const AgentMetadata& peer, const MemoryRegion& remote) {
  auto key = std::make_pair(peer.name, remote.id);
  auto it = opened_.find(key);
  if (it != opened_.end()) return static_cast<uint8_t*>(it->second);
  cudaIpcMemHandle_t handle;
  std::memcpy(&handle, remote.backend_blob.data(), sizeof handle);
  void* pointer = nullptr;
  check(cudaIpcOpenMemHandle(&pointer, handle, cudaIpcMemLazyEnablePeerAccess),
        "cudaIpcOpenMemHandle of region " + std::to_string(remote.id) + " of agent '" + peer.name +
            "' (CUDA IPC needs the two agents in different processes)");
  opened_[key] = pointer;
  return static_cast<uint8_t*>(pointer);
}

void CudaIpcBackend::execute(const ReadJob& job) {
  // Copies are issued from the device of the first local block (or the remote one for host
  // destinations); cudaMemcpyDefault routes each by its pointers (unified addressing).
  const MemoryRegion& first_local = *job.local[0].region;
  int device = first_local.kind == MemoryKind::Cuda ? first_local.device_id : job.remote[0].region->device_id;
  check(cudaSetDevice(device), "cudaSetDevice(" + std::to_string(device) + ")");
  cudaStream_t stream;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  try {
    for (size_t i = 0; i < job.remote.size(); ++i) {
      uint8_t* source = mapped(*job.peer, *job.remote[i].region) + job.remote[i].offset;
      check(cudaMemcpyAsync(job.local[i].pointer(), source, job.local[i].length, cudaMemcpyDefault, stream),
            "cudaMemcpyAsync of descriptor pair " + std::to_string(i));
    }
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  } catch (...) {
    cudaStreamDestroy(stream);
    throw;
  }
  cudaStreamDestroy(stream);
}

}  // namespace sy::transfer
