#include "transfer/cuda_bench_tools.h"

#include <cuda_runtime.h>

#include <string>

#include "transfer/transfer_error.h"

namespace sy::transfer::cuda_tools {
namespace {

void check(cudaError_t rc, const std::string& what) {
  if (rc != cudaSuccess) {
    cudaGetLastError();
    throw TransferError(ErrorKind::System, what + ": " + cudaGetErrorString(rc));
  }
}

/** A device copy of `pieces`, freed with the object. */
struct DevicePieces {
  CopyPiece* data = nullptr;
  explicit DevicePieces(const std::vector<CopyPiece>& pieces) {
    check(cudaMalloc(&data, pieces.size() * sizeof(CopyPiece) + 1), "cudaMalloc of a piece list");
    cudaError_t rc = cudaMemcpy(data, pieces.data(), pieces.size() * sizeof(CopyPiece), cudaMemcpyHostToDevice);
    if (rc != cudaSuccess) cudaFree(data);
    check(rc, "cudaMemcpy of a piece list");
  }
  ~DevicePieces() { cudaFree(data); }
};

/** Times `issue` on the default stream with events: one warm-up, then `iterations` runs. */
template <class F>
std::vector<double> time_ms(int iterations, F&& issue) {
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");
  std::vector<double> out;
  try {
    issue();
    check(cudaDeviceSynchronize(), "warm-up");
    for (int i = 0; i < iterations; ++i) {
      check(cudaEventRecord(start), "cudaEventRecord");
      issue();
      check(cudaEventRecord(stop), "cudaEventRecord");
      check(cudaEventSynchronize(stop), "cudaEventSynchronize");
      float ms = 0;
      check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
      out.push_back(ms);
    }
  } catch (...) {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    throw;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return out;
}

}  // namespace

uint64_t device_alloc(uint64_t bytes, int device) {
  check(cudaSetDevice(device), "cudaSetDevice(" + std::to_string(device) + ")");
  void* p = nullptr;
  check(cudaMalloc(&p, bytes), "cudaMalloc of " + std::to_string(bytes) + " bytes");
  return reinterpret_cast<uint64_t>(p);
}

void device_free(uint64_t address) { check(cudaFree(reinterpret_cast<void*>(address)), "cudaFree"); }

void fill_pattern(uint64_t address, uint64_t bytes, uint32_t seed) {
  check(launch_fill_pattern(reinterpret_cast<void*>(address), bytes, seed, nullptr), "the fill kernel");
  check(cudaDeviceSynchronize(), "the fill kernel");
}

uint64_t count_pattern_mismatches(const std::vector<CopyPiece>& pieces, uint32_t seed) {
  if (pieces.empty()) return 0;
  DevicePieces device(pieces);
  unsigned long long* counter = nullptr;
  check(cudaMalloc(&counter, sizeof *counter), "cudaMalloc");
  unsigned long long mismatches = 0;
  cudaError_t rc = cudaMemset(counter, 0, sizeof *counter);
  if (rc == cudaSuccess) {
    rc = launch_count_pattern_mismatches(device.data, static_cast<uint32_t>(pieces.size()), seed, counter, nullptr);
  }
  if (rc == cudaSuccess) rc = cudaMemcpy(&mismatches, counter, sizeof mismatches, cudaMemcpyDeviceToHost);
  cudaFree(counter);
  check(rc, "the pattern check kernel");
  return mismatches;
}

std::vector<double> memcpy_ms(uint64_t dst, uint64_t src, uint64_t bytes, int iterations) {
  return time_ms(iterations, [&] {
    check(cudaMemcpyAsync(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), bytes,
                          cudaMemcpyDeviceToDevice, nullptr),
          "cudaMemcpyAsync");
  });
}

std::vector<double> gather_copy_ms(const std::vector<CopyPiece>& runs, int iterations, uint32_t blocks_per_sm,
                                   bool streaming_stores) {
  std::vector<CopyPiece> plan;
  for (const CopyPiece& r : runs) plan_copy_pieces(r.src, r.dst, r.bytes, plan);
  if (plan.empty()) return {};
  DevicePieces device(plan);
  int current = 0, sms = 1;
  check(cudaGetDevice(&current), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, current), "cudaDeviceGetAttribute");
  return time_ms(iterations, [&] {
    const uint32_t blocks = blocks_per_sm ? static_cast<uint32_t>(sms) * blocks_per_sm : static_cast<uint32_t>(plan.size());
    check(launch_gather_copy(device.data, static_cast<uint32_t>(plan.size()), blocks, nullptr, streaming_stores),
          "the gather copy kernel");
  });
}

}  // namespace sy::transfer::cuda_tools
