// Sampling on the GPU: greedy argmax (32 blocks per row, then a merge), top-k raw logprobs, and
// random sampling with temperature, top-k, top-p and min-p (one block per logit row).
// Thresholds are found by bisection over the bits of the (order-preserving) float key instead
// of sorting the vocabulary: 32 block-wide passes per threshold, each over one L2-resident row.
// The uniform draw comes from the request's own generator on the host, so a seeded request
// samples the same whatever shares its batch. sampler/sampler.cpp is the reference (the kept
// sets match; the order inside the kept set, and so the token a given draw picks, may differ).
#include <cfloat>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/reduce.cuh"

namespace sy::cuda {
namespace {

constexpr int kThreads = 1024;

// Maps floats to unsigned keys with the same order (-inf lowest).
__device__ __forceinline__ uint32_t float_key(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// (value, id) with the larger value winning and the lower id breaking ties.
struct Best {
  float v;
  int id;
};
__device__ __forceinline__ Best better(Best a, Best b) {
  return (b.v > a.v || (b.v == a.v && b.id < a.id)) ? b : a;
}
__device__ Best block_best(Best b, float* sv, int* si) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Best other{__shfl_xor_sync(0xffffffffu, b.v, o), __shfl_xor_sync(0xffffffffu, b.id, o)};
    b = better(b, other);
  }
  __syncthreads();
  if (lane == 0) {
    sv[warp] = b.v;
    si[warp] = b.id;
  }
  __syncthreads();
  b = lane < (blockDim.x >> 5) ? Best{sv[lane], si[lane]} : Best{-INFINITY, INT_MAX};
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Best other{__shfl_xor_sync(0xffffffffu, b.v, o), __shfl_xor_sync(0xffffffffu, b.id, o)};
    b = better(b, other);
  }
  return b;
}

// max + log Σ exp(x - max): the raw log-softmax normalizer.
__device__ float log_normalizer(const float* x, int vocab, float mx, float* scratch) {
  float s = 0;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) s += __expf(x[i] - mx);
  return mx + logf(block_sum(s, scratch));
}

// Argmax and raw logprob of each row in two launches: kArgmaxParts blocks per row each take a
// slice of the vocabulary (its best, and Σ exp(x - best) over the slice); one warp per row merges.
// One block per row was 86 µs for a 151936-token row at batch 1 (one SM's bandwidth). A slice is
// read once, 16 bytes a load where rows are 16-byte aligned, with the sum kept online (rescaled
// when the best rises). Two passes of 4-byte loads read the logits at ~1.5 TB/s at batch 256 on
// the H200, this at ~2.5 (102 -> 61 µs; bench/CUDA_NOTES.md, "Session 16").
constexpr int kArgmaxParts = 32;
constexpr int kArgmaxThreads = 256;
constexpr int kArgmaxUnroll = 4;  // 16-byte loads a thread has in flight

struct ArgmaxPart {
  float v;
  int id;
  float sum;  // Σ exp(x - v) over the elements the part covers
};

// The part covering both: the better best, each sum rescaled to its max.
__device__ __forceinline__ ArgmaxPart merge_parts(ArgmaxPart a, ArgmaxPart b) {
  if (a.v == -INFINITY) return b;
  if (b.v == -INFINITY) return a;
  const Best best = better(Best{a.v, a.id}, Best{b.v, b.id});
  return {best.v, best.id, a.sum * __expf(a.v - best.v) + b.sum * __expf(b.v - best.v)};
}

__device__ __forceinline__ ArgmaxPart warp_merge_parts(ArgmaxPart p) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const ArgmaxPart other{__shfl_xor_sync(0xffffffffu, p.v, o), __shfl_xor_sync(0xffffffffu, p.id, o),
                           __shfl_xor_sync(0xffffffffu, p.sum, o)};
    p = merge_parts(p, other);
  }
  return p;
}

// Takes element (v, i) into a thread's part; a thread sees its ids in increasing order, so the
// first of equal values stays best.
__device__ __forceinline__ void take_element(ArgmaxPart& p, float v, int i) {
  if (v > p.v) {
    p.sum = p.sum * __expf(p.v - v) + 1.0f;  // exp(-inf) = 0 for the first
    p.v = v;
    p.id = i;
  } else if (v != -INFINITY) {
    p.sum += __expf(v - p.v);
  }
}

__global__ void __launch_bounds__(kArgmaxThreads) argmax_part_kernel(const float* logits, int vocab, ArgmaxPart* parts) {
  __shared__ ArgmaxPart warp_parts[kArgmaxThreads / 32];
  const int row = blockIdx.y, part = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const float* x = logits + static_cast<int64_t>(row) * vocab;
  ArgmaxPart p{-INFINITY, INT_MAX, 0.0f};
  if (vocab % 4 == 0 && reinterpret_cast<uintptr_t>(logits) % 16 == 0) {
    const int quads = vocab / 4, slice = (quads + kArgmaxParts - 1) / kArgmaxParts;
    const int lo = part * slice, hi = min(quads, lo + slice);
    const float4* x4 = reinterpret_cast<const float4*>(x);
    for (int first = lo + threadIdx.x; first < hi; first += kArgmaxUnroll * kArgmaxThreads) {
      float4 v[kArgmaxUnroll];
#pragma unroll
      for (int u = 0; u < kArgmaxUnroll; ++u) {
        const int q = first + u * kArgmaxThreads;
        v[u] = q < hi ? __ldg(x4 + q) : make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
      }
#pragma unroll
      for (int u = 0; u < kArgmaxUnroll; ++u) {
        const int i = 4 * (first + u * kArgmaxThreads);
        take_element(p, v[u].x, i);
        take_element(p, v[u].y, i + 1);
        take_element(p, v[u].z, i + 2);
        take_element(p, v[u].w, i + 3);
      }
    }
  } else {
    const int slice = (vocab + kArgmaxParts - 1) / kArgmaxParts;
    const int lo = part * slice, hi = min(vocab, lo + slice);
    for (int i = lo + threadIdx.x; i < hi; i += kArgmaxThreads) take_element(p, x[i], i);
  }
  p = warp_merge_parts(p);
  if (lane == 0) warp_parts[warp] = p;
  __syncthreads();
  if (warp != 0) return;
  p = warp_merge_parts(lane < kArgmaxThreads / 32 ? warp_parts[lane] : ArgmaxPart{-INFINITY, INT_MAX, 0.0f});
  if (lane == 0) parts[static_cast<int64_t>(row) * kArgmaxParts + part] = p;
}

__global__ void argmax_merge_kernel(const ArgmaxPart* parts, int32_t* ids, float* logprobs) {
  const int row = blockIdx.x, lane = threadIdx.x;  // one warp, lane = part
  const ArgmaxPart p = warp_merge_parts(parts[static_cast<int64_t>(row) * kArgmaxParts + lane]);
  if (lane == 0) {
    ids[row] = p.id;
    logprobs[row] = -logf(p.sum);  // p.v - (p.v + log Σ exp(x - p.v))
  }
}

// k passes, each taking the best element strictly after the previous one in (value desc, id asc).
__global__ void __launch_bounds__(kThreads) top_logprobs_kernel(const float* logits, int vocab, int k, int32_t* ids,
                                                                float* logprobs) {
  __shared__ float sv[32], scratch[32];
  __shared__ int si[32];
  const float* x = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  Best prev{INFINITY, -1}, first{-INFINITY, INT_MAX};
  float norm = 0;
  for (int n = 0; n < k; ++n) {
    Best b{-INFINITY, INT_MAX};
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float v = x[i];
      if (v < prev.v || (v == prev.v && i > prev.id)) b = better(b, Best{v, i});
    }
    b = block_best(b, sv, si);
    if (n == 0) {
      first = b;
      norm = log_normalizer(x, vocab, first.v, scratch);
    }
    if (threadIdx.x == 0) {
      ids[blockIdx.x * k + n] = b.id;
      logprobs[blockIdx.x * k + n] = b.v - norm;
    }
    prev = b;
  }
}

// Largest key K (>= floor) whose predicate "Σ_{key_i >= K} w_i >= need" holds, by bisection
// over the key's bits. w_i = 1 counts elements; w_i = exp(z_i) weighs them.
template <bool kCount>
__device__ uint32_t bisect_key(const float* x, int vocab, float mx, float inv_t, uint32_t floor, float need,
                               float* scratch) {
  uint32_t key = 0;
  for (int bit = 31; bit >= 0; --bit) {
    const uint32_t cand = key | (1u << bit);
    const uint32_t bound = max(cand, floor);
    float s = 0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float z = (x[i] - mx) * inv_t;
      if (float_key(z) >= bound) s += kCount ? 1.0f : __expf(z);
    }
    if (block_sum(s, scratch) >= need) key = cand;
  }
  return max(key, floor);
}

__global__ void __launch_bounds__(kThreads) sample_kernel(const float* logits, int vocab, const SampleRow* params,
                                                          int32_t* ids, float* logprobs) {
  __shared__ float sv[32], scratch[32], prefix[kThreads];
  __shared__ int si[32];
  __shared__ int chosen;
  const SampleRow P = params[blockIdx.x];
  const float* x = logits + static_cast<int64_t>(P.row) * vocab;
  Best b{-INFINITY, INT_MAX};
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) b = better(b, Best{x[i], i});
  b = block_best(b, sv, si);
  const float mx = b.v, inv_t = 1.0f / P.temperature;
  // z = (x - max) / T <= 0; the kept set is {z >= threshold}.
  uint32_t floor = 0;
  if (P.top_k > 0 && P.top_k < vocab) floor = bisect_key<true>(x, vocab, mx, inv_t, 0, static_cast<float>(P.top_k), scratch);
  if (P.top_p < 1.0f) {
    float total = 0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float z = (x[i] - mx) * inv_t;
      if (float_key(z) >= floor) total += __expf(z);
    }
    total = block_sum(total, scratch);
    floor = bisect_key<false>(x, vocab, mx, inv_t, floor, P.top_p * total, scratch);
  }
  if (P.min_p > 0.0f) floor = max(floor, float_key(logf(P.min_p)));
  // Inverse CDF over the kept set in id order: each thread owns a contiguous chunk.
  const int chunk = (vocab + blockDim.x - 1) / blockDim.x;
  const int lo = threadIdx.x * chunk, hi = min(vocab, lo + chunk);
  float mine = 0;
  for (int i = lo; i < hi; ++i) {
    const float z = (x[i] - mx) * inv_t;
    if (float_key(z) >= floor) mine += __expf(z);
  }
  prefix[threadIdx.x] = mine;
  if (threadIdx.x == 0) chosen = -1;
  __syncthreads();
  // Inclusive scan (Hillis-Steele); 10 steps for 1024 threads.
  for (int o = 1; o < blockDim.x; o <<= 1) {
    const float add = threadIdx.x >= o ? prefix[threadIdx.x - o] : 0.0f;
    __syncthreads();
    prefix[threadIdx.x] += add;
    __syncthreads();
  }
  const float total = prefix[blockDim.x - 1];
  const float target = P.u * total;
  const float before = prefix[threadIdx.x] - mine;
  if (mine > 0 && target >= before && target < prefix[threadIdx.x]) {
    float cum = before;
    int pick = -1;
    for (int i = lo; i < hi; ++i) {
      const float z = (x[i] - mx) * inv_t;
      if (float_key(z) < floor) continue;
      pick = i;
      cum += __expf(z);
      if (target < cum) break;
    }
    chosen = pick;
  }
  __syncthreads();
  const int token = chosen >= 0 ? chosen : b.id;  // rounding left the draw past the end: the mode
  const float norm = log_normalizer(x, vocab, mx, scratch);
  if (threadIdx.x == 0) {
    ids[blockIdx.x] = token;
    logprobs[blockIdx.x] = x[token] - norm;
  }
}

}  // namespace

size_t argmax_scratch_bytes(int rows) { return static_cast<size_t>(rows) * kArgmaxParts * sizeof(ArgmaxPart); }

void argmax_logprob(const float* logits, int rows, int vocab, int32_t* ids, float* logprobs, void* scratch,
                    cudaStream_t stream) {
  if (rows == 0) return;
  auto* parts = static_cast<ArgmaxPart*>(scratch);
  argmax_part_kernel<<<dim3(kArgmaxParts, rows), kArgmaxThreads, 0, stream>>>(logits, vocab, parts);
  SY_CUDA_CHECK_LAUNCH(argmax_part_kernel);
  argmax_merge_kernel<<<rows, 32, 0, stream>>>(parts, ids, logprobs);
  SY_CUDA_CHECK_LAUNCH(argmax_merge_kernel);
}

void top_logprobs(const float* logits, int rows, int vocab, int k, int32_t* ids, float* logprobs, cudaStream_t stream) {
  if (rows == 0 || k == 0) return;
  top_logprobs_kernel<<<rows, kThreads, 0, stream>>>(logits, vocab, k, ids, logprobs);
  SY_CUDA_CHECK_LAUNCH(top_logprobs_kernel);
}

void sample_rows(const float* logits, int rows, int vocab, const SampleRow* params, int32_t* ids, float* logprobs,
                 cudaStream_t stream) {
  if (rows == 0) return;
  sample_kernel<<<rows, kThreads, 0, stream>>>(logits, vocab, params, ids, logprobs);
  SY_CUDA_CHECK_LAUNCH(sample_kernel);
}

}  // namespace sy::cuda
