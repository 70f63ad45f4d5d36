// The CUDA backend's row-wise kernels: embedding lookup, RMSNorm fused with the residual add,
// q/k norm + RoPE + KV-cache store fused into one pass over the QKV projection, SiLU-and-
// multiply. Same functions as kernels/cpu/elementwise.cpp; fp32 arithmetic throughout.
#include <algorithm>
#include <type_traits>

#include "kernels/cuda/activation.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/head_norm_rope.cuh"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda/store_split.cuh"

namespace sy::cuda {
namespace {

constexpr int kRowThreads = 256;

template <typename T>
__global__ void embed_kernel(const T* table, const int32_t* tokens, int dim, float* out) {
  allow_dependent_launch();  // the first layer's gemv may start loading its weights
  const int t = blockIdx.x;
  const T* row = table + static_cast<int64_t>(tokens[t]) * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) out[static_cast<int64_t>(t) * dim + i] = to_f32(row[i]);
}

// R rows a block; the output is split (store_split.cuh) when y_lo is not null. With V > 0
// (dim <= V * blockDim), a thread's V elements of each row and of the norm weight are all loaded
// before any is used and stay in registers for the output: one memory round trip before the
// reduction instead of one before it and another after (the two norms of a layer took 17 µs at a
// 2048-token step, for 24 MB; bench/CUDA_NOTES.md, "Session 8"). R > 1 puts R rows' loads in
// flight at once and shares the weight's: at one row a block, a 2048-token step's norm is 2048
// short blocks in two waves; at four, one wave (the two norms of a layer 13.8 -> 13.2 µs,
// "Session 9"). V = 0 takes any dim and reads the row again (R = 1). Every row sums the same
// terms in the same order, as the gemv's norm prologue does.
template <typename T, int V, int R>
__global__ void add_rmsnorm_kernel(float* x, const float* delta, const float* delta_lo, const int32_t* gather,
                                   int rows, const float* weight, int dim, float eps, T* y, T* y_lo, bool write_back) {
  static_assert(R == 1 || V > 0, "several rows a block only with the row in registers");
  wait_for_prior_kernels();  // launched as a programmatic dependent (launch_add_rmsnorm)
  __shared__ float scratch[32 * R];
  if constexpr (V > 0) {
    float v[R][V], w[V];
    int64_t src[R];
#pragma unroll
    for (int j = 0; j < R; ++j) {
      const int r = min(blockIdx.x * R + j, rows - 1);  // a short last block repeats its last row, unstored
      src[j] = gather ? gather[r] : r;
    }
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i < dim) w[k] = weight[i];
    }
#pragma unroll
    for (int j = 0; j < R; ++j) {
      const float* xr = x + src[j] * dim;
      const float* dr = delta ? delta + src[j] * dim : nullptr;
      const float* dl = delta_lo ? delta_lo + src[j] * dim : nullptr;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const int i = threadIdx.x + k * blockDim.x;
        if (i < dim) {
          v[j][k] = xr[i];
          // A split input's two products are summed first, then added to the stream.
          if (dr) v[j][k] += dl ? dr[i] + dl[i] : dr[i];
        }
      }
    }
    float ss[R];
#pragma unroll
    for (int j = 0; j < R; ++j) {
      const bool stored = blockIdx.x * R + j < rows;
      ss[j] = 0;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const int i = threadIdx.x + k * blockDim.x;
        if (i < dim) {
          if (write_back && delta && stored) x[src[j] * dim + i] = v[j][k];
          ss[j] += v[j][k] * v[j][k];
        }
      }
    }
    block_sum_n<R>(ss, scratch);
#pragma unroll
    for (int j = 0; j < R; ++j) {
      const int r = blockIdx.x * R + j;
      if (r >= rows) break;
      const float inv = rsqrtf(ss[j] / static_cast<float>(dim) + eps);
      const int64_t yr = static_cast<int64_t>(r) * dim;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const int i = threadIdx.x + k * blockDim.x;
        if (i < dim) store_split(w[k] * (v[j][k] * inv), y, y_lo, yr + i);
      }
    }
  } else {
    const int r = blockIdx.x;
    const int64_t src = gather ? gather[r] : r;
    float* xr = x + src * dim;
    const float* dr = delta ? delta + src * dim : nullptr;
    const float* dl = delta_lo ? delta_lo + src * dim : nullptr;
    const int64_t yr = static_cast<int64_t>(r) * dim;
    const auto d_at = [dr, dl](int i) { return dl ? dr[i] + dl[i] : dr[i]; };
    float ss = 0;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
      float v = xr[i];
      if (dr) v += d_at(i);
      if (write_back && dr) xr[i] = v;
      ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float inv = rsqrtf(ss / static_cast<float>(dim) + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
      const float v = write_back || !dr ? xr[i] : xr[i] + d_at(i);
      store_split(weight[i] * (v * inv), y, y_lo, yr + i);
    }
  }
}

// Rows a block for add_rmsnorm_kernel (SWITCHYARD_CUDA_NORM_ROWS while measuring; Session 9).
int norm_rows_per_block(int rows) {
  static const int forced = env_int("SWITCHYARD_CUDA_NORM_ROWS").value_or(0);
  if (forced == 1 || forced == 2 || forced == 4) return forced;
  return rows >= 1024 ? 4 : rows >= 256 ? 2 : 1;
}

/** add_rmsnorm_kernel for rows of dim elements, with the row in registers where it fits. */
template <typename T>
void launch_add_rmsnorm(float* x, const float* delta, const float* delta_lo, const int32_t* gather, int rows,
                        const float* weight, int dim, float eps, T* y, T* y_lo, bool write_back, cudaStream_t stream) {
  const int per_thread = (dim + kRowThreads - 1) / kRowThreads;
  const int r = per_thread <= 8 ? norm_rows_per_block(rows) : 1;
  const auto kernel = per_thread <= 4    ? (r == 4   ? add_rmsnorm_kernel<T, 4, 4>
                                            : r == 2 ? add_rmsnorm_kernel<T, 4, 2>
                                                     : add_rmsnorm_kernel<T, 4, 1>)
                      : per_thread <= 8  ? (r == 4   ? add_rmsnorm_kernel<T, 8, 4>
                                            : r == 2 ? add_rmsnorm_kernel<T, 8, 2>
                                                     : add_rmsnorm_kernel<T, 8, 1>)
                      : per_thread <= 16 ? add_rmsnorm_kernel<T, 16, 1>
                      : per_thread <= 32 ? add_rmsnorm_kernel<T, 32, 1>
                                         : add_rmsnorm_kernel<T, 0, 1>;
  const unsigned blocks = static_cast<unsigned>((rows + r - 1) / r);
  // As a programmatic dependent (dependent_launch.cuh): the blocks start as the GEMM before them
  // drains, and wait for it at their first line.
  launch_dependent(kernel, dim3(blocks), dim3(kRowThreads), 0, stream, x, delta, delta_lo, gather, rows, weight, dim,
                   eps, y, y_lo, write_back);
}

// Up to kHeadsPerWarp heads of one kind (q, k or v) of one token a warp, every head's loads issued
// before any is used. With one head a warp, a warp's lifetime was two dependent memory round trips
// (the head and the position, then the position's RoPE row) for 256 bytes, and the pass moved its
// 34 MB in 25 µs a layer at a 2048-token step (1.3 TB/s; bench/CUDA_NOTES.md, "Session 8"). Each
// head's arithmetic is norm_rope_head's, lane for lane, so the bits match the fused decode path.
constexpr int kHeadsPerWarp = 4;

// Five blocks an SM for float16's 16-bit products and heads up to 128 long: at its natural 53
// registers four fit, and the pass waits on its loads; ptxas fits it in 48 without spilling, and
// a 2048-token step's pass went from 17.8 to 16.9-17.0 µs a layer. bfloat16's instance (fp32
// products and their lo halves, twice the bytes) spilled a little and measured no faster
// (bench/CUDA_NOTES.md, "Session 10"); it and longer heads keep their own register count.
template <typename T, typename S, int STEPS>
__global__ void __launch_bounds__(256, (STEPS == 1 && std::is_same_v<S, __half>) ? 5 : 1)
    qkv_norm_rope_store_kernel(const S* qkv, const S* qkv_lo, const int32_t* positions, const int32_t* slots,
                               const float* rope, const float* q_norm, const float* k_norm, QkvLayout L, int n,
                               T* q_out, T* k_cache, T* v_cache) {
  wait_for_prior_kernels();  // launched as a programmatic dependent, as is the attention after it
  allow_dependent_launch();
  constexpr int H = kHeadsPerWarp;
  const int q_groups = (L.num_heads + H - 1) / H, kv_groups = (L.num_kv_heads + H - 1) / H;
  const int groups = q_groups + 2 * kv_groups;
  // 32-bit: n * groups is far below 2^31 (a step's tokens times a few dozen), and a 64-bit
  // division is a long subroutine in front of every warp's loads.
  const unsigned item = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int t = static_cast<int>(item / groups), group = static_cast<int>(item % groups);
  if (t >= n) return;  // the whole warp leaves together
  const int pos = positions[t];
  const int64_t slot = slots[t];
  // This warp's heads: `count` of them from `first` (within its kind), at column head `column`.
  const int kind = group < q_groups ? 0 : group < q_groups + kv_groups ? 1 : 2;  // q, k, v
  const int first = (kind == 0 ? group : kind == 1 ? group - q_groups : group - q_groups - kv_groups) * H;
  const int count = min(H, (kind == 0 ? L.num_heads : L.num_kv_heads) - first);
  const int column = kind == 0 ? first : kind == 1 ? L.num_heads + first : L.num_heads + L.num_kv_heads + first;
  const int hd = L.head_dim;
  const int64_t at = (static_cast<int64_t>(t) * (L.num_heads + 2 * L.num_kv_heads) + column) * hd;
  float2 a[H][STEPS], b[H][STEPS];
#pragma unroll
  for (int h = 0; h < H; ++h) {
    if (h < count) load_head_pairs<T>(qkv + at + h * hd, qkv_lo ? qkv_lo + at + h * hd : nullptr, hd, a[h], b[h]);
  }
  const auto dst_of = [&](int h) {
    return kind == 0 ? q_out + (static_cast<int64_t>(t) * L.num_heads + first + h) * hd
                     : (kind == 1 ? k_cache : v_cache) + (slot * L.num_kv_heads + first + h) * hd;
  };
  if (kind == 2) {
#pragma unroll
    for (int h = 0; h < H; ++h) {
      if (h < count) {
        finish_v_head<T>(a[h], b[h], hd, [dst = dst_of(h)](int i, T x, T y) { store_pair(dst + i, x, y); });
      }
    }
    return;
  }
  const float* norm = kind == 0 ? q_norm : k_norm;
  NormRopeParams<STEPS> params;
  load_norm_rope_params(hd, pos, rope, norm, params);
#pragma unroll
  for (int h = 0; h < H; ++h) {
    if (h < count) {
      finish_norm_rope_head<T>(a[h], b[h], params, hd, norm != nullptr, L.eps,
                               [dst = dst_of(h)](int i, T x, T y) { store_pair(dst + i, x, y); });
    }
  }
}

// V consecutive elements a thread, V = 16 bytes of products (4 fp32, 8 fp16: one 16-byte load of
// gate and one of up, inter % V == 0), or V = 1 for any inter. A thread's V outputs are one store.
// With 8-byte loads of 16-bit products, a 2048-token step's SiLU·up took 13.0 µs a layer; with
// 16-byte ones, 12.3-12.6 ("Session 9").
template <typename T, int V>
__global__ void silu_mul_kernel(const Product<T>* gu, const Product<T>* gu_lo, int n, int inter, T* out, T* out_lo) {
  wait_for_prior_kernels();  // launched as a programmatic dependent (silu_mul)
  const int per_row = inter / V;
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= static_cast<int64_t>(n) * per_row) return;
  const int t = static_cast<int>(k / per_row), i = static_cast<int>(k % per_row) * V;
  const Product<T>* g = gu + static_cast<int64_t>(t) * 2 * inter;
  const Product<T>* gl = gu_lo ? gu_lo + static_cast<int64_t>(t) * 2 * inter : nullptr;
  float a[V], b[V];
  load_products<T>(g + i, a);
  load_products<T>(g + inter + i, b);
  if (gl) {
    float la[V], lb[V];
    load_products<T>(gl + i, la);
    load_products<T>(gl + inter + i, lb);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      a[e] += la[e];
      b[e] += lb[e];
    }
  }
  float v[V];
#pragma unroll
  for (int e = 0; e < V; ++e) v[e] = silu_times(a[e], b[e]);
  store_split_n(v, out, out_lo, static_cast<int64_t>(t) * inter + i);
}

// One thread per (position, angle): the expression norm_rope_head evaluated per element before.
__global__ void rope_table_kernel(const float* inv_freq, int positions, int half, float* table) {
  const int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (k >= static_cast<int64_t>(positions) * half) return;
  const int p = static_cast<int>(k / half), i = static_cast<int>(k % half);
  float s, c;
  sincosf(__fmul_rn(static_cast<float>(p), inv_freq[i]), &s, &c);
  *reinterpret_cast<float2*>(table + 2 * k) = make_float2(c, s);
}

template <typename From, typename To>
__global__ void convert_16bit_kernel(const From* in, int64_t count, To* out, unsigned* beyond) {
  unsigned past = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = to_f32(in[i]);
    past += fabsf(v) > kHalfMax;
    out[i] = from_f32<To>(v);
  }
  if (past) atomicAdd(beyond, past);
}

// y += x, 16 bytes a thread where both are aligned and count % 4 == 0.
__global__ void add_into_kernel(float* y, const float* x, int64_t count) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const bool quads = count % 4 == 0 && reinterpret_cast<uintptr_t>(y) % 16 == 0 &&
                     reinterpret_cast<uintptr_t>(x) % 16 == 0;
  if (quads) {
    float4* y4 = reinterpret_cast<float4*>(y);
    const float4* x4 = reinterpret_cast<const float4*>(x);
    for (; i < count / 4; i += stride) {
      float4 a = y4[i];
      const float4 b = __ldg(x4 + i);
      a.x += b.x;
      a.y += b.y;
      a.z += b.z;
      a.w += b.w;
      y4[i] = a;
    }
  } else {
    for (; i < count; i += stride) y[i] += x[i];
  }
}

}  // namespace

template <typename From, typename To>
void convert_16bit(const From* in, int64_t count, To* out, unsigned* beyond, cudaStream_t stream) {
  if (count == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((count + 255) / 256, 4096));
  convert_16bit_kernel<From, To><<<blocks, 256, 0, stream>>>(in, count, out, beyond);
  SY_CUDA_CHECK_LAUNCH(convert_16bit_kernel);
}
template void convert_16bit<__nv_bfloat16, __half>(const __nv_bfloat16*, int64_t, __half*, unsigned*, cudaStream_t);
template void convert_16bit<__half, __nv_bfloat16>(const __half*, int64_t, __nv_bfloat16*, unsigned*, cudaStream_t);

void add_into(float* y, const float* x, int64_t count, cudaStream_t stream) {
  if (count == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((count + 1023) / 1024, 8192));
  add_into_kernel<<<blocks, 256, 0, stream>>>(y, x, count);
  SY_CUDA_CHECK_LAUNCH(add_into_kernel);
}

void rope_table(const float* inv_freq, int positions, int head_dim, float* table, cudaStream_t stream) {
  const int64_t count = static_cast<int64_t>(positions) * (head_dim / 2);
  if (count == 0) return;
  rope_table_kernel<<<static_cast<unsigned>((count + 255) / 256), 256, 0, stream>>>(inv_freq, positions, head_dim / 2,
                                                                                    table);
  SY_CUDA_CHECK_LAUNCH(rope_table_kernel);
}

template <typename T>
void embed(const T* table, const int32_t* tokens, int n, int dim, float* out, cudaStream_t stream) {
  if (n == 0) return;
  embed_kernel<T><<<n, kRowThreads, 0, stream>>>(table, tokens, dim, out);
  SY_CUDA_CHECK_LAUNCH(embed_kernel);
}

template <typename T>
void add_rmsnorm(float* x, const float* delta, const float* delta_lo, const float* weight, int rows, int dim, float eps,
                 T* y, T* y_lo, cudaStream_t stream) {
  if (rows == 0) return;
  launch_add_rmsnorm<T>(x, delta, delta_lo, nullptr, rows, weight, dim, eps, y, y_lo, true, stream);
  SY_CUDA_CHECK_LAUNCH(add_rmsnorm_kernel);
}

template <typename T>
void gather_add_rmsnorm(const float* x, const float* delta, const int32_t* rows, int m, const float* weight, int dim,
                        float eps, T* y, T* y_lo, cudaStream_t stream) {
  if (m == 0) return;
  launch_add_rmsnorm<T>(const_cast<float*>(x), delta, nullptr, rows, m, weight, dim, eps, y, y_lo, false, stream);
  SY_CUDA_CHECK_LAUNCH(gather_add_rmsnorm_kernel);
}

template <typename T, typename S>
void qkv_norm_rope_store(const S* qkv, const S* qkv_lo, int n, const int32_t* positions, const int32_t* slots,
                         const float* rope, const float* q_norm, const float* k_norm, const QkvLayout& L,
                         T* q_out, T* k_cache, T* v_cache, cudaStream_t stream) {
  if (n == 0) return;
  constexpr int warps = 8, H = kHeadsPerWarp;
  const int64_t groups = (L.num_heads + H - 1) / H + 2 * ((L.num_kv_heads + H - 1) / H);
  const unsigned blocks = static_cast<unsigned>((n * groups + warps - 1) / warps);
  const auto kernel = L.head_dim <= 128 ? qkv_norm_rope_store_kernel<T, S, 1> : qkv_norm_rope_store_kernel<T, S, 2>;
  launch_dependent(kernel, dim3(blocks), dim3(warps * 32), 0, stream, qkv, qkv_lo, positions, slots, rope, q_norm, k_norm,
                   L, n, q_out, k_cache, v_cache);
  SY_CUDA_CHECK_LAUNCH(qkv_norm_rope_store_kernel);
}

template <typename T>
void silu_mul(const Product<T>* gate_up, const Product<T>* gate_up_lo, int n, int inter, T* out, T* out_lo,
              cudaStream_t stream) {
  if (n == 0) return;
  constexpr int kWide = 16 / sizeof(Product<T>);
  const bool wide = inter % kWide == 0;
  const int64_t threads = static_cast<int64_t>(n) * (wide ? inter / kWide : inter);
  const unsigned blocks = static_cast<unsigned>((threads + 255) / 256);
  launch_dependent(wide ? silu_mul_kernel<T, kWide> : silu_mul_kernel<T, 1>, dim3(blocks), dim3(256), 0, stream, gate_up,
                   gate_up_lo, n, inter, out, out_lo);
  SY_CUDA_CHECK_LAUNCH(silu_mul_kernel);
}

#define SY_INSTANTIATE(T)                                                                                         \
  template void embed<T>(const T*, const int32_t*, int, int, float*, cudaStream_t);                              \
  template void add_rmsnorm<T>(float*, const float*, const float*, const float*, int, int, float, T*, T*,       \
                               cudaStream_t);                                                                    \
  template void gather_add_rmsnorm<T>(const float*, const float*, const int32_t*, int, const float*, int, float, \
                                      T*, T*, cudaStream_t);                                                     \
  template void qkv_norm_rope_store<T, float>(const float*, const float*, int, const int32_t*, const int32_t*,   \
                                              const float*, const float*, const float*, const QkvLayout&, T*, T*, \
                                              T*, cudaStream_t);                                                  \
  template void silu_mul<T>(const Product<T>*, const Product<T>*, int, int, T*, T*, cudaStream_t);
SY_INSTANTIATE(__nv_bfloat16)
SY_INSTANTIATE(__half)
// float16's cuBLAS path stores the qkv product in 16 bits (kernels.h, Product).
template void qkv_norm_rope_store<__half, __half>(const __half*, const __half*, int, const int32_t*, const int32_t*,
                                                  const float*, const float*, const float*, const QkvLayout&, __half*,
                                                  __half*, __half*, cudaStream_t);

}  // namespace sy::cuda
