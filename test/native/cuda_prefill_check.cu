// A by-hand check and timing of the prefill attention kernels on a GPU host (vitest's CUDA
// tests reach head_dim 128 only through the Qwen3-0.6B-shaped model): on random q and paged
// K/V, the register-resident kernel (paged_attention_prefill) and the first WMMA kernel
// (paged_attention_prefill_wmma) against a plain fp32 kernel (one block per query row, exact
// softmax), for head_dim 16..128, GQA groups 1..4, bf16 and fp16, chunked prefill (a cached
// prefix) and several sequences per launch. Outputs are poisoned with NaN first, so a row not
// written fails. Then the time of both kernels on 2048-token prompts (Qwen3-0.6B's attention:
// 16 query heads, 8 KV heads, head_dim 128), in TFLOP/s (4 * head_dim flops per query row and
// key it attends to). Exit status 0 when every case passed.
//
//   nvcc -std=c++17 -O3 -arch=sm_90a -DSWITCHYARD_CUDA_WGMMA=1 -Inative/src test/native/cuda_prefill_check.cu \
//     native/src/kernels/cuda/{prefill_attention.cu,prefill_attention_pingpong.cu,prefill_attention_wmma.cu,cuda_check.cpp,dependent_launch.cpp} -o prefill_check
//
// The new kernel is the one the engine would run: v7 (pingpong128) for head_dim 128 on an H100 or
// H200, v4 or v5 (mma.sync) by launch size elsewhere. SWITCHYARD_CUDA_PREFILL=mma16, mma32, wgmma
// or pingpong64 checks and times v4 (one 16-row group a warp), v5, v6 or v7 with 64-key tiles
// instead. Each case prints a hash of the new kernel's output bits: v4, v5, v6 and pingpong64 must
// print the same ones (pingpong128 sums its softmax over 128 keys a step: other bits).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/kernels.h"

using namespace sy::cuda;

namespace {

template <typename T>
T to_t(float x);
template <>
__nv_bfloat16 to_t<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <>
__half to_t<__half>(float x) { return __float2half(x); }

__device__ float dev_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ float dev_f32(__half v) { return __half2float(v); }

// One block per (token, head): scores in shared memory, exact softmax, fp32 throughout.
template <typename T>
__global__ void reference_kernel(const T* q, const int32_t* positions, const int32_t* token_seq, PagedKv<T> kv,
                                 int num_heads, float* out) {
  extern __shared__ float scores[];
  const int token = blockIdx.x, h = blockIdx.y, HD = kv.head_dim;
  const int g = h / (num_heads / kv.num_kv_heads);
  const int pos = positions[token];
  const int32_t* table = kv.block_tables + static_cast<int64_t>(token_seq[token]) * kv.table_stride;
  const T* qrow = q + (static_cast<int64_t>(token) * num_heads + h) * HD;
  const float scale = rsqrtf(static_cast<float>(HD));
  for (int j = threadIdx.x; j <= pos; j += blockDim.x) {
    const int64_t slot = static_cast<int64_t>(table[j / kv.block_size]) * kv.block_size + j % kv.block_size;
    const T* k = kv.k + (slot * kv.num_kv_heads + g) * HD;
    float dot = 0;
    for (int d = 0; d < HD; ++d) dot += dev_f32(qrow[d]) * dev_f32(k[d]);
    scores[j] = dot * scale;
  }
  __syncthreads();
  __shared__ float m_shared, l_shared;
  if (threadIdx.x == 0) {
    float m = -INFINITY, l = 0;
    for (int j = 0; j <= pos; ++j) m = fmaxf(m, scores[j]);
    for (int j = 0; j <= pos; ++j) l += expf(scores[j] - m);
    m_shared = m;
    l_shared = l;
  }
  __syncthreads();
  for (int d = threadIdx.x; d < HD; d += blockDim.x) {
    float acc = 0;
    for (int j = 0; j <= pos; ++j) {
      const int64_t slot = static_cast<int64_t>(table[j / kv.block_size]) * kv.block_size + j % kv.block_size;
      acc += expf(scores[j] - m_shared) * dev_f32(kv.v[(slot * kv.num_kv_heads + g) * HD + d]);
    }
    out[(static_cast<int64_t>(token) * num_heads + h) * HD + d] = acc / l_shared;
  }
}

struct Case {
  const char* name;
  int head_dim, heads, kv_heads;
  std::vector<std::pair<int, int>> seqs;  // (cached prefix tokens, new tokens)
  bool fp16 = false;
};

template <typename T>
struct Problem {
  int tokens = 0, num_tiles = 0, num_wmma_tiles = 0, num_heads = 0;
  PagedKv<T> kv{};
  T *q = nullptr, *k = nullptr, *v = nullptr;
  int32_t *tiles = nullptr, *wmma_tiles = nullptr, *positions = nullptr, *token_seq = nullptr, *tables = nullptr;
  std::vector<int32_t> host_positions;

  Problem(const Case& c, std::mt19937& rng) {
    num_heads = c.heads;
    const int bs = 16, group = c.heads / c.kv_heads;
    int max_len = 0;
    for (auto [pre, n] : c.seqs) max_len = std::max(max_len, pre + n);
    const int stride = (max_len + bs - 1) / bs;
    const int num_seqs = static_cast<int>(c.seqs.size());
    const int num_blocks = num_seqs * stride;
    std::vector<int32_t> table(num_blocks);
    for (int i = 0; i < num_blocks; ++i) table[i] = i;
    std::shuffle(table.begin(), table.end(), rng);  // blocks scattered over the cache
    std::vector<int32_t> tile_list, wmma_list, seq_of;
    const int tile_tokens = prefill_tile_tokens(group, c.head_dim), wmma_tokens = 64 / group;  // v1: 64 rows a tile
    for (int s = 0; s < num_seqs; ++s) {
      auto [pre, n] = c.seqs[s];
      for (int t = 0; t < n; t += tile_tokens) {
        tile_list.insert(tile_list.end(), {s, tokens + t, std::min(tile_tokens, n - t)});
      }
      for (int t = 0; t < n; t += wmma_tokens) {
        wmma_list.insert(wmma_list.end(), {s, tokens + t, std::min(wmma_tokens, n - t)});
      }
      for (int t = 0; t < n; ++t) {
        host_positions.push_back(pre + t);
        seq_of.push_back(s);
      }
      tokens += n;
    }
    num_tiles = static_cast<int>(tile_list.size() / 3);
    num_wmma_tiles = static_cast<int>(wmma_list.size() / 3);
    order_prefill_tiles(tile_list.data(), num_tiles, host_positions.data());
    order_prefill_tiles(wmma_list.data(), num_wmma_tiles, host_positions.data());
    std::normal_distribution<float> normal(0.0f, 1.0f);
    auto random_t = [&](size_t count, float sd) {
      std::vector<T> h(count);
      for (auto& x : h) x = to_t<T>(normal(rng) * sd);
      return h;
    };
    // Q and K with sd 1.5 make some scores large (|s| up to ~10 after scaling): a peaked softmax.
    auto hq = random_t(static_cast<size_t>(tokens) * c.heads * c.head_dim, 1.5f);
    const size_t cache = static_cast<size_t>(num_blocks) * bs * c.kv_heads * c.head_dim;
    auto hk = random_t(cache, 1.5f), hv = random_t(cache, 1.0f);
    SY_CUDA_CHECK(cudaMalloc(&q, hq.size() * sizeof(T)));
    SY_CUDA_CHECK(cudaMalloc(&k, cache * sizeof(T)));
    SY_CUDA_CHECK(cudaMalloc(&v, cache * sizeof(T)));
    SY_CUDA_CHECK(cudaMalloc(&tiles, tile_list.size() * 4));
    SY_CUDA_CHECK(cudaMalloc(&wmma_tiles, wmma_list.size() * 4));
    SY_CUDA_CHECK(cudaMalloc(&positions, host_positions.size() * 4));
    SY_CUDA_CHECK(cudaMalloc(&token_seq, seq_of.size() * 4));
    SY_CUDA_CHECK(cudaMalloc(&tables, table.size() * 4));
    SY_CUDA_CHECK(cudaMemcpy(q, hq.data(), hq.size() * sizeof(T), cudaMemcpyHostToDevice));
    SY_CUDA_CHECK(cudaMemcpy(k, hk.data(), cache * sizeof(T), cudaMemcpyHostToDevice));
    SY_CUDA_CHECK(cudaMemcpy(v, hv.data(), cache * sizeof(T), cudaMemcpyHostToDevice));
    SY_CUDA_CHECK(cudaMemcpy(tiles, tile_list.data(), tile_list.size() * 4, cudaMemcpyHostToDevice));
    SY_CUDA_CHECK(cudaMemcpy(wmma_tiles, wmma_list.data(), wmma_list.size() * 4, cudaMemcpyHostToDevice));
    SY_CUDA_CHECK(cudaMemcpy(positions, host_positions.data(), host_positions.size() * 4, cudaMemcpyHostToDevice));
    SY_CUDA_CHECK(cudaMemcpy(token_seq, seq_of.data(), seq_of.size() * 4, cudaMemcpyHostToDevice));
    SY_CUDA_CHECK(cudaMemcpy(tables, table.data(), table.size() * 4, cudaMemcpyHostToDevice));
    kv = PagedKv<T>{k, v, tables, stride, bs, c.kv_heads, c.head_dim};
  }
  ~Problem() {
    for (void* p : {static_cast<void*>(q), static_cast<void*>(k), static_cast<void*>(v), static_cast<void*>(tiles),
                    static_cast<void*>(wmma_tiles), static_cast<void*>(positions), static_cast<void*>(token_seq), static_cast<void*>(tables)}) {
      cudaFree(p);
    }
  }
  size_t out_floats() const { return static_cast<size_t>(tokens) * num_heads * kv.head_dim; }
  double flops() const {
    double keys = 0;
    for (int p : host_positions) keys += p + 1;
    return 4.0 * keys * num_heads * kv.head_dim;
  }
};

/** FNV-1a of the values' bits. */
uint32_t bits_hash(const std::vector<float>& a) {
  uint32_t h = 2166136261u;
  for (float x : a) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    for (int b = 0; b < 4; ++b) h = (h ^ ((u >> (8 * b)) & 0xffu)) * 16777619u;
  }
  return h;
}

/** max |a - ref| / max |ref|, or infinity where a holds a NaN. */
double relative_error(const std::vector<float>& a, const std::vector<float>& ref) {
  double worst = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    worst = std::max(worst, static_cast<double>(std::fabs(a[i] - ref[i])));
    scale = std::max(scale, static_cast<double>(std::fabs(ref[i])));
  }
  return worst / scale;
}

template <typename T, typename F>
std::vector<float> run(const Problem<T>& p, F&& launch) {
  float* out = nullptr;
  SY_CUDA_CHECK(cudaMalloc(&out, p.out_floats() * 4));
  SY_CUDA_CHECK(cudaMemset(out, 0xff, p.out_floats() * 4));  // NaN
  launch(out);
  SY_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> h(p.out_floats());
  SY_CUDA_CHECK(cudaMemcpy(h.data(), out, h.size() * 4, cudaMemcpyDeviceToHost));
  cudaFree(out);
  return h;
}

template <typename T>
bool check_case(const Case& c, std::mt19937& rng) {
  Problem<T> p(c, rng);
  int max_pos = 0;
  for (int x : p.host_positions) max_pos = std::max(max_pos, x);
  const auto ref = run(p, [&](float* out) {
    reference_kernel<T><<<dim3(p.tokens, p.num_heads), 128, (max_pos + 1) * 4>>>(p.q, p.positions, p.token_seq, p.kv,
                                                                                p.num_heads, out);
  });
  const auto fast = run(p, [&](float* out) {
    paged_attention_prefill<T>(p.q, p.tiles, p.num_tiles, p.positions, p.kv, p.num_heads, AttentionOut<T>{out}, nullptr);
  });
  const auto wmma = run(p, [&](float* out) {
    paged_attention_prefill_wmma<T>(p.q, p.wmma_tiles, p.num_wmma_tiles, p.positions, p.kv, p.num_heads, AttentionOut<T>{out}, nullptr);
  });
  const double e_fast = relative_error(fast, ref), e_wmma = relative_error(wmma, ref);
  // Both round P to 16 bits before P V (errors ~1e-3 of the largest output); the new kernel
  // may differ from v1 by rounding, not more.
  const bool ok = e_fast <= std::max(2.0 * e_wmma, 2e-3) && e_wmma <= 2e-3;
  std::printf("%-52s hd %3d  heads %2d/%d  %s  tokens %5d  error vs fp32: new %.2e, v1 %.2e  bits %08x  %s\n", c.name,
              c.head_dim, c.heads, c.kv_heads, c.fp16 ? "fp16" : "bf16", p.tokens, e_fast, e_wmma, bits_hash(fast),
              ok ? "ok" : "FAILED");
  return ok;
}

template <typename F>
double median_ms(F&& launch, int iterations) {
  cudaEvent_t a, b;
  SY_CUDA_CHECK(cudaEventCreate(&a));
  SY_CUDA_CHECK(cudaEventCreate(&b));
  launch();
  SY_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> ms(iterations);
  for (auto& x : ms) {
    SY_CUDA_CHECK(cudaEventRecord(a));
    launch();
    SY_CUDA_CHECK(cudaEventRecord(b));
    SY_CUDA_CHECK(cudaEventSynchronize(b));
    SY_CUDA_CHECK(cudaEventElapsedTime(&x, a, b));
  }
  std::sort(ms.begin(), ms.end());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms[ms.size() / 2];
}

void time_case(const Case& c, std::mt19937& rng) {
  Problem<__nv_bfloat16> p(c, rng);
  float* out = nullptr;
  SY_CUDA_CHECK(cudaMalloc(&out, p.out_floats() * 4));
  const double fast = median_ms([&] { paged_attention_prefill(p.q, p.tiles, p.num_tiles, p.positions, p.kv, p.num_heads, AttentionOut<__nv_bfloat16>{out}, nullptr); }, 20);
  const double wmma = median_ms([&] { paged_attention_prefill_wmma(p.q, p.wmma_tiles, p.num_wmma_tiles, p.positions, p.kv, p.num_heads, AttentionOut<__nv_bfloat16>{out}, nullptr); }, 10);
  cudaFree(out);
  std::printf("timing %-45s %6.3f GFLOP: new %7.3f ms = %5.0f TFLOP/s, v1 %7.3f ms = %5.0f TFLOP/s (%.1fx)\n", c.name,
              p.flops() / 1e9, fast, p.flops() / fast / 1e9, wmma, p.flops() / wmma / 1e9, wmma / fast);
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  const std::vector<Case> cases = {
      {"one 2048-token prompt (Qwen3-0.6B attention)", 128, 16, 8, {{0, 2048}}},
      {"chunk of 200 after 300 cached tokens", 128, 16, 8, {{300, 200}}},
      {"three sequences, odd lengths, prefix hits", 128, 16, 8, {{0, 37}, {64, 100}, {17, 129}}},
      {"two sequences past a tile of keys, fp16", 128, 16, 8, {{0, 700}, {130, 257}}, true},
      {"group 4 at head_dim 128 (Llama-3-8B's heads), a prefix hit", 128, 32, 8, {{0, 300}, {100, 150}}},
      {"group 4, fp16", 64, 8, 2, {{0, 130}, {5, 70}}, true},
      {"group 1", 64, 4, 4, {{0, 300}}},
      {"tiny Qwen3 shape (group 3, 21-token tiles)", 16, 6, 2, {{0, 300}, {200, 100}, {0, 5}}},
      {"tiny Llama shape, fp16", 16, 6, 2, {{0, 128}, {0, 27}}, true},
      {"head_dim 32, group 2", 32, 4, 2, {{0, 100}, {31, 33}}},
  };
  bool ok = true;
  try {
    for (const Case& c : cases) ok = (c.fp16 ? check_case<__half>(c, rng) : check_case<__nv_bfloat16>(c, rng)) && ok;
    time_case({"one 2048-token prompt", 128, 16, 8, {{0, 2048}}}, rng);
    time_case({"four 2048-token prompts", 128, 16, 8, {{0, 2048}, {0, 2048}, {0, 2048}, {0, 2048}}}, rng);
    time_case({"one 4096-token prompt", 128, 16, 8, {{0, 4096}}}, rng);
  } catch (const std::exception& e) {
    std::printf("error: %s\n", e.what());
    return 2;
  }
  std::printf("%s (new kernel: %s)\n", ok ? "PREFILL CHECK PASSED" : "PREFILL CHECK FAILED", prefill_kernel_name(128));
  return ok ? 0 : 1;
}
