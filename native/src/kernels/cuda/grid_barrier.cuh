// A barrier across every block of a persistent kernel (decode_step.cu), split into its two
// halves so a block can do independent work between them (issue loads that read nothing the
// barrier guards). One counter counts arrivals over the whole launch: barrier k (from 1) is
// passed once it reaches k * gridDim.x. A block must wait for barrier k before it arrives at
// k + 1, or an early arrival would count towards k. Every block must be resident at once: the
// kernel is launched cooperatively (cudaLaunchAttributeCooperative), which guarantees it or
// fails the launch.
#pragma once
#include <cstdint>

namespace sy::cuda {

/** This block's writes so far are published, and it counts as arrived. */
__device__ __forceinline__ void grid_arrive(unsigned* counter) {
  __syncthreads();  // every thread's writes precede thread 0's release
  if (threadIdx.x == 0) {
    __threadfence();
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(counter) : "memory");
  }
}

/** Returns once `target` arrivals are counted; the arrived blocks' writes are then visible to every thread. */
__device__ __forceinline__ void grid_wait(const unsigned* counter, unsigned target) {
  if (threadIdx.x == 0) {
    unsigned seen;
    do {
      asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(counter) : "memory");
    } while (seen < target);
    __threadfence();
  }
  __syncthreads();
}

/**
 * Called by every block once, after its last wait: the last block to get here sets the counters
 * back to zero for the next launch (no block reads them after its last wait; kernel boundaries
 * order the reset before the next launch).
 */
__device__ __forceinline__ void grid_barrier_reset(unsigned* counter, unsigned* exits) {
  if (threadIdx.x == 0 && atomicAdd(exits, 1u) == gridDim.x - 1) {
    *counter = 0;
    *exits = 0;
  }
}

}  // namespace sy::cuda
