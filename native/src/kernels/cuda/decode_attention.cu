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
// step runs too.
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode_attention.cuh"
#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/paged_kv.cuh"

namespace sy::cuda {
namespace {

// Grids of more than one wave at two blocks an SM run a build for three blocks an SM, where
// ptxas fits the kernel in 80 registers without spilling (head_dim up to 128 at group 2, up to 64
// at group 4; it spills 88-1 212 bytes elsewhere). At large batch a block's time is its serial
// per-tile chain, not its loads, so a third block an SM is a longer queue for the schedulers:
// batch 256 -10% on the H200 (bench/CUDA_NOTES.md, sessions 12 and 13). Smaller grids keep the
// unbounded build (109 registers), whose chains are shorter. splits_for (qwen3_cuda.cpp) sizes
// large grids in whole waves of the three-block build's slots (decode_attention_slots).
template <int HD, int G>
constexpr bool has_wide_build() {
  return (G == 2 && HD <= 128) || (G == 4 && HD <= 64);
}

// SWITCHYARD_CUDA_DECODE_WIDE=off: every grid on the unbounded build, and splits_for back to
// whole waves of two blocks an SM (as before session 13; for measuring).
bool wide_builds_on() {
  static const bool on = [] {
    const char* v = std::getenv("SWITCHYARD_CUDA_DECODE_WIDE");
    return !(v && std::strcmp(v, "off") == 0);
  }();
  return on;
}

template <typename T, int HD, int G, bool FUSED, int MIN_BLOCKS>
__global__ void __launch_bounds__(kDecodeThreads, MIN_BLOCKS) decode_kernel(DecodeAttentionArgs<T> args) {
  allow_dependent_launch();  // dependent_launch.cuh: the next kernel may start launching
  decode_attention_block<T, HD, G, FUSED>(args, blockIdx.x, blockIdx.y, blockIdx.z, [] { wait_for_prior_kernels(); });
}

template <typename T, int HD, int G>
void launch_decode_group(const T* q, const int32_t* rows, int num_rows, const PagedKv<T>& kv, int num_heads, int splits,
                         float* partials, int* counters, const AttentionOut<T>& out, const DecodeFusion<T>& fuse,
                         cudaStream_t stream) {
  const dim3 grid(num_rows, kv.num_kv_heads, splits);
  const DecodeAttentionArgs<T> args{q, rows, kv, num_heads, splits, partials, counters, out, fuse};
  static const int sms = current_device_attribute(cudaDevAttrMultiProcessorCount);
  const auto launch = [&](auto kernel) { launch_dependent(kernel, grid, dim3(kDecodeThreads), 0, stream, args); };
  bool wide = false;
  if constexpr (has_wide_build<HD, G>()) {
    wide = wide_builds_on() && static_cast<int64_t>(num_rows) * kv.num_kv_heads * splits > 2 * sms;
    if (wide && fuse.qkv) launch(decode_kernel<T, HD, G, true, 3>);
    if (wide && !fuse.qkv) launch(decode_kernel<T, HD, G, false, 3>);
  }
  if (!wide && fuse.qkv) launch(decode_kernel<T, HD, G, true, 1>);
  if (!wide && !fuse.qkv) launch(decode_kernel<T, HD, G, false, 1>);
  SY_CUDA_CHECK_LAUNCH(decode_kernel);
}

template <typename T, int HD>
void launch_decode(const T* q, const int32_t* rows, int num_rows, const PagedKv<T>& kv, int num_heads, int splits,
                   float* partials, int* counters, const AttentionOut<T>& out, const DecodeFusion<T>& fuse,
                   cudaStream_t stream) {
  const int group = num_heads / kv.num_kv_heads;
  if (group <= 2) return launch_decode_group<T, HD, 2>(q, rows, num_rows, kv, num_heads, splits, partials, counters, out, fuse, stream);
  if (group <= 4) return launch_decode_group<T, HD, 4>(q, rows, num_rows, kv, num_heads, splits, partials, counters, out, fuse, stream);
  return launch_decode_group<T, HD, 8>(q, rows, num_rows, kv, num_heads, splits, partials, counters, out, fuse, stream);
}

template <typename T, int HD>
int blocks_per_sm_for_group(int group) {
  int blocks = 0;
  const auto query = [&blocks](auto kernel) {
    SY_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kDecodeThreads, 0));
  };
  const bool wide = wide_builds_on();
  if (group <= 2) {
    wide && has_wide_build<HD, 2>() ? query(decode_kernel<T, HD, 2, false, 3>) : query(decode_kernel<T, HD, 2, false, 1>);
  } else if (group <= 4) {
    wide && has_wide_build<HD, 4>() ? query(decode_kernel<T, HD, 4, false, 3>) : query(decode_kernel<T, HD, 4, false, 1>);
  } else {
    query(decode_kernel<T, HD, 8, false, 1>);
  }
  return blocks;
}

}  // namespace

template <typename T>
int decode_attention_slots(int head_dim, int num_heads, int num_kv_heads) {
  const int group = num_heads / num_kv_heads;
  int per_sm = 0;
  switch (head_dim) {
    case 16: per_sm = blocks_per_sm_for_group<T, 16>(group); break;
    case 32: per_sm = blocks_per_sm_for_group<T, 32>(group); break;
    case 64: per_sm = blocks_per_sm_for_group<T, 64>(group); break;
    case 128: per_sm = blocks_per_sm_for_group<T, 128>(group); break;
    case 256: per_sm = blocks_per_sm_for_group<T, 256>(group); break;
    default: throw_unsupported_head_dim(head_dim);
  }
  return std::max(1, per_sm) * current_device_attribute(cudaDevAttrMultiProcessorCount);
}

template <typename T>
void paged_attention_decode(const T* q, const int32_t* rows, int num_rows, const PagedKv<T>& kv,
                            int num_heads, int splits, float* partials, int* counters, const AttentionOut<T>& out,
                            const DecodeFusion<T>& fuse, cudaStream_t stream) {
  if (num_rows == 0) return;
  if (num_heads / kv.num_kv_heads > kMaxGroup) throw CudaError("GQA groups larger than 8 are not supported on CUDA");
  switch (kv.head_dim) {
#define SY_DECODE_CASE(HD)                                                                                      \
  case HD:                                                                                                      \
    return launch_decode<T, HD>(q, rows, num_rows, kv, num_heads, splits, partials, counters, out, fuse,            \
                                stream);
    SY_DECODE_CASE(16)
    SY_DECODE_CASE(32)
    SY_DECODE_CASE(64)
    SY_DECODE_CASE(128)
    SY_DECODE_CASE(256)
#undef SY_DECODE_CASE
    default: throw_unsupported_head_dim(kv.head_dim);
  }
}

template int decode_attention_slots<__nv_bfloat16>(int, int, int);
template int decode_attention_slots<__half>(int, int, int);
template void paged_attention_decode<__nv_bfloat16>(const __nv_bfloat16*, const int32_t*, int,
                                                   const PagedKv<__nv_bfloat16>&, int, int, float*, int*,
                                                   const AttentionOut<__nv_bfloat16>&,
                                                   const DecodeFusion<__nv_bfloat16>&, cudaStream_t);
template void paged_attention_decode<__half>(const __half*, const int32_t*, int, const PagedKv<__half>&, int, int,
                                             float*, int*, const AttentionOut<__half>&, const DecodeFusion<__half>&,
                                             cudaStream_t);

}  // namespace sy::cuda
