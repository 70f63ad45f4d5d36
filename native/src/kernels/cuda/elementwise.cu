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

// One block per row; the output is split (store_split.cuh) when y_lo is not null. With V > 0
// (dim <= V * blockDim), a thread's V elements of the row and of the norm weight are all loaded
// before any is used and stay in registers for the output: one memory round trip before the
// reduction instead of one before it and another after (the two norms of a layer took 17 µs at a
// 2048-token step, for 24 MB; bench/CUDA_NOTES.md, "Session 8"). V = 0 takes any dim and reads the
// row again. Both sum the same terms in the same order, as the gemv's norm prologue does.
template <typename T, int V>
__global__ void add_rmsnorm_kernel(float* x, const float* delta, const float* delta_lo, const int32_t* gather,
                                   const float* weight, int dim, float eps, T* y, T* y_lo, bool write_back) {
  __shared__ float scratch[32];
  const int r = blockIdx.x;
  const int64_t src = gather ? gather[r] : r;
  float* xr = x + src * dim;
  const float* dr = delta ? delta + src * dim : nullptr;
  const float* dl = delta_lo ? delta_lo + src * dim : nullptr;
  const int64_t yr = static_cast<int64_t>(r) * dim;
  // A split input's two products are summed first, then added to the stream.
  const auto d_at = [dr, dl](int i) { return dl ? dr[i] + dl[i] : dr[i]; };
  float ss = 0;
  if constexpr (V > 0) {
    float v[V], w[V];
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i < dim) {
        v[k] = xr[i];
        if (dr) v[k] += d_at(i);
        w[k] = weight[i];
      }
    }
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i < dim) {
        if (write_back && dr) xr[i] = v[k];
        ss += v[k] * v[k];
      }
    }
    ss = block_sum(ss, scratch);
    const float inv = rsqrtf(ss / static_cast<float>(dim) + eps);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i < dim) store_split(w[k] * (v[k] * inv), y, y_lo, yr + i);
    }
  } else {
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

/** add_rmsnorm_kernel for rows of dim elements, with the row in registers where it fits. */
template <typename T>
void launch_add_rmsnorm(float* x, const float* delta, const float* delta_lo, const int32_t* gather, int rows,
                        const float* weight, int dim, float eps, T* y, T* y_lo, bool write_back, cudaStream_t stream) {
  const int per_thread = (dim + kRowThreads - 1) / kRowThreads;
  const auto kernel = per_thread <= 4    ? add_rmsnorm_kernel<T, 4>
                      : per_thread <= 8  ? add_rmsnorm_kernel<T, 8>
                      : per_thread <= 16 ? add_rmsnorm_kernel<T, 16>
                      : per_thread <= 32 ? add_rmsnorm_kernel<T, 32>
                                         : add_rmsnorm_kernel<T, 0>;
  kernel<<<rows, kRowThreads, 0, stream>>>(x, delta, delta_lo, gather, weight, dim, eps, y, y_lo, write_back);
}

// Up to kHeadsPerWarp heads of one kind (q, k or v) of one token a warp, every head's loads issued
// before any is used. With one head a warp, a warp's lifetime was two dependent memory round trips
// (the head and the position, then the position's RoPE row) for 256 bytes, and the pass moved its
// 34 MB in 25 µs a layer at a 2048-token step (1.3 TB/s; bench/CUDA_NOTES.md, "Session 8"). Each
// head's arithmetic is norm_rope_head's, lane for lane, so the bits match the fused decode path.
constexpr int kHeadsPerWarp = 4;

template <typename T, typename S, int STEPS>
__global__ void qkv_norm_rope_store_kernel(const S* qkv, const S* qkv_lo, const int32_t* positions,
                                           const int32_t* slots, const float* rope, const float* q_norm,
                                           const float* k_norm, QkvLayout L, int n, T* q_out, T* k_cache,
                                           T* v_cache) {
  constexpr int H = kHeadsPerWarp;
  const int q_groups = (L.num_heads + H - 1) / H, kv_groups = (L.num_kv_heads + H - 1) / H;
  const int groups = q_groups + 2 * kv_groups;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
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

// Four consecutive products (p aligned to four elements): one 16- or 8-byte load.
template <typename T>
__device__ __forceinline__ float4 load_products4(const Product<T>* p) {
  float v[4];
  load_products<T>(p, v);
  return make_float4(v[0], v[1], v[2], v[3]);
}

// V elements per thread (16-byte loads of gate and up when V == 4: inter % 4 == 0; 8-byte ones of
// 16-bit products).
template <typename T, int V>
__global__ void silu_mul_kernel(const Product<T>* gu, const Product<T>* gu_lo, int inter, T* out, T* out_lo) {
  const int t = blockIdx.y;
  const Product<T>* g = gu + static_cast<int64_t>(t) * 2 * inter;
  const Product<T>* gl = gu_lo ? gu_lo + static_cast<int64_t>(t) * 2 * inter : nullptr;
  const int64_t o = static_cast<int64_t>(t) * inter;
  for (int i = (blockIdx.x * blockDim.x + threadIdx.x) * V; i < inter; i += gridDim.x * blockDim.x * V) {
    if constexpr (V == 4) {
      float4 a = load_products4<T>(g + i);
      float4 b = load_products4<T>(g + inter + i);
      if (gl) {
        const float4 la = load_products4<T>(gl + i);
        const float4 lb = load_products4<T>(gl + inter + i);
        a = make_float4(a.x + la.x, a.y + la.y, a.z + la.z, a.w + la.w);
        b = make_float4(b.x + lb.x, b.y + lb.y, b.z + lb.z, b.w + lb.w);
      }
      // One 8-byte store of hi (and of lo) instead of four 2-byte ones: with the lo half split
      // off (bf16), the scalar stores took 32 µs a layer in a 2048-token step, these 19.5.
      const float v[4] = {silu_times(a.x, b.x), silu_times(a.y, b.y), silu_times(a.z, b.z), silu_times(a.w, b.w)};
      store_split4(v, out, out_lo, o + i);
    } else {
      const auto value = [](const Product<T>* p, int at) { return product_value<T>(p[at]); };
      const float gate = gl ? value(g, i) + value(gl, i) : value(g, i);
      const float up = gl ? value(g, inter + i) + value(gl, inter + i) : value(g, inter + i);
      store_split(silu_times(gate, up), out, out_lo, o + i);
    }
  }
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
  kernel<<<blocks, warps * 32, 0, stream>>>(qkv, qkv_lo, positions, slots, rope, q_norm, k_norm, L, n, q_out, k_cache,
                                            v_cache);
  SY_CUDA_CHECK_LAUNCH(qkv_norm_rope_store_kernel);
}

template <typename T>
void silu_mul(const Product<T>* gate_up, const Product<T>* gate_up_lo, int n, int inter, T* out, T* out_lo,
              cudaStream_t stream) {
  if (n == 0) return;
  if (inter % 4 == 0) {
    const dim3 grid(static_cast<unsigned>((inter / 4 + 255) / 256), static_cast<unsigned>(n));
    silu_mul_kernel<T, 4><<<grid, 256, 0, stream>>>(gate_up, gate_up_lo, inter, out, out_lo);
  } else {
    const dim3 grid(static_cast<unsigned>((inter + 255) / 256), static_cast<unsigned>(n));
    silu_mul_kernel<T, 1><<<grid, 256, 0, stream>>>(gate_up, gate_up_lo, inter, out, out_lo);
  }
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
