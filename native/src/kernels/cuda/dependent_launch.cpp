#include "kernels/cuda/dependent_launch.cuh"

namespace sy::cuda {

bool dependent_launch_enabled() {
  static const bool enabled = [] {
    if (env_is_off("SWITCHYARD_CUDA_PDL")) return false;
    // Programmatic dependent launch is a Hopper feature; older GPUs get plain launches.
    int device = 0, major = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
    return major >= 9;
  }();
  return enabled;
}

}  // namespace sy::cuda
