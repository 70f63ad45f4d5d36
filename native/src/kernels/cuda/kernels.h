// Launchers of the CUDA backend's own kernels (the GEMMs go through cuBLAS, gemm.h). `T` is
// the model's 16-bit dtype (__nv_bfloat16 or __half): weights, GEMM inputs and the KV cache
// are in T; the residual stream, GEMM outputs and logits are fp32, except float16's qkv and
// gate_up products on the cuBLAS path (Product below). A GEMM input may be split:
// the kernel that makes it writes hi = T(v) and, where its `_lo` output is not null,
// lo = T(v - hi), and the GEMM runs on both (y = W hi + W lo: v to ~16 significant bits
// instead of 8; bench/CUDA_NOTES.md, "Correctness"). Every launcher checks its launch. The plain CPU kernels in kernels/cpu/ compute the same functions and are the
// reference the tests hold these to (through the engine's outputs).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

namespace sy::cuda {

/**
 * fp16's largest finite value: every conversion to fp16 (from_f32, the weight loader) saturates
 * at +-kHalfMax, and a checkpoint with a weight beyond it is refused in fp16.
 */
constexpr float kHalfMax = 65504.0f;

/** out[t] = table[tokens[t]] in fp32; table is [vocab, dim]. */
template <typename T>
void embed(const T* table, const int32_t* tokens, int n, int dim, float* out, cudaStream_t stream);

/**
 * x += delta (when delta is not null; delta + delta_lo when delta_lo is not null, the two products
 * of a split input), then y = T(x / rms(x) * weight), rows of `dim` (y_lo: split).
 */
template <typename T>
void add_rmsnorm(float* x, const float* delta, const float* delta_lo, const float* weight, int rows, int dim, float eps,
                 T* y, T* y_lo, cudaStream_t stream);

/** y[i] = T(rmsnorm(x[rows[i]] + delta[rows[i]])) for the m rows whose logits are wanted (y_lo: split). */
template <typename T>
void gather_add_rmsnorm(const float* x, const float* delta, const int32_t* rows, int m, const float* weight, int dim,
                        float eps, T* y, T* y_lo, cudaStream_t stream);

/**
 * The element type of the qkv and gate_up products as the cuBLAS path stores them for the pass
 * that reads them (qkv_norm_rope_store, silu_mul): 16-bit in float16, so those passes read half
 * the bytes (bench/CUDA_NOTES.md, "Session 7"); fp32 in bfloat16, whose split inputs' two
 * products are added by the reader and must keep the lo product's bits. Every other reader of
 * these products (of gemv's fp32 outputs, in the fused decode attention, the gemv SiLU·up
 * prologue and the persistent step) rounds them as that store does (product_value, reduce.cuh),
 * so a row gets the same values on every path.
 */
template <typename T>
using Product = std::conditional_t<std::is_same_v<T, __half>, __half, float>;

struct QkvLayout {
  int num_heads, num_kv_heads, head_dim;
  float eps;
  int block_size;
};

/**
 * From the fused projection qkv [n, (heads + 2 kv_heads) * head_dim] (S: Product<T> from cuBLAS,
 * or fp32 from gemv, rounded as Product<T>; plus qkv_lo, same shape, when not null: the split
 * input's lo product): q and k get the per-head RMSNorm (when q_norm/k_norm are not null) and RoPE
 * at their token's position; q goes to q_out [n, heads * head_dim], k and v to their cache slots
 * ([slot][kv_head][head_dim]).
 */
template <typename T, typename S>
void qkv_norm_rope_store(const S* qkv, const S* qkv_lo, int n, const int32_t* positions, const int32_t* slots,
                         const float* rope, const float* q_norm, const float* k_norm, const QkvLayout& layout,
                         T* q_out, T* k_cache, T* v_cache, cudaStream_t stream);

/**
 * The RoPE table of positions [0, positions): row p holds head_dim / 2 pairs (cos, sin) of the
 * angles p * inv_freq[i] (fp32 product, then sincosf). Computed once per engine, so that the
 * kernels that rotate q and k (a token's 24 q and k heads each, in the 0.6B shape) read them
 * instead of evaluating sincosf per element (bench/CUDA_NOTES.md, "Session 7").
 */
void rope_table(const float* inv_freq, int positions, int head_dim, float* table, cudaStream_t stream);

/**
 * out[t, i] = T(silu(gu[t, i]) * gu[t, inter + i]) (out_lo: split), gu = gate_up (+ gate_up_lo,
 * same shape, when not null: the split input's lo product).
 */
template <typename T>
void silu_mul(const Product<T>* gate_up, const Product<T>* gate_up_lo, int n, int inter, T* out, T* out_lo,
              cudaStream_t stream);

/**
 * out[i] = To(in[i]) from one 16-bit type to the other: a checkpoint's weights loaded in the
 * type the engine was asked to run in (CudaRunnerOptions::dtype). `beyond` (device memory, zeroed
 * by the caller) is increased by the number of values past fp16's range, which saturate.
 */
template <typename From, typename To>
void convert_16bit(const From* in, int64_t count, To* out, unsigned* beyond, cudaStream_t stream);

/** The paged cache of one layer and the block tables of the step's sequences. */
template <typename T>
struct PagedKv {
  const T* k;
  const T* v;
  const int32_t* block_tables;  // [num_seqs][table_stride]
  int table_stride;
  int block_size;
  int num_kv_heads;
  int head_dim;
};

/**
 * Where an attention kernel writes its output [tokens, heads * head_dim]: in fp32 (`f32`, for
 * gemv, which rounds its input itself), or as the o projection's 16-bit input (`hi`, with the
 * remainder in `lo` when that input is split: store_split.cuh), which saves a conversion pass.
 */
template <typename T>
struct AttentionOut {
  float* f32 = nullptr;
  T* hi = nullptr;
  T* lo = nullptr;
};

/**
 * What the decode attention kernel does itself in a pure decode step (every token of the step is
 * a decode row), instead of a qkv_norm_rope_store pass before it: `qkv` not null means q is made
 * from the projection (per-head norm and RoPE, bit for bit as qkv_norm_rope_store makes it) and
 * each row's new k and v are written to their cache slots. All null: q is read from `q`.
 */
template <typename T>
struct DecodeFusion {
  const float* qkv = nullptr;  // [n, (heads + 2 kv_heads) * head_dim], fp32
  const int32_t* slots = nullptr;
  const float* rope = nullptr;  // rope_table
  const float* q_norm = nullptr;  // may be null
  const float* k_norm = nullptr;  // may be null
  float eps = 0.0f;
  T* k_cache = nullptr;
  T* v_cache = nullptr;
  const float* qkv_lo = nullptr;  // the split input's lo product, same shape as qkv, or null
};

/**
 * The decode attention kernels, fastest first; each shape runs the first one at or after the
 * engine's choice that is built for it (the block kernel is built for every shape). TensorCore:
 * decode_attention_mma.cu; WarpStepped: decode_attention_warps.cu; Block: decode_attention.cuh's
 * block, which the persistent decode step runs too.
 */
enum class DecodeKernel { TensorCore, WarpStepped, Block };

/**
 * Decode attention, split over the context: row r is token rows[3r] of sequence rows[3r+1], whose
 * context is rows[3r+2] keys (its position + 1); it attends to cache positions 0..pos. Up to
 * `splits` blocks share each (row, kv head) and write partial softmax states to `partials`; the
 * last of them merges. `partials` holds rows * heads * splits * (head_dim + 2) floats; `counters`
 * rows * kv_heads ints, zero before the first launch (each launch leaves them zero).
 * `kernel`: which kernel runs where it is built (DecodeKernel).
 */
template <typename T>
void paged_attention_decode(const T* q, const int32_t* rows, int num_rows, const PagedKv<T>& kv,
                            int num_heads, int splits, float* partials, int* counters, const AttentionOut<T>& out,
                            const DecodeFusion<T>& fuse, DecodeKernel kernel, cudaStream_t stream);

/**
 * How many decode attention blocks the GPU runs at once for this shape (blocks an SM times SMs),
 * in a launch whose rows are split or not (the tensor-core and warp-stepped kernels run other
 * builds for split rows): splits_for (qwen3_cuda.cpp) sizes grids by them.
 */
template <typename T>
int decode_attention_slots(int head_dim, int num_heads, int num_kv_heads, DecodeKernel kernel, bool split_rows);

/** Which decode attention kernel runs, in words (the engine's detail). */
std::string decode_attention_summary(int head_dim, int num_heads, int num_kv_heads, DecodeKernel kernel);

/**
 * Prefill (and chunked-prefill, prefix-hit) attention on tensor cores (prefill_attention.cu). Each tile is
 * tiles[3i..3i+2] = (sequence, first token, token count); its tokens are consecutive positions
 * of one sequence and attend to cache positions 0..pos through the block table. Blocks start
 * in the order of the tiles, every KV head of a tile together: order_prefill_tiles puts the
 * longest first.
 */
template <typename T>
void paged_attention_prefill(const T* q, const int32_t* tiles, int num_tiles, const int32_t* positions,
                             const PagedKv<T>& kv, int num_heads, const AttentionOut<T>& out, cudaStream_t stream);
/** Tokens of one sequence one prefill tile holds, for a GQA group of `group` query heads. */
int prefill_tile_tokens(int group, int head_dim);
/**
 * The prefill kernel a head_dim runs on: "pingpong128" (v7, the default for head_dim 128 on an
 * sm_90a build and a compute capability 9.0 GPU), "pingpong64", "wgmma" (v6), "wmma", "mma16",
 * "mma32" (forced by SWITCHYARD_CUDA_PREFILL), or "mma16 or mma32 by launch size" (the default
 * elsewhere).
 */
const char* prefill_kernel_name(int head_dim);
/**
 * Sorts prefill tiles (host memory) by the keys they attend to, most first, so that the last
 * blocks to start are the shortest and the SMs finish together; `positions` (host) are the
 * step's token positions. In sequence order instead, a causal prompt's long tiles of its last KV
 * heads started after the short tiles of the first ones: a lone 2048-token prompt's attention
 * took 1.8x what it took per prompt in a step of four (bench/CUDA_NOTES.md, "Session 5").
 */
void order_prefill_tiles(int32_t* tiles, int num_tiles, const int32_t* positions);
/**
 * The first prefill kernel (WMMA, O in shared memory), same tiles and function: used for
 * head_dim 256, which paged_attention_prefill's register-resident kernel does not take, and as
 * the baseline of test/native/cuda_prefill_check.cu.
 */
template <typename T>
void paged_attention_prefill_wmma(const T* q, const int32_t* tiles, int num_tiles, const int32_t* positions,
                                  const PagedKv<T>& kv, int num_heads, const AttentionOut<T>& out,
                                  cudaStream_t stream);

/** The fp32 input rows of gemv, read directly or made by a fused prologue. */
struct GemvInput {
  enum Mode { kF32, kNorm, kSilu };
  Mode mode = kF32;
  /** kF32: x [n, in]. kNorm: the residual stream (rows `rows[t]`, or t). kSilu: gate_up [n, 2 in]. */
  const float* x = nullptr;
  /** kNorm: added to x first (may be null). */
  const float* delta = nullptr;
  /** kNorm: the rows of x to take (may be null: rows 0..n-1). */
  const int32_t* rows = nullptr;
  /** kNorm: input row t = weight * (v / rms(v)), v = x + delta. */
  const float* weight = nullptr;
  float eps = 0.0f;
  /** kNorm: where v = x + delta is written back (may be null; may not alias x). */
  float* x_out = nullptr;
  /** The input as hi + lo (the split GEMM input the cuBLAS path then uses), not T(v) alone. */
  bool split = false;
};

/**
 * y[n, out] = input[n, in] · wᵀ in fp32 for n <= 8 (decode at small batch), bandwidth-bound;
 * the input rows are rounded to T (or to hi + lo, `split`) as cuBLAS's inputs are (batch invariance). gemv_fits says whether it applies; gemv_prepare (before any
 * CUDA-graph capture) lets the kernels take the shared memory they need.
 */
bool gemv_fits(int n, int in);
/**
 * How many partial sums (warps, in gemv) a gemv output row of this shape is summed as, each over
 * every (256 * ws)-th group of 8 inputs, then added in order: fixes the row's summation order,
 * which the persistent decode step (decode_step.cu) follows too.
 */
int gemv_warps_per_row(int out, int in);
template <typename T>
void gemv_prepare();
template <typename T>
void gemv(const GemvInput& input, int n, const T* w, int out, int in, float* y, cudaStream_t stream);
/**
 * act[n, inter] = silu(gate) * up from the gate_up weights ([2 inter][in]: gate rows, then up
 * rows), gate and up rounded as a cuBLAS step stores its products (product_value), as gemv would
 * give them followed by the SiLU·up prologue; so the down projection reads act as a plain input.
 */
template <typename T>
void gemv_silu(const GemvInput& input, int n, const T* gate_up, int inter, int in, float* act, cudaStream_t stream);

/** One layer as the persistent decode step reads it. */
template <typename T>
struct DecodeLayer {
  const T* qkv;      // [(heads + 2 kv_heads) * head_dim, hidden]
  const T* o;        // [hidden, heads * head_dim]
  const T* gate_up;  // [2 inter, hidden]: gate rows, then up rows
  const T* down;     // [hidden, inter]
  const float* input_norm;
  const float* post_norm;
  const float* q_norm;  // may be null (no q/k norm)
  const float* k_norm;
  T* k_cache;
  T* v_cache;
};

/** Which GEMM inputs of the persistent decode step are split into hi + lo (GemvInput::split). */
struct DecodeStepSplit {
  bool qkv = false, o = false, gate_up = false, down = false;
};

/**
 * A whole batch-1 decode step but the embedding and the lm_head, as one persistent kernel
 * (off by default, SWITCHYARD_CUDA_PERSISTENT=on: at parity with kernel per op on the H200)
 * (decode_step.cu): every layer's qkv, attention, o, gate_up and down phases with grid-wide
 * barriers between them instead of kernel boundaries, each block's share of the next phase's
 * weights copied into its shared memory while the current phase runs. It computes what the
 * kernel-per-op path computes (gemv with fused prologues, the block decode attention kernel with
 * fused q/k norm, RoPE and KV store) with the same arithmetic in the same order, so the same bits
 * as kernel per op with SWITCHYARD_CUDA_DECODE_WARPS=off (the warp-stepped kernel sums in another
 * order).
 */
template <typename T>
struct DecodeStep {
  const DecodeLayer<T>* layers;  // device array of num_layers
  int num_layers, hidden, inter, num_heads, num_kv_heads, head_dim;
  float eps;
  DecodeStepSplit split;
  const int32_t* rows;  // the one decode row: (token, seq, ctx), as paged_attention_decode's
  const int32_t* slots;
  const float* rope;  // rope_table
  const int32_t* block_tables;
  int table_stride, block_size, splits;
  /** The residual stream: x holds the embedding on entry and the stream (less the last delta) on exit; x2 is scratch. */
  float* x;
  float* x2;
  float* delta;    // [hidden]: the last down projection's output on exit
  float* qkv;      // [(heads + 2 kv_heads) * head_dim]
  float* attn;     // [heads * head_dim]
  float* gate_up;  // [2 inter]
  float* partials;
  int* counters;   // paged_attention_decode's, zero
  unsigned* barrier;  // decode_step_barrier_words() words, zero before the first launch; each launch leaves them zero
  /** Null, or where thread 0 of each block writes %globaltimer (ns) at kDecodeStepTracePoints points of each phase
   *  ([block][layer][phase][point]; decode_step_trace.h reads them). For finding where a step's time goes. */
  unsigned long long* trace = nullptr;
};
constexpr int kDecodeStepPhases = 5;       // qkv, attention, o, gate_up, down
constexpr int kDecodeStepTracePoints = 4;  // started (barrier passed), weights in, input staged, done (arriving)
constexpr int decode_step_barrier_words() { return 9 * 32; }  // grid_barrier.cuh's grid_barrier_words()

/**
 * Whether the persistent decode step runs this shape on the current GPU (Hopper or newer, head_dim
 * 16, 64 or 128, GQA group up to 8, every block's share of a projection's weights in shared
 * memory, all blocks resident at once), and if so lets its kernel take the shared memory it
 * needs: call before any CUDA-graph capture. `why_not` gets the reason when it does not.
 */
template <typename T>
bool decode_step_prepare(const DecodeStep<T>& shape, std::string* why_not);
/** Launches the step (cooperatively: one block per SM). decode_step_prepare must have said yes. */
template <typename T>
void decode_step(const DecodeStep<T>& step, cudaStream_t stream);

/**
 * The attention half of a batch-1 decode layer as one kernel (attention_sublayer.cu): the RMSNorm
 * of the residual stream, the qkv projection, q/k norm + RoPE + the KV store, the attention and
 * the o projection, where kernel per op runs three kernels (qkv gemv, decode attention, o gemv)
 * with a grid-wide dependency between each two. Each KV head's GQA group is one thread-block
 * cluster: its blocks split the group's qkv rows, exchange them through distributed shared
 * memory, split its context, merge the softmax states the same way, and each makes a share of
 * the group's part of the o projection; the last group to finish a share adds the groups' parts
 * in order (deterministic, no float atomics). The qkv weights are copied into shared memory, and
 * the first K/V tile loaded, before the kernel waits for the one before it; the o weights while
 * the attention runs. Slower than kernel per op on the H200, so the engine runs it only with
 * SWITCHYARD_CUDA_ATTENTION_SUBLAYER=on (bench/CUDA_NOTES.md, "Session 13").
 */
template <typename T>
struct AttentionSublayer {
  /** The input: RMSNorm(x + delta) with `input_norm` (delta may be null); x + delta is written to x_out. */
  const float* x;
  const float* delta;
  float* x_out;
  const float* input_norm;
  float eps;
  const T* qkv;  // [(heads + 2 kv_heads) * head_dim][hidden]
  const T* o;    // [hidden][heads * head_dim]
  const float* q_norm;  // may be null
  const float* k_norm;  // may be null
  const float* rope;    // rope_table
  const int32_t* rows;  // the one decode row: (token, seq, ctx), as paged_attention_decode's
  const int32_t* slots;
  const int32_t* block_tables;
  int table_stride, block_size;
  T* k_cache;
  T* v_cache;
  int hidden, num_heads, num_kv_heads, head_dim;
  bool split_qkv, split_o;  // inputs rounded to hi + lo, as gemv rounds them (DecodeStepSplit)
  float* o_parts;  // [kv_heads][hidden] scratch
  int* tickets;    // kAttentionSublayerMaxCluster ints, zero before the first launch; each launch leaves them zero
  float* out;      // [hidden]: the o projection (not `delta`, which blocks may still be reading)
  int cluster = 0;  // blocks per KV head: set by attention_sublayer_prepare
};
constexpr int kAttentionSublayerMaxCluster = 16;

/**
 * Whether the attention sublayer kernel runs this shape on the current GPU (Hopper or newer, head_dim
 * 16, 64 or 128, GQA group up to 8, a block's share of the qkv or o weights in shared memory,
 * every KV head's cluster resident at once), and if so sets s->cluster and lets the kernel take
 * its shared memory: call before any CUDA-graph capture. `cluster` 0 takes the largest size that
 * fits (up to 16 blocks); another value asks for that one (2-16, for measuring). `why_not` gets
 * the reasons when it does not.
 */
template <typename T>
bool attention_sublayer_prepare(AttentionSublayer<T>* s, int cluster, std::string* why_not);
/** Launches the sublayer (a programmatic dependent launch); attention_sublayer_prepare must have said yes. */
template <typename T>
void attention_sublayer(const AttentionSublayer<T>& s, cudaStream_t stream);

/** y += x over `count` floats: the lo product of a stacked split GEMM (the logits') into its hi product. */
void add_into(float* y, const float* x, int64_t count, cudaStream_t stream);

/** Per row: argmax (lowest id on ties) and its raw logprob; `scratch` holds argmax_scratch_bytes(rows). */
size_t argmax_scratch_bytes(int rows);
void argmax_logprob(const float* logits, int rows, int vocab, int32_t* ids, float* logprobs, void* scratch,
                    cudaStream_t stream);

/** Per-row parameters of random sampling; u is the row's uniform draw in [0, 1). */
struct SampleRow {
  int row;  // logit row
  float temperature;
  float top_p;
  float min_p;
  int top_k;
  float u;
};
/**
 * Temperature / top-k / top-p / min-p sampling on the device, one block per entry of `params`
 * (rows = their count); ids[i] gets the token and logprobs[i] its raw logprob.
 */
void sample_rows(const float* logits, int rows, int vocab, const SampleRow* params, int32_t* ids, float* logprobs,
                 cudaStream_t stream);

/** Top-k raw logprobs of each row (k <= 32), best first, ties by lowest id. */
void top_logprobs(const float* logits, int rows, int vocab, int k, int32_t* ids, float* logprobs, cudaStream_t stream);

}  // namespace sy::cuda
