// A barrier across every block of a persistent kernel (decode_step.cu), split into its two
// halves so a block can do independent work between them (issue loads that read nothing the
// barrier guards). Arrivals are counted over the whole launch on `lanes` counters, each on its
// own 128-byte line so the blocks' atomics spread over L2 slices: block b counts on lane
// b % lanes, and barrier k (from 1) is passed once every lane has counted k arrivals of each of
// its blocks. A block must wait for barrier k before it arrives at k + 1, or an early arrival
// would count towards k. Every block must be resident at once: the kernel is launched
// cooperatively (cudaLaunchAttributeCooperative), which guarantees it or fails the launch.
#pragma once
#include <cstdint>

namespace sy::cuda {

constexpr int kGridBarrierMaxLanes = 8;
constexpr int kGridBarrierStride = 32;  // words between lanes: 128 bytes
/** Words a barrier takes: the lanes, then the exit counter. */
constexpr int grid_barrier_words() { return (kGridBarrierMaxLanes + 1) * kGridBarrierStride; }

/** This block's writes so far are published, and it counts as arrived. */
__device__ __forceinline__ void grid_arrive(unsigned* counters, int lanes) {
  __syncthreads();  // every thread's writes precede thread 0's release
  if (threadIdx.x == 0) {
    // The release orders the block's writes (the barrier above made them this thread's
    // predecessors) before the count.
    unsigned* lane = counters + (blockIdx.x % lanes) * kGridBarrierStride;
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(lane) : "memory");
  }
}

/** Returns once barrier k is passed; the arrived blocks' writes are then visible to every thread. */
__device__ __forceinline__ void grid_wait(const unsigned* counters, int lanes, unsigned k) {
  if (threadIdx.x < lanes) {
    // Lane i counts blocks i, i + lanes, ...
    const unsigned blocks = (gridDim.x - threadIdx.x + lanes - 1) / lanes;
    const unsigned* lane = counters + threadIdx.x * kGridBarrierStride;
    unsigned seen;
    do {
      asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(lane) : "memory");
    } while (seen < k * blocks);
  }
  __syncthreads();
}

/**
 * Called by every block once, after its last wait: the last block to get here sets the counters
 * back to zero for the next launch (no block reads them after its last wait; kernel boundaries
 * order the reset before the next launch).
 */
__device__ __forceinline__ void grid_barrier_reset(unsigned* counters) {
  unsigned* exits = counters + kGridBarrierMaxLanes * kGridBarrierStride;
  if (threadIdx.x == 0 && atomicAdd(exits, 1u) == gridDim.x - 1) {
    for (int i = 0; i < kGridBarrierMaxLanes; ++i) counters[i * kGridBarrierStride] = 0;
    *exits = 0;
  }
}

}  // namespace sy::cuda
