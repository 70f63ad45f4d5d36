// Decode attention on the GPU: one query token per sequence against its paged cache (paged_kv.cuh).
// The context is cut into at most `splits` chunks of whole 64-key tiles, one block per (token,
// kv head, chunk) (split-K), each keeping an online softmax over its chunk; the last block of each
// (token, kv head) merges the partial states. `splits` depends only on the batch size, so the
// launch is the same every step and can live in a CUDA graph. In a pure decode step the kernel
// also makes q and the new k/v from the QKV projection (DecodeFusion). The GQA group of query
// heads sharing a KV head is handled by one block, so each K/V row is read once per group.
// Output in fp32 or as the o projection's 16-bit input (AttentionOut). kernels/cpu/attention.cpp is
// the reference.
// The block's work is decode_attention_block (decode_attention.cuh), which the persistent decode
// step runs too. By default the shapes they are built for run decode_attention_mma.cu's or
// decode_attention_warps.cu's kernel instead: the same grid and merge, with warps that step
// through the chunk on their own, on tensor cores or on the CUDA cores (DecodeKernel).
#include <algorithm>
#include <string>
#include <type_traits>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode_attention.cuh"
#include "kernels/cuda/decode_attention_mma.h"
#include "kernels/cuda/decode_attention_warps.h"
#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/paged_kv.cuh"

namespace sy::cuda {
namespace {

// The kernels are built for GQA groups rounded up to 2, 4 or 8 (registers and shared memory are
// sized by it): f(std::integral_constant<int, G>) for a group's G.
template <typename F>
decltype(auto) with_rounded_group(int group, F&& f) {
  if (group <= 2) return f(std::integral_constant<int, 2>{});
  if (group <= 4) return f(std::integral_constant<int, 4>{});
  return f(std::integral_constant<int, 8>{});
}

template <typename T, int HD, int G, bool FUSED>
__global__ void __launch_bounds__(kDecodeThreads) decode_kernel(DecodeAttentionArgs<T> args) {
  allow_dependent_launch();  // dependent_launch.cuh: the next kernel may start launching
  decode_attention_block<T, HD, G, FUSED>(args, blockIdx.x, blockIdx.y, blockIdx.z, [] { wait_for_prior_kernels(); });
}

template <typename T, int HD, int G>
void launch_decode_group(const T* q, const int32_t* rows, int num_rows, const PagedKv<T>& kv, int num_heads, int splits,
                         float* partials, int* counters, const AttentionOut<T>& out, const DecodeFusion<T>& fuse,
                         DecodeKernel kernel, cudaStream_t stream) {
  const dim3 grid(num_rows, kv.num_kv_heads, splits);
  const DecodeAttentionArgs<T> args{q, rows, kv, num_heads, splits, partials, counters, out, fuse};
  if constexpr (has_mma_build(HD, G)) {
    if (kernel == DecodeKernel::TensorCore) return launch_decode_mma<T, HD, G>(args, grid, stream);
  }
  // The warps' independent steps took the decode step -25 to -28% at batch 64 and -31 to -39% at
  // batch 256 against the block kernel, whose serial chain of barriers a tile was the limit, and
  // -2% at batch 1 (H200, bench/CUDA_NOTES.md, "Session 14").
  if constexpr (has_warps_build(HD, G)) {
    if (kernel != DecodeKernel::Block) return launch_decode_warps<T, HD, G>(args, grid, stream);
  }
  const auto launch = [&](auto kernel) { launch_dependent(kernel, grid, dim3(kDecodeThreads), 0, stream, args); };
  if (fuse.qkv) launch(decode_kernel<T, HD, G, true>);
  else launch(decode_kernel<T, HD, G, false>);
  SY_CUDA_CHECK_LAUNCH(decode_kernel);
}

template <typename T, int HD>
void launch_decode(const T* q, const int32_t* rows, int num_rows, const PagedKv<T>& kv, int num_heads, int splits,
                   float* partials, int* counters, const AttentionOut<T>& out, const DecodeFusion<T>& fuse,
                   DecodeKernel kernel, cudaStream_t stream) {
  with_rounded_group(num_heads / kv.num_kv_heads, [&](auto g) {
    launch_decode_group<T, HD, decltype(g)::value>(q, rows, num_rows, kv, num_heads, splits, partials, counters, out,
                                                   fuse, kernel, stream);
  });
}

template <typename T, int HD, int G>
int blocks_per_sm(DecodeKernel kernel, bool split_rows) {
  if constexpr (has_mma_build(HD, G)) {
    if (kernel == DecodeKernel::TensorCore) return decode_mma_blocks_per_sm<T, HD, G>(split_rows);
  }
  if constexpr (has_warps_build(HD, G)) {
    if (kernel != DecodeKernel::Block) return decode_warps_blocks_per_sm<T, HD, G>(split_rows);
  }
  return decode_blocks_per_sm(decode_kernel<T, HD, G, false>);
}

template <typename T, int HD>
int blocks_per_sm_for_group(int group, DecodeKernel kernel, bool split_rows) {
  return with_rounded_group(group, [&](auto g) { return blocks_per_sm<T, HD, decltype(g)::value>(kernel, split_rows); });
}

}  // namespace

template <typename T>
int decode_attention_slots(int head_dim, int num_heads, int num_kv_heads, DecodeKernel kernel, bool split_rows) {
  const int group = num_heads / num_kv_heads;
  int per_sm = 0;
  switch (head_dim) {
    case 16: per_sm = blocks_per_sm_for_group<T, 16>(group, kernel, split_rows); break;
    case 32: per_sm = blocks_per_sm_for_group<T, 32>(group, kernel, split_rows); break;
    case 64: per_sm = blocks_per_sm_for_group<T, 64>(group, kernel, split_rows); break;
    case 128: per_sm = blocks_per_sm_for_group<T, 128>(group, kernel, split_rows); break;
    case 256: per_sm = blocks_per_sm_for_group<T, 256>(group, kernel, split_rows); break;
    default: throw_unsupported_head_dim(head_dim);
  }
  return std::max(1, per_sm) * current_device_attribute(cudaDevAttrMultiProcessorCount);
}

std::string decode_attention_summary(int head_dim, int num_heads, int num_kv_heads, DecodeKernel kernel) {
  const int group = num_heads / num_kv_heads;
  const int rounded = with_rounded_group(group, [](auto g) { return decltype(g)::value; });
  const std::string shape = "head_dim " + std::to_string(head_dim) + ", GQA group " + std::to_string(group);
  if (kernel == DecodeKernel::TensorCore) {
    if (has_mma_build(head_dim, rounded)) return "tensor-core";
    if (has_warps_build(head_dim, rounded)) return "warp-stepped (none on tensor cores for " + shape + ")";
    return "block kernel (none on tensor cores or warp-stepped for " + shape + ")";
  }
  if (kernel == DecodeKernel::WarpStepped) {
    if (has_warps_build(head_dim, rounded)) return "warp-stepped (SWITCHYARD_CUDA_DECODE_MMA is off)";
    return "block kernel (none warp-stepped for " + shape + ")";
  }
  return "block kernel (SWITCHYARD_CUDA_DECODE_WARPS is off)";
}

template <typename T>
void paged_attention_decode(const T* q, const int32_t* rows, int num_rows, const PagedKv<T>& kv,
                            int num_heads, int splits, float* partials, int* counters, const AttentionOut<T>& out,
                            const DecodeFusion<T>& fuse, DecodeKernel kernel, cudaStream_t stream) {
  if (num_rows == 0) return;
  if (num_heads / kv.num_kv_heads > kMaxGroup) throw CudaError("GQA groups larger than 8 are not supported on CUDA");
  switch (kv.head_dim) {
#define SY_DECODE_CASE(HD)                                                                                      \
  case HD:                                                                                                      \
    return launch_decode<T, HD>(q, rows, num_rows, kv, num_heads, splits, partials, counters, out, fuse,    \
                                kernel, stream);
    SY_DECODE_CASE(16)
    SY_DECODE_CASE(32)
    SY_DECODE_CASE(64)
    SY_DECODE_CASE(128)
    SY_DECODE_CASE(256)
#undef SY_DECODE_CASE
    default: throw_unsupported_head_dim(kv.head_dim);
  }
}

template int decode_attention_slots<__nv_bfloat16>(int, int, int, DecodeKernel, bool);
template int decode_attention_slots<__half>(int, int, int, DecodeKernel, bool);
template void paged_attention_decode<__nv_bfloat16>(const __nv_bfloat16*, const int32_t*, int,
                                                   const PagedKv<__nv_bfloat16>&, int, int, float*, int*,
                                                   const AttentionOut<__nv_bfloat16>&,
                                                   const DecodeFusion<__nv_bfloat16>&, DecodeKernel, cudaStream_t);
template void paged_attention_decode<__half>(const __half*, const int32_t*, int, const PagedKv<__half>&, int, int,
                                             float*, int*, const AttentionOut<__half>&, const DecodeFusion<__half>&,
                                             DecodeKernel, cudaStream_t);

}  // namespace sy::cuda
