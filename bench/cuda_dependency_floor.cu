// What the chain of dependent steps in a batch-1 decode costs on this GPU by itself
// (bench/CUDA_NOTES.md, "Session 20"). A batch-1 layer of the Qwen3-0.6B shape is five steps that
// each read the whole output of the one before (RMSNorm + qkv, attention, o, RMSNorm + gate_up,
// down), so in that structure 140 such steps bound a decode step from below, however fast the
// weights stream beside them.
// Each step here is a skeleton of the engine's: read the previous step's vector (n floats, from
// L2: other SMs wrote it), reduce it across the block as RMSNorm does, and write this block's part
// of the next vector. Two kinds of step:
//   bare   no weights: the block writes 8 scaled elements;
//   dots   the block also makes `--rows` rows (8, 32 or 48) of a projection over the n inputs
//          (32 rows of 1024: 64 KB of bf16 weights, an SM's share of qkv on 132 SMs; 48 x 1024 is
//          gate_up's, 8 x 2048 o's, 8 x 3072 down's) from weights already in shared memory:
//          what a step costs when every weight byte arrived before its input (the best a
//          persistent "megakernel" can do), or, for kernels, came from L2 before the wait;
// and two ways to chain them, as the engine does:
//   kernels     one kernel a step, captured in a CUDA graph: plain launches, and programmatic
//               dependent launches (PDL: each kernel lets the next start, which waits in
//               griddepcontrol.wait), at one block an SM, and bare steps also at three (as
//               gemv runs);
//   persistent  one cooperative kernel, one block an SM, the steps separated by the engine's own
//               grid barrier (native/src/kernels/cuda/grid_barrier.cuh).
//
//   nvcc -std=c++17 -O3 -arch=sm_90a -I native/src bench/cuda_dependency_floor.cu -o /tmp/dependency_floor
//   /tmp/dependency_floor [--steps 140] [--n 1024] [--rows 32]
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cuda_bench.cuh"
#include "kernels/cuda/cp_async.cuh"
#include "kernels/cuda/grid_barrier.cuh"

using namespace bench;  // NOLINT: the helpers every benchmark here uses

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kSlice = 8;  // elements of the next vector a bare step's block writes

/** Shared memory of a step whose blocks make `rows` rows each (0: bare): weights, staged input, warps' sums. */
size_t step_smem(int rows, int n) {
  return static_cast<size_t>(rows) * n * sizeof(__nv_bfloat16) + n * sizeof(float) + kWarps * sizeof(float);
}

// Copies this block's weights (rows x n bf16) into shared memory in the background.
__device__ __forceinline__ void copy_weights(const __nv_bfloat16* w, int rows, int n, unsigned char* smem) {
  const __nv_bfloat16* mine = w + static_cast<size_t>(blockIdx.x) * rows * n;
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  for (int i = threadIdx.x * 8; i < rows * n; i += kThreads * 8) sy::cuda::cp_async_16(base + i * 2, mine + i, true);
  sy::cuda::cp_async_commit();
}

// One step, after its input is ready: stage `in`, sum its squares across the block, then write
// either this block's 8 scaled elements (bare, kRowsPerWarp 0) or its 8 x kRowsPerWarp rows of
// W·(in · scale) (dots; each warp makes its rows together, so an input element is read once for
// all of them, and lanes read consecutive 16-byte pieces of x and 8-byte pieces of each row: no
// bank conflicts). Outputs stay near 1 (the weights are 1/n), so hundreds of steps neither vanish
// nor overflow. In a bare step, blocks past the vector's slices only read and reduce; they keep
// the grid's shape.
template <int kRowsPerWarp>
__device__ __forceinline__ void step_body(const float* in, float* out, int n, unsigned char* smem) {
  constexpr bool kDots = kRowsPerWarp > 0;
  constexpr int kRows = kRowsPerWarp * kWarps;
  const __nv_bfloat16* weights = reinterpret_cast<const __nv_bfloat16*>(smem);
  float* x = reinterpret_cast<float*>(smem + static_cast<size_t>(kRows) * n * 2);
  float* warp_sums = x + n;
  float ss = 0.f;
#pragma unroll 4
  for (int i = threadIdx.x * 4; i < n; i += kThreads * 4) {
    const float4 v = __ldcg(reinterpret_cast<const float4*>(in + i));
    *reinterpret_cast<float4*>(x + i) = v;
    ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
  }
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = ss;
  if (kDots) sy::cuda::cp_async_wait<0>();  // this thread's weight copies (a no-op once landed)
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < kWarps; ++w) total += warp_sums[w];
  const float scale = rsqrtf(total / n + 1e-6f);
  if (!kDots) {
    if (static_cast<int>(blockIdx.x) < n / kSlice && threadIdx.x < kSlice) {
      const int i = blockIdx.x * kSlice + threadIdx.x;
      out[i] = 0.5f * (x[i] * scale) + 0.5f;
    }
  } else {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float acc[kDots ? kRowsPerWarp : 1] = {};
#pragma unroll 8
    for (int k = lane * 4; k < n; k += 32 * 4) {
      const float4 xv = *reinterpret_cast<const float4*>(x + k);
#pragma unroll
      for (int j = 0; j < kRowsPerWarp; ++j) {
        const uint2 packed = *reinterpret_cast<const uint2*>(weights + (warp + j * kWarps) * n + k);
        const float2 w01 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&packed.x));
        const float2 w23 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&packed.y));
        acc[j] += w01.x * xv.x + w01.y * xv.y + w23.x * xv.z + w23.y * xv.w;
      }
    }
#pragma unroll
    for (int j = 0; j < kRowsPerWarp; ++j) {
      float v = acc[j];
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane == 0) out[blockIdx.x * kRows + warp + j * kWarps] = v * scale;
    }
  }
  __syncthreads();  // x and warp_sums are reused by the next step of the persistent kernel
}

template <int kRowsPerWarp>
__global__ void __launch_bounds__(kThreads) step_kernel(const float* in, float* out, int n, const __nv_bfloat16* w) {
  extern __shared__ __align__(16) unsigned char smem[];
  if (kRowsPerWarp > 0) copy_weights(w, kRowsPerWarp * kWarps, n, smem);  // reads nothing the earlier kernels write
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // Harmless without the launch attribute: then the launch already waited for the previous kernel.
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
  step_body<kRowsPerWarp>(in, out, n, smem);
}

template <int kRowsPerWarp>
__global__ void __launch_bounds__(kThreads)
    persistent_steps(float* a, float* b, int n, const __nv_bfloat16* w, int steps, unsigned* barrier) {
  extern __shared__ __align__(16) unsigned char smem[];
  if (kRowsPerWarp > 0) copy_weights(w, kRowsPerWarp * kWarps, n, smem);  // once: every step finds its weights on chip
  for (int s = 0; s < steps; ++s) {
    const float* in = (s & 1) ? b : a;
    float* out = (s & 1) ? a : b;
    if (s > 0) sy::cuda::grid_wait(barrier, sy::cuda::kGridBarrierMaxLanes, s);
    step_body<kRowsPerWarp>(in, out, n, smem);
    sy::cuda::grid_arrive(barrier, sy::cuda::kGridBarrierMaxLanes);
  }
  sy::cuda::grid_wait(barrier, sy::cuda::kGridBarrierMaxLanes, steps);
  sy::cuda::grid_barrier_reset(barrier);
}

/** A graph of `steps` step kernels on `grid` blocks, each a programmatic dependent of the one before or not. */
template <int kRowsPerWarp>
cudaGraphExec_t capture_chain(cudaStream_t stream, float* a, float* b, int n, const __nv_bfloat16* w, int steps,
                              int grid, bool pdl) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cuda_ok(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "begin capture");
  for (int s = 0; s < steps; ++s) {
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(grid);
    config.blockDim = dim3(kThreads);
    config.dynamicSmemBytes = step_smem(kRowsPerWarp * kWarps, n);
    config.stream = stream;
    config.attrs = &attribute;
    config.numAttrs = pdl ? 1 : 0;
    const float* in = (s & 1) ? b : a;
    float* out = (s & 1) ? a : b;
    cuda_ok(cudaLaunchKernelEx(&config, step_kernel<kRowsPerWarp>, in, out, n, w), "step launch");
  }
  cudaGraph_t graph;
  cuda_ok(cudaStreamEndCapture(stream, &graph), "end capture");
  cudaGraphExec_t exec;
  cuda_ok(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
  cudaGraphDestroy(graph);
  return exec;
}

struct Buffers {
  float *a, *b;
  __nv_bfloat16* w;
  unsigned* barrier;
};

template <int kRowsPerWarp>
void measure(cudaStream_t stream, const Buffers& buf, int n, int steps, int sms) {
  const int rows = kRowsPerWarp * kWarps;
  char kind[32];
  if (rows > 0) std::snprintf(kind, sizeof kind, "dots, %d rows a block", rows);
  else std::snprintf(kind, sizeof kind, "bare");
  const size_t smem = step_smem(rows, n);
  cuda_ok(cudaFuncSetAttribute(step_kernel<kRowsPerWarp>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), "smem");
  cuda_ok(cudaFuncSetAttribute(persistent_steps<kRowsPerWarp>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
          "smem");
  const int reps = 200;
  for (const bool pdl : {false, true}) {
    // Bare steps also at gemv's three blocks an SM; a dots step's grid is one block an SM, as in
    // a persistent kernel (more blocks would each bring rows of their own).
    for (const int per_sm : {1, 3}) {
      if (rows > 0 && per_sm > 1) continue;
      const int grid = per_sm * sms;
      cudaGraphExec_t exec = capture_chain<kRowsPerWarp>(stream, buf.a, buf.b, n, buf.w, steps, grid, pdl);
      const float ms = time_ms(stream, [&] { cuda_ok(cudaGraphLaunch(exec, stream), "graph launch"); }, reps);
      std::printf("| %s | kernels in a graph, %s | %d | %.1f | %.2f |\n", kind, pdl ? "PDL" : "plain", grid, ms * 1e3,
                  ms * 1e3 / steps);
      cudaGraphExecDestroy(exec);
    }
  }
  cudaLaunchAttribute cooperative{};
  cooperative.id = cudaLaunchAttributeCooperative;
  cooperative.val.cooperative = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(sms);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = &cooperative;
  config.numAttrs = 1;
  auto run = [&](int count) {
    cuda_ok(cudaLaunchKernelEx(&config, persistent_steps<kRowsPerWarp>, buf.a, buf.b, n,
                               static_cast<const __nv_bfloat16*>(buf.w), count, buf.barrier),
            "persistent");
  };
  const float ms = time_ms(stream, [&] { run(steps); }, reps);
  // The same kernel with one step (no barrier between steps) takes the launch, the start and, for
  // dots, the weights' copy: what the per-step figure leaves out.
  const float one = time_ms(stream, [&] { run(1); }, reps);
  std::printf("| %s | persistent, grid barrier (one step alone: %.1f us) | %d | %.1f | %.2f |\n", kind, one * 1e3, sms,
              ms * 1e3, (ms - one) * 1e3 / (steps - 1));
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 140, n = 1024, rows = 32;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--steps")) steps = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--n")) n = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--rows")) rows = std::atoi(argv[i + 1]);
  }
  if (steps < 2 || n % (kThreads * 4) != 0 || (rows != 8 && rows != 32 && rows != 48)) {
    std::fprintf(stderr, "usage: dependency_floor [--steps >=2] [--n multiple of %d] [--rows 8|32|48]\n",
                 kThreads * 4);
    return 2;
  }
  cudaDeviceProp prop;
  cuda_ok(cudaGetDeviceProperties(&prop, 0), "device properties");
  const int sms = prop.multiProcessorCount;
  cudaStream_t stream;
  cuda_ok(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  // Dots steps write `rows` elements a block, of which the next step reads the first n. Where a
  // step writes fewer than n (o's and down's 8 rows on 132 SMs), the rest of the input keeps older
  // values: the timing is the same, since every step still waits for the whole previous one.
  const size_t elements = std::max<size_t>(n, static_cast<size_t>(sms) * rows);
  const size_t weights = static_cast<size_t>(sms) * rows * n;
  Buffers buf{};
  cuda_ok(cudaMalloc(&buf.a, elements * sizeof(float)), "malloc");
  cuda_ok(cudaMalloc(&buf.b, elements * sizeof(float)), "malloc");
  cuda_ok(cudaMalloc(&buf.w, weights * sizeof(__nv_bfloat16)), "malloc");
  cuda_ok(cudaMalloc(&buf.barrier, sy::cuda::grid_barrier_words() * sizeof(unsigned)), "malloc");
  cuda_ok(cudaMemset(buf.barrier, 0, sy::cuda::grid_barrier_words() * sizeof(unsigned)), "memset");
  const std::vector<float> ones(elements, 1.f);
  cuda_ok(cudaMemcpy(buf.a, ones.data(), elements * sizeof(float), cudaMemcpyHostToDevice), "copy");
  cuda_ok(cudaMemcpy(buf.b, ones.data(), elements * sizeof(float), cudaMemcpyHostToDevice), "copy");
  const std::vector<__nv_bfloat16> w(weights, __float2bfloat16(1.f / n));
  cuda_ok(cudaMemcpy(buf.w, w.data(), weights * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice), "copy");

  std::printf("%s, %d SMs; %d dependent steps a run, input vectors of %d floats\n\n", prop.name, sms, steps, n);
  std::printf("| step | chain | blocks | us a run | us a step |\n| --- | --- | ---: | ---: | ---: |\n");
  measure<0>(stream, buf, n, steps, sms);
  if (rows == 8) measure<1>(stream, buf, n, steps, sms);
  if (rows == 32) measure<4>(stream, buf, n, steps, sms);
  if (rows == 48) measure<6>(stream, buf, n, steps, sms);
  cuda_ok(cudaGetLastError(), "last error");
  return 0;
}
