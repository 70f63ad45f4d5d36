// Every CUDA runtime and cuBLAS call goes through these checks: a failure becomes a CudaError
// (a std::runtime_error) naming the call, the file:line and CUDA's own message, which the
// engine turns into a failed step and the binding into a JavaScript error. Nothing aborts.
#pragma once
#include <cuda_runtime.h>

#include <optional>
#include <stdexcept>
#include <string>

namespace sy {

struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void throw_cuda_error(cudaError_t error, const char* call, const char* file, int line);
/** SWITCHYARD_CUDA_DEBUG=1: no CUDA graphs, and a wait for the device after each launch, so a
 *  fault is reported at the kernel that made it. */
bool cuda_debug_enabled();
void debug_sync_after_launch(const char* kernel, const char* file, int line);
/** An attribute of the current device (cudaDeviceGetAttribute), checked. */
int current_device_attribute(cudaDeviceAttr attribute);
/** Whether the environment variable `name` (a switch for measuring, read where it applies) says "off". */
bool env_is_off(const char* name);
/** The integer the environment variable `name` (a setting for measuring) holds, as atoi reads it;
 *  nothing when it is unset or empty. */
std::optional<int> env_int(const char* name);

}  // namespace sy

#define SY_CUDA_CHECK(call)                                                           \
  do {                                                                                \
    cudaError_t sy_err_ = (call);                                                     \
    if (sy_err_ != cudaSuccess) ::sy::throw_cuda_error(sy_err_, #call, __FILE__, __LINE__); \
  } while (0)

/** After a kernel launch: a bad configuration shows here, a fault at the next synchronization. */
#define SY_CUDA_CHECK_LAUNCH(kernel_name)                                 \
  do {                                                                    \
    SY_CUDA_CHECK(cudaPeekAtLastError());                                 \
    ::sy::debug_sync_after_launch(#kernel_name, __FILE__, __LINE__);      \
  } while (0)
