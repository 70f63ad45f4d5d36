#include <cstdlib>
#include <cstring>

#include "kernels/cuda/dependent_launch.cuh"

namespace sy::cuda {

bool dependent_launch_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("SWITCHYARD_CUDA_PDL");
    return !(v && std::strcmp(v, "off") == 0);
  }();
  return enabled;
}

}  // namespace sy::cuda
