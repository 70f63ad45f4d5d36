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
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode_attention.cuh"
#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/paged_kv.cuh"

namespace sy::cuda {
namespace {

template <typename T, int HD, int G, bool FUSED>
__global__ void __launch_bounds__(kDecodeThreads, 1) decode_kernel(DecodeAttentionArgs<T> args) {
  allow_dependent_launch();  // dependent_launch.cuh: the next kernel may start launching
  decode_attention_block<T, HD, G, FUSED>(args, blockIdx.x, blockIdx.y, blockIdx.z, [] { wait_for_prior_kernels(); });
}

template <typename T, int HD, int G>
void launch_decode_group(const T* q, const int32_t* rows, int num_rows, const PagedKv<T>& kv, int num_heads, int splits,
                         float* partials, int* counters, const AttentionOut<T>& out, const DecodeFusion<T>& fuse,
                         cudaStream_t stream) {
  const dim3 grid(num_rows, kv.num_kv_heads, splits);
  const DecodeAttentionArgs<T> args{q, rows, kv, num_heads, splits, partials, counters, out, fuse};
  if (fuse.qkv) {
    launch_dependent(decode_kernel<T, HD, G, true>, grid, dim3(kDecodeThreads), 0, stream, args);
  } else {
    launch_dependent(decode_kernel<T, HD, G, false>, grid, dim3(kDecodeThreads), 0, stream, args);
  }
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

}  // namespace

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

template void paged_attention_decode<__nv_bfloat16>(const __nv_bfloat16*, const int32_t*, int,
                                                   const PagedKv<__nv_bfloat16>&, int, int, float*, int*,
                                                   const AttentionOut<__nv_bfloat16>&,
                                                   const DecodeFusion<__nv_bfloat16>&, cudaStream_t);
template void paged_attention_decode<__half>(const __half*, const int32_t*, int, const PagedKv<__half>&, int, int,
                                             float*, int*, const AttentionOut<__half>&, const DecodeFusion<__half>&,
                                             cudaStream_t);

}  // namespace sy::cuda
