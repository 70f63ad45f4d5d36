// Programmatic dependent launch (Hopper) for the kernels of a decode step. A batch-1 decode step
// is a chain of ~115 small kernels, each of which spends most of its time starting: launching,
// fetching its code, loading its first weights. Launched as a programmatic dependent, a kernel
// starts while the one before it still runs; it does the part that reads nothing the earlier
// kernels write (its weights, the step's metadata), then waits for them to finish
// (`wait_for_prior_kernels`) before it reads their outputs or writes anything. Every kernel of
// the chain lets its dependent start at once (`allow_dependent_launch`). Without the launch
// attribute, or below sm_90, both calls do nothing and the kernels run one after another.
//
// A prefill step's own kernels (the norms, the q/k pass, the attention, SiLU·up) are launched
// this way too, each waiting at its first line: their blocks start as the kernel before them
// (mostly a cuBLAS GEMM) drains rather than after it: prefill 2.8-3.7% faster at 2048-token
// steps over two calls (bench/CUDA_NOTES.md, "Session 11").
#pragma once
#include <cuda_runtime.h>

#include <utility>

#include "kernels/cuda/cuda_check.h"

namespace sy::cuda {

__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/** Returns once every kernel this one depends on has finished and its writes are visible. */
__device__ __forceinline__ void wait_for_prior_kernels() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/** False before Hopper, or with SWITCHYARD_CUDA_PDL=off (for measuring what PDL gives): plain launches. */
bool dependent_launch_enabled();

/** kernel<<<grid, block, smem, stream>>>(args...), as a programmatic dependent of the stream's previous kernel. */
template <typename... Params, typename... Args>
void launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                      Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = dependent_launch_enabled() ? 1 : 0;
  SY_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

}  // namespace sy::cuda
