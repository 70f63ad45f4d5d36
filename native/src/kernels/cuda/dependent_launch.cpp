#include "kernels/cuda/dependent_launch.cuh"

#include <cstdlib>
#include <cstring>

namespace sy::cuda {

bool dependent_launch_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("SWITCHYARD_CUDA_PDL");
    if (v && std::strcmp(v, "off") == 0) return false;
    // Programmatic dependent launch is a Hopper feature; older GPUs get plain launches.
    int device = 0, major = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
    return major >= 9;
  }();
  return enabled;
}

}  // namespace sy::cuda
