// Stands in for the CUDA backend in an addon built without it (no nvcc or no cuBLAS).
#include <stdexcept>

#include "model/qwen3_cuda.h"

namespace sy {

CudaDeviceInfo cuda_device_info() {
  CudaDeviceInfo info;
  info.error = "this addon was built without the CUDA backend (nvcc and cuBLAS were not both found at npm install)";
  return info;
}

std::unique_ptr<CudaModelRunner> CudaModelRunner::create(const std::string&, const ModelConfig&,
                                                         const CudaRunnerOptions&) {
  throw std::runtime_error(cuda_device_info().error);
}

}  // namespace sy
