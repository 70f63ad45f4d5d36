#include "kernels/cuda/cuda_check.h"

#include <cstdlib>
#include <cstring>

namespace sy {

void throw_cuda_error(cudaError_t error, const char* call, const char* file, int line) {
  // Clears a non-sticky error so the next call starts clean; a sticky one (a fault inside a
  // kernel) stays, and every later call reports it too.
  cudaGetLastError();
  throw CudaError(std::string("CUDA error ") + cudaGetErrorName(error) + " (" + cudaGetErrorString(error) + ") in " +
                  call + " at " + file + ":" + std::to_string(line));
}

bool cuda_debug_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("SWITCHYARD_CUDA_DEBUG");
    return v != nullptr && v[0] == '1';
  }();
  return enabled;
}

bool env_is_off(const char* name) {
  const char* v = std::getenv(name);
  return v && std::strcmp(v, "off") == 0;
}

std::optional<int> env_int(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  return std::atoi(v);
}

int current_device_attribute(cudaDeviceAttr attribute) {
  int device = 0, value = 0;
  SY_CUDA_CHECK(cudaGetDevice(&device));
  SY_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));
  return value;
}

void debug_sync_after_launch(const char* kernel, const char* file, int line) {
  if (!cuda_debug_enabled()) return;
  const cudaError_t err = cudaDeviceSynchronize();
  if (err != cudaSuccess) throw_cuda_error(err, kernel, file, line);
}

}  // namespace sy
