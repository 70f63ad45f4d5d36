// Hopper's bulk copy engine (cp.async.bulk, sm_90) from global into shared memory, completing on
// an mbarrier. One thread announces a phase's byte count and issues its copies; every thread that
// reads the destinations waits on the barrier's phase first. A barrier counts one arrival a phase (the
// issuing thread's), so its k-th use completes phase k and is waited for with parity k & 1.
#pragma once
#include <cstdint>

namespace sy::cuda {

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

/**
 * One thread, before any use; a __syncthreads must follow before others wait on it. A phase
 * completes after `arrivals` arrivals (and, with mbarrier_expect_bytes, the bytes it announced).
 */
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t arrivals = 1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_address(bar)), "r"(arrivals) : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}

/**
 * One thread, once for each phase of the barrier, before that phase's copies: the phase completes
 * once `bytes` have landed (its one arrival is this call). The block's earlier reads of the
 * copies' destinations must be done (a __syncthreads before the call).
 */
__device__ __forceinline__ void mbarrier_expect_bytes(uint64_t* bar, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // Earlier generic-proxy reads of the destinations before the copy engine's writes.
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_address(bar)), "r"(bytes) : "memory");
#endif
}

/**
 * One thread: copies `bytes` from global `src` to shared `dst` (a multiple of 16, both 16-byte
 * aligned), counted towards the barrier's current phase, whose mbarrier_expect_bytes included
 * them (a phase's total under 1 MiB). `read_once`: data read once a step (the weights), marked
 * first to leave L2 so that what is read again (activations, norm weights, the KV cache) stays.
 */
__device__ __forceinline__ void bulk_copy_to_shared(void* dst, const void* src, uint32_t bytes, uint64_t* bar,
                                                    bool read_once) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (bytes == 0) return;
  if (read_once) {
    uint64_t policy;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;" ::
            "r"(smem_address(dst)),
        "l"(src), "r"(bytes), "r"(smem_address(bar)), "l"(policy)
        : "memory");
  } else {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                     smem_address(dst)),
                 "l"(src), "r"(bytes), "r"(smem_address(bar))
                 : "memory");
  }
#endif
}

/** One arrival on the barrier's current phase. */
__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_address(bar)) : "memory");
#endif
}

/**
 * One arrival on the barrier's current phase once every cp.async this thread issued before the
 * call has landed; the thread goes on at once. The arrival is one of those mbarrier_init counted.
 */
__device__ __forceinline__ void mbarrier_arrive_after_cp_async(uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(smem_address(bar)) : "memory");
#endif
}

/** Every reading thread: returns once the barrier's phase of this parity has completed. */
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const uint32_t b = smem_address(bar);
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
        : "=r"(done)
        : "r"(b), "r"(parity)
        : "memory");
  } while (!done);
#endif
}

}  // namespace sy::cuda
