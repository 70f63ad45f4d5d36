// Hopper's warpgroup MMA (wgmma.mma_async, sm_90a only) for the prefill attention kernel: A from
// registers (the same fragment layout as mma.sync m16n8k16's A, per warp of the group), B from
// shared memory through a matrix descriptor, fp32 accumulators in the layout of mma.sync's C,
// one n8 tile after another. Bodies compile only for sm_90a (`__CUDA_ARCH_FEAT_SM90_ALL`);
// elsewhere they trap, and the host does not launch them (kWgmmaBuilt below).
//
// Shared-memory operands are tiles whose rows of 64 16-bit elements (128 bytes) are XOR-swizzled
// by 16-byte chunk (chunk ^ row % 8), the "128-byte swizzle" of the descriptor: eight rows make
// a 1024-byte atom, atoms must start on 1024-byte boundaries. A B operand stored [k][n]
// (n contiguous) is MN-major and needs the transpose flag; one stored [n][k] is K-major.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace sy::cuda {

/** True where the build compiled the wgmma kernels for sm_90a (CMake sets it from the arch list). */
#if defined(SWITCHYARD_CUDA_WGMMA)
inline constexpr bool kWgmmaBuilt = true;
#else
inline constexpr bool kWgmmaBuilt = false;
#endif

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SY_WGMMA_ASM(...) asm volatile(__VA_ARGS__)
#else
#define SY_WGMMA_ASM(...) __trap()
#endif

/**
 * A shared-memory matrix descriptor for 128-byte-swizzled tiles. `leading` and `stride` are byte
 * offsets: K-major, stride = the distance between 8-row groups (leading unused); MN-major,
 * leading = the distance between 64-column atoms along n, stride = between 8-row groups along k.
 */
__device__ __forceinline__ uint64_t wgmma_descriptor(uint32_t smem_address, uint32_t leading, uint32_t stride) {
  return static_cast<uint64_t>((smem_address & 0x3ffff) >> 4) | static_cast<uint64_t>((leading >> 4) & 0x3fff) << 16 |
         static_cast<uint64_t>((stride >> 4) & 0x3fff) << 32 | 1ull << 62;
}

/** Orders this thread's earlier register writes before the warpgroup's next wgmma reads them. */
__device__ __forceinline__ void wgmma_fence() { SY_WGMMA_ASM("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { SY_WGMMA_ASM("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
/** Waits until at most N committed groups are still running. */
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  SY_WGMMA_ASM("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
/** Makes the generic proxy's writes to shared memory (plain or cp.async stores) visible to wgmma's reads. */
__device__ __forceinline__ void fence_shared_for_wgmma() {
  SY_WGMMA_ASM("fence.proxy.async.shared::cta;\n" ::: "memory");
}

/**
 * Pins accumulator registers between a wgmma's issue and its wait: the compiler may neither read
 * nor move them across this point (it does not know the wgmma writes them asynchronously).
 */
template <int NT>
__device__ __forceinline__ void wgmma_pin(float (&d)[NT][4]) {
#pragma unroll
  for (int j = 0; j < NT; ++j) asm volatile("" : "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])::"memory");
}

#define SY_D4(j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define SY_D32 SY_D4(0), SY_D4(1), SY_D4(2), SY_D4(3), SY_D4(4), SY_D4(5), SY_D4(6), SY_D4(7)
#define SY_D64 SY_D32, SY_D4(8), SY_D4(9), SY_D4(10), SY_D4(11), SY_D4(12), SY_D4(13), SY_D4(14), SY_D4(15)
#define SY_R32                                                                                                 \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define SY_R64                                                                                                     \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, "     \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, " \
  "%45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
// d (+)= a · b for 64 rows; the operands after the accumulators are acc, a0..a3, b and TRANS_B.
#define SY_WGMMA_RS(...) SY_WGMMA_RS_(__VA_ARGS__)
#define SY_WGMMA_RS_(shape, types, regs, acc_op, a_ops, b_op, trans_op, ...)                                \
  SY_WGMMA_ASM("{\n.reg .pred p;\nsetp.ne.b32 p, " acc_op ", 0;\nwgmma.mma_async.sync.aligned." shape ".f32." \
               types " " regs ", {" a_ops "}, " b_op ", p, 1, 1, " trans_op ";\n}\n"                           \
               : __VA_ARGS__                                                                                 \
               : "r"(acc), "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(TRANS_B))
#define SY_N64 SY_R32, "%32", "%33, %34, %35, %36", "%37", "%38", SY_D32
#define SY_N128 SY_R64, "%64", "%65, %66, %67, %68", "%69", "%70", SY_D64

/**
 * d (+)= A · B, 64 rows by N = 8·NT columns by 16 (k), A (64 x 16) in registers, B by descriptor
 * (TRANS_B = 1 for an MN-major B). `acc` = 0 overwrites d instead of adding to it. Issues only:
 * the result is there after wgmma_commit and wgmma_wait.
 */
template <typename T, int NT, int TRANS_B>
__device__ __forceinline__ void wgmma_rs(float (&d)[NT][4], const uint32_t (&a)[4], uint64_t b, int acc) {
  static_assert(NT == 8 || NT == 16, "n64 or n128");
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  if constexpr (NT == 8 && kBf16) {
    SY_WGMMA_RS("m64n64k16", "bf16.bf16", SY_N64);
  } else if constexpr (NT == 8) {
    SY_WGMMA_RS("m64n64k16", "f16.f16", SY_N64);
  } else if constexpr (kBf16) {
    SY_WGMMA_RS("m64n128k16", "bf16.bf16", SY_N128);
  } else {
    SY_WGMMA_RS("m64n128k16", "f16.f16", SY_N128);
  }
}

#undef SY_WGMMA_RS
#undef SY_WGMMA_RS_
#undef SY_N128
#undef SY_N64
#undef SY_R64
#undef SY_R32
#undef SY_D64
#undef SY_D32
#undef SY_D4
#undef SY_WGMMA_ASM

}  // namespace sy::cuda
