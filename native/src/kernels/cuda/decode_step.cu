// A batch-1 decode step as one persistent kernel: one block per SM runs every layer's five phases
// (qkv with the RMSNorm prologue; attention with q/k norm, RoPE and the KV store; o; gate_up with
// the RMSNorm prologue; down with the SiLU·up prologue), separated by grid-wide barriers
// (grid_barrier.cuh) instead of kernel boundaries. Kernel per op, a batch-1 step was ~140
// kernels of ~6 µs each against ~1-2 µs of their bytes: each kernel's start, prologue and tail
// were on the critical path (bench/CUDA_NOTES.md). Here each block owns the same slice of output
// rows of every projection, and the copy engine (bulk_copy.cuh) moves its slice of the next
// projection's weights into shared memory while the current phase and its barrier run, so after a
// barrier a phase only stages its input row, multiplies from shared memory and stores.
//
// The arithmetic is the kernel-per-op path's, in the same order: the gemv prologue
// (gemv_prologue.cuh), each row summed as gemv sums it (gemv_warps_per_row partial sums of 8-wide
// fused dots), and the decode attention block itself (decode_attention.cuh) with the same splits.
// So the step gives the same bits as kernel per op on that block kernel
// (SWITCHYARD_CUDA_DECODE_WARPS=off), which test/native/cuda.test.ts checks.
//
// Off by default (SWITCHYARD_CUDA_PERSISTENT=on turns it on; qwen3_cuda.cpp): on the H200 it is
// at parity with kernel per op, 0.958 vs 0.961 ms a batch-1 step in the same run. Traced
// (DecodeStep::trace), a layer takes ~30 µs: the five barriers 0.7-1.9 µs each plus 0.2-2.2 µs
// between the first and last block leaving them, staging an input row 0.9-1.9 µs (an L2 round
// trip to what other SMs just wrote), the dot products 1.2-1.7 µs, the attention ~9 µs.
// bench/CUDA_NOTES.md, "Session 4", has the steps that led here and what to try next.
#include <algorithm>
#include <string>

#include "kernels/cuda/bulk_copy.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode_attention.cuh"
#include "kernels/cuda/fused_shapes.cuh"
#include "kernels/cuda/gemv_prologue.cuh"
#include "kernels/cuda/grid_barrier.cuh"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/smem_dot.cuh"

namespace sy::cuda {
namespace {

constexpr int kThreads = 256;
static_assert(kThreads == kGemvThreads && kThreads == kDecodeThreads, "one block shape for every phase");
static_assert(grid_barrier_words() == decode_step_barrier_words(), "kernels.h sizes the barrier");
constexpr int kProjections = 4;  // per layer: qkv, o, gate_up, down

/** What the host works out once per shape: gemv's partial-sum counts and the shared-memory carve-up. */
struct StepPlan {
  int ws[kProjections];  // gemv_warps_per_row of each projection
  int buf_bytes[2];      // weight buffers: qkv and gate_up use the first, o and down the second
  int norm_at;           // where in the first buffer the RMSNorm weights of qkv's and gate_up's input go
  int layers_at;         // the layer table's copy
  int xs_bytes;          // the staged input row
};

struct ProjectionShape {
  int out, in;
};

/** The shape of a layer's projection j (qkv, o, gate_up, down): the one place the host plan and the kernel read it. */
template <typename T>
__host__ __device__ __forceinline__ ProjectionShape projection_shape(const DecodeStep<T>& p, int j) {
  const int qdim = p.num_heads * p.head_dim, qkvdim = qdim + 2 * p.num_kv_heads * p.head_dim;
  switch (j) {
    case 0: return {qkvdim, p.hidden};
    case 1: return {p.hidden, qdim};
    case 2: return {2 * p.inter, p.hidden};
    default: return {p.hidden, p.inter};
  }
}

/** The weights of projection q of the step (layer q / 4); `layers` is the block's copy of p.layers. */
template <typename T>
__device__ __forceinline__ const T* projection_weights(const DecodeLayer<T>* layers, int q) {
  const DecodeLayer<T>& L = layers[q / kProjections];
  switch (q % kProjections) {
    case 0: return L.qkv;
    case 1: return L.o;
    case 2: return L.gate_up;
    default: return L.down;
  }
}

/** First output row of block b's slice (the slices of one projection differ by at most one row). */
__device__ __forceinline__ int slice_begin(int out, int b) {
  return static_cast<int>(static_cast<unsigned>(out) * b / gridDim.x);  // out * grid < 2^32 (decode_step_prepare)
}

__device__ __forceinline__ void swap_pointers(float*& a, float*& b) {
  float* t = a;
  a = b;
  b = t;
}

// The kernel's mbarriers (one per weight buffer) and reduction scratch, at namespace scope so
// project_slice, which is not inlined, reaches them.
__shared__ __align__(8) uint64_t weights_loaded[2];
__shared__ float block_scratch[32];

/** Thread 0 records %globaltimer at trace[point] when tracing (DecodeStep::trace). */
__device__ __forceinline__ void trace_point(unsigned long long* trace, int point) {
  if (trace && threadIdx.x == 0) {
    unsigned long long ns;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(ns));
    trace[point] = ns;
  }
}

/**
 * The block's slice of projection q: wait for the slice's weights (buffer q % 2 at byte
 * `weights_at` of the dynamic shared memory; with them the norm weights, which the input's
 * RMSNorm reads from there), stage the input row, y[rows] = w[rows] · x. Every
 * weight-bearing phase calls this one copy of the code (not inlined): the kernel builds in
 * 24 s instead of 61, at the same speed (inlined per phase it was thought to miss the
 * instruction cache; measured, it made no difference).
 */
template <typename T>
__device__ __noinline__ void project_slice(const GemvInput input, int q, int out, int in, int ws, int weights_at,
                                           int xs_at, float* y, unsigned long long* trace) {
  extern __shared__ __align__(128) unsigned char smem[];
  float* const xs = reinterpret_cast<float*>(smem + xs_at);
  const T* const w = reinterpret_cast<const T*>(smem + weights_at);
  mbarrier_wait(&weights_loaded[q & 1], (q >> 1) & 1);  // the (q / 2)-th use of the buffer
  trace_point(trace, 1);
  stage_gemv_input<T, 1>(input, in, xs, block_scratch);
  trace_point(trace, 2);
  const int rb = slice_begin(out, blockIdx.x), re = slice_begin(out, blockIdx.x + 1);
  const int rows_at_once = rows_per_warp(re - rb);
  switch (ws) {
    case 1: return dot_slice<T, 1>(rows_at_once, w, xs, in, rb, re, y);
    case 2: return dot_slice<T, 2>(rows_at_once, w, xs, in, rb, re, y);
    case 4: return dot_slice<T, 4>(rows_at_once, w, xs, in, rb, re, y);
    default: return dot_slice<T, 8>(rows_at_once, w, xs, in, rb, re, y);
  }
}

template <typename T, int HD, int G>
__global__ void __launch_bounds__(kThreads, 1) decode_step_kernel(const DecodeStep<T> p, const StepPlan plan) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int buf_at[2] = {0, plan.buf_bytes[0]};
  const int xs_at = plan.buf_bytes[0] + plan.buf_bytes[1];
  const int num_projections = kProjections * p.num_layers;

  if (threadIdx.x == 0) {
    mbarrier_init(&weights_loaded[0]);
    mbarrier_init(&weights_loaded[1]);
  }
  // The layer table in shared memory: a block reads it at every phase (the next copies' sources),
  // and from global memory each read was an L2 round trip after the barrier's L1 invalidation,
  // in front of the block's wait at the next barrier.
  DecodeLayer<T>* const layers = reinterpret_cast<DecodeLayer<T>*>(smem + plan.layers_at);
  static_assert(sizeof(DecodeLayer<T>) % sizeof(uint64_t) == 0, "copied in 8-byte words");
  for (int i = threadIdx.x; i < p.num_layers * static_cast<int>(sizeof(DecodeLayer<T>) / sizeof(uint64_t)); i += kThreads) {
    reinterpret_cast<uint64_t*>(layers)[i] = reinterpret_cast<const uint64_t*>(p.layers)[i];
  }
  __syncthreads();
  // Trace points of phase `phase` of layer l (null when not tracing).
  auto trace_of = [&](int l, int phase) -> unsigned long long* {
    return p.trace ? p.trace + ((static_cast<int64_t>(blockIdx.x) * p.num_layers + l) * kDecodeStepPhases + phase) *
                                   kDecodeStepTracePoints
                   : nullptr;
  };
  auto mark = [&](int l, int phase, int point) { trace_point(trace_of(l, phase), point); };
  // Projection q's slice goes to buffer q % 2, issued once the block is done with projection
  // q - 2 (its arrival at the barrier after it begins with a __syncthreads), so the copy has the
  // whole of the phase in between and a barrier or two to land.
  // qkv and gate_up bring their input's RMSNorm weights along (to norm_at, read by the staging).
  auto issue = [&](int q) {
    if (q >= num_projections || threadIdx.x != 0) return;
    const ProjectionShape pr = projection_shape(p, q % kProjections);
    const int rb = slice_begin(pr.out, blockIdx.x), re = slice_begin(pr.out, blockIdx.x + 1);
    const uint32_t weight_bytes = static_cast<uint32_t>(re - rb) * pr.in * sizeof(T);
    const float* norm = q % kProjections == 0   ? layers[q / kProjections].input_norm
                        : q % kProjections == 2 ? layers[q / kProjections].post_norm
                                                : nullptr;
    const uint32_t norm_bytes = norm ? p.hidden * sizeof(float) : 0;
    mbarrier_expect_bytes(&weights_loaded[q & 1], weight_bytes + norm_bytes);
    bulk_copy_to_shared(smem + buf_at[q & 1], projection_weights(layers, q) + static_cast<int64_t>(rb) * pr.in,
                        weight_bytes, &weights_loaded[q & 1], /*read_once=*/true);
    if (norm) bulk_copy_to_shared(smem + plan.norm_at, norm, norm_bytes, &weights_loaded[q & 1], /*read_once=*/false);
  };
  const float* const norm_weights = reinterpret_cast<const float*>(smem + plan.norm_at);
  auto project = [&](int q, const GemvInput& input, float* y, int l, int phase) {
    const ProjectionShape shape = projection_shape(p, q % kProjections);
    project_slice<T>(input, q, shape.out, shape.in, plan.ws[q % kProjections], buf_at[q & 1], xs_at, y,
                     trace_of(l, phase));
  };
  issue(0);
  issue(1);

  unsigned arrivals = 0;
  auto arrive = [&] {
    grid_arrive(p.barrier, kGridBarrierMaxLanes);
    ++arrivals;
  };
  auto wait = [&] { grid_wait(p.barrier, kGridBarrierMaxLanes, arrivals); };

  // The row's attention work: (kv head, split) items over the splits that hold keys, as
  // paged_attention_decode's grid has them.
  const int ctx = p.rows[2];
  const int chunk = decode_chunk(ctx, p.splits), active = (ctx + chunk - 1) / chunk;
  const int items = p.num_kv_heads * active;
  // The block's first item's first tile: its slots, the same in every layer, looked up once, so
  // each layer's attention issues its first loads without waiting on the block table; and each
  // layer fetches that tile's keys and values into L2 before the qkv phase, so those loads hit.
  const int token = p.rows[0], seq = p.rows[1];
  const int64_t kv_row = static_cast<int64_t>(p.num_kv_heads) * HD;
  __shared__ int64_t first_slots[kKeyTile];
  const bool has_item = blockIdx.x < items;
  const int first_begin = static_cast<int>(blockIdx.x) % active * chunk;
  const int first_keys = has_item ? min(kKeyTile, min(ctx, first_begin + chunk) - first_begin) : 0;
  if (static_cast<int>(threadIdx.x) < first_keys) {
    const int32_t* table = p.block_tables + static_cast<int64_t>(seq) * p.table_stride;
    first_slots[threadIdx.x] = slot_of(table, first_begin + threadIdx.x, p.block_size) * kv_row +
                               static_cast<int>(blockIdx.x) / active * HD;
  }
  __syncthreads();
  auto prefetch_first_tile = [&](const DecodeLayer<T>& L) {
    if (static_cast<int>(threadIdx.x) >= first_keys) return;
    constexpr int kRowBytes = HD * static_cast<int>(sizeof(T));
    const char* k_row = reinterpret_cast<const char*>(L.k_cache + first_slots[threadIdx.x]);
    const char* v_row = reinterpret_cast<const char*>(L.v_cache + first_slots[threadIdx.x]);
#pragma unroll
    for (int at = 0; at < kRowBytes; at += 128) {
      asm volatile("prefetch.global.L2 [%0];" ::"l"(k_row + at));
      asm volatile("prefetch.global.L2 [%0];" ::"l"(v_row + at));
    }
  };

  float* xa = p.x;   // the residual stream before this layer's adds
  float* xb = p.x2;  // where a norm prologue writes it after an add (block 0)
  for (int l = 0; l < p.num_layers; ++l) {
    const DecodeLayer<T> L = layers[l];
    const int q0 = kProjections * l;
    prefetch_first_tile(L);

    // qkv (layer 0: the embedding, written by the kernel before this one).
    if (l > 0) wait();
    mark(l, 0, 0);
    project(q0,
            GemvInput{GemvInput::kNorm, xa, l == 0 ? nullptr : p.delta, nullptr, norm_weights, p.eps, xb, p.split.qkv},
            p.qkv, l, 0);
    mark(l, 0, 3);
    arrive();
    issue(q0 + 2);
    swap_pointers(xa, xb);

    // Attention: a block's first item loads its first tile's keys and values (earlier steps'
    // cache) before the barrier, as the kernel-per-op launch does before its dependency wait.
    const DecodeAttentionArgs<T> attention{
        nullptr,
        p.rows,
        PagedKv<T>{L.k_cache, L.v_cache, p.block_tables, p.table_stride, p.block_size, p.num_kv_heads, HD},
        p.num_heads,
        p.splits,
        p.partials,
        p.counters,
        AttentionOut<T>{p.attn},
        DecodeFusion<T>{p.qkv, p.slots, p.rope, L.q_norm, L.k_norm, p.eps, L.k_cache, L.v_cache}};
    bool waited = false;
    for (int item = blockIdx.x; item < items; item += gridDim.x) {
      const DecodeItemHint hint{token, seq, ctx, item == static_cast<int>(blockIdx.x) ? first_slots : nullptr};
      decode_attention_block<T, HD, G, true>(
          attention, 0, item / active, item % active,
          [&] {
            if (!waited) {
              wait();
              mark(l, 1, 0);
              waited = true;
            }
          },
          &hint);
      __syncthreads();  // the block's shared state is reused by its next item
    }
    if (!waited) {
      wait();
      mark(l, 1, 0);
    }
    for (int point = 1; point < kDecodeStepTracePoints; ++point) mark(l, 1, point);  // no input, no weights
    arrive();

    // o
    wait();
    mark(l, 2, 0);
    GemvInput o_in{GemvInput::kF32, p.attn};
    o_in.split = p.split.o;
    project(q0 + 1, o_in, p.delta, l, 2);
    mark(l, 2, 3);
    arrive();
    issue(q0 + 3);

    // gate_up
    wait();
    mark(l, 3, 0);
    project(q0 + 2,
            GemvInput{GemvInput::kNorm, xa, p.delta, nullptr, norm_weights, p.eps, xb, p.split.gate_up}, p.gate_up, l, 3);
    mark(l, 3, 3);
    arrive();
    issue(q0 + 4);
    swap_pointers(xa, xb);

    // down; the last layer's output is read by the next kernel (the lm_head).
    wait();
    mark(l, 4, 0);
    GemvInput down_in{GemvInput::kSilu, p.gate_up};
    down_in.split = p.split.down;
    project(q0 + 3, down_in, p.delta, l, 4);
    mark(l, 4, 3);
    if (l + 1 < p.num_layers) {
      arrive();
      issue(q0 + 5);
    }
  }
  grid_barrier_reset(p.barrier);
}

template <typename T>
using StepKernel = void (*)(DecodeStep<T>, StepPlan);

template <typename T>
StepKernel<T> kernel_for(int head_dim, int group) {
  return fused_kernel_for(head_dim, group, [](auto hd, auto g) -> StepKernel<T> {
    return decode_step_kernel<T, decltype(hd)::value, decltype(g)::value>;
  });
}

template <typename T>
StepPlan plan_for(const DecodeStep<T>& s, int grid) {
  StepPlan plan{};
  int bytes[kProjections];
  int widest_in = 0;
  for (int j = 0; j < kProjections; ++j) {
    const ProjectionShape shape = projection_shape(s, j);
    plan.ws[j] = gemv_warps_per_row(shape.out, shape.in);
    bytes[j] = (shape.out + grid - 1) / grid * shape.in * static_cast<int>(sizeof(T));  // the largest slice
    widest_in = std::max(widest_in, shape.in);
  }
  auto round_up = [](int v) { return (v + 127) / 128 * 128; };
  plan.norm_at = round_up(std::max(bytes[0], bytes[2]));
  plan.buf_bytes[0] = round_up(plan.norm_at + s.hidden * static_cast<int>(sizeof(float)));
  plan.buf_bytes[1] = round_up(std::max(bytes[1], bytes[3]));
  plan.xs_bytes = widest_in * static_cast<int>(sizeof(float));  // any projection's input row
  plan.layers_at = plan.buf_bytes[0] + plan.buf_bytes[1] + round_up(plan.xs_bytes);
  return plan;
}

template <typename T>
int dynamic_smem(const StepPlan& plan, const DecodeStep<T>& s) {
  return plan.layers_at + s.num_layers * static_cast<int>(sizeof(DecodeLayer<T>));
}

}  // namespace

template <typename T>
bool decode_step_prepare(const DecodeStep<T>& s, std::string* why_not) {
  auto no = [why_not](const std::string& why) {
    if (why_not) *why_not = why;
    return false;
  };
  if (current_device_attribute(cudaDevAttrComputeCapabilityMajor) < 9) return no("needs Hopper (sm_90) or newer");
  if (!current_device_attribute(cudaDevAttrCooperativeLaunch)) return no("the GPU has no cooperative launch");
  const StepKernel<T> kernel = s.num_heads % s.num_kv_heads == 0 ? kernel_for<T>(s.head_dim, s.num_heads / s.num_kv_heads)
                                                                 : nullptr;
  if (!kernel) {
    return no("no kernel for head_dim " + std::to_string(s.head_dim) + " with " + std::to_string(s.num_heads) +
              " heads on " + std::to_string(s.num_kv_heads) + " kv heads");
  }
  const int grid = current_device_attribute(cudaDevAttrMultiProcessorCount);
  for (int j = 0; j < kProjections; ++j) {
    const ProjectionShape shape = projection_shape(s, j);
    if (shape.in % 8 != 0) return no("projection widths must be multiples of 8");
    if (static_cast<int64_t>(shape.out) * grid >= (int64_t{1} << 32)) return no("projections too wide");
  }
  const StepPlan plan = plan_for(s, grid);
  cudaFuncAttributes attributes{};
  SY_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  const int limit = current_device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin) - static_cast<int>(attributes.sharedSizeBytes);
  if (dynamic_smem(plan, s) > limit) {
    return no("a block's weight slices take " + std::to_string(dynamic_smem(plan, s)) + " bytes of shared memory, " +
              std::to_string(limit) + " are available");
  }
  SY_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, dynamic_smem(plan, s)));
  int per_sm = 0;
  SY_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, dynamic_smem(plan, s)));
  if (per_sm < 1) return no("a block does not fit on an SM");
  return true;
}

template <typename T>
void decode_step(const DecodeStep<T>& s, cudaStream_t stream) {
  const StepKernel<T> kernel = kernel_for<T>(s.head_dim, s.num_heads / s.num_kv_heads);
  if (!kernel) throw CudaError("decode_step: no kernel for this shape (decode_step_prepare says why)");
  static const int grid = current_device_attribute(cudaDevAttrMultiProcessorCount);  // the process's one GPU
  const StepPlan plan = plan_for(s, grid);
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(grid);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = dynamic_smem(plan, s);
  config.stream = stream;
  // Cooperative: every block resident at once (the barriers need it), or the launch fails.
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeCooperative;
  attribute.val.cooperative = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  SY_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, s, plan));
  SY_CUDA_CHECK_LAUNCH(decode_step_kernel);
}

template bool decode_step_prepare<__nv_bfloat16>(const DecodeStep<__nv_bfloat16>&, std::string*);
template bool decode_step_prepare<__half>(const DecodeStep<__half>&, std::string*);
template void decode_step<__nv_bfloat16>(const DecodeStep<__nv_bfloat16>&, cudaStream_t);
template void decode_step<__half>(const DecodeStep<__half>&, cudaStream_t);

}  // namespace sy::cuda
