// CudaModelRunner for Qwen3/Llama: device weights (bf16 or fp16, as the checkpoint or as
// options.dtype asks; fp32 files are converted to bf16 by default), a paged KV cache in the same
// dtype sized by gpu_memory_utilization,
// fixed activation buffers, one host->device copy of the step's metadata per step, and decode
// steps replayed from CUDA graphs captured per padded batch size.
//
// Per layer: add+RMSNorm -> QKV GEMM -> q/k norm + RoPE + KV store -> paged attention (split-K
// decode rows, tensor-core prefill tiles) -> O GEMM -> add+RMSNorm -> gate/up GEMM -> SiLU*up ->
// down GEMM. The residual stream, attention output and GEMM outputs are fp32 (in float16 the
// qkv and gate_up products are 16-bit on the cuBLAS path: kernels.h, Product); the cache and q
// are 16-bit, and GEMM inputs are 16-bit hi + lo pairs (SplitGemmInputs). Prefill-sized GEMMs
// run the cuBLASLt algorithms timed at load (kernels/cuda/gemm.h). Steps of at most
// gemv_max_rows_ tokens (decode at batch 1-2) run the GEMMs as gemv kernels with the RMSNorm (and
// residual add) or SiLU*up fused in as their prologue (the residual then alternates between two
// buffers); larger steps use Gemm (kernels/cuda/gemm.h) after separate norm / SiLU kernels. The
// final norm + lm_head use gemv whenever at most that many rows need logits. In a pure decode
// step the attention kernel does the q/k norm + RoPE + KV store itself, and the decode kernels are
// launched as programmatic dependents (kernels/cuda/dependent_launch.cuh), as are a prefill
// step's norms, q/k pass, attention and SiLU·up. With SWITCHYARD_CUDA_PERSISTENT=on a batch-1
// decode step runs all of that as one persistent kernel (kernels/cuda/decode_step.cu),
// with the same bits as kernel per op on the block decode attention kernel, where the GPU and
// shape allow (at parity so far: off by default).
#include "model/qwen3_cuda.h"

#include <cuda_profiler_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <map>
#include <stdexcept>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode_step_trace.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/small_gemm.h"
#include "model/safetensors.h"

namespace sy {
namespace {

class DeviceMemory {
 public:
  DeviceMemory() = default;
  explicit DeviceMemory(size_t bytes) : bytes_(bytes) {
    if (bytes > 0) SY_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
  }
  ~DeviceMemory() {
    if (ptr_) cudaFree(ptr_);
  }
  DeviceMemory(DeviceMemory&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; }
  DeviceMemory& operator=(DeviceMemory&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  template <typename U>
  U* as(size_t byte_offset = 0) const {
    return reinterpret_cast<U*>(static_cast<char*>(ptr_) + byte_offset);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

class PinnedMemory {
 public:
  PinnedMemory() = default;
  explicit PinnedMemory(size_t bytes) {
    if (bytes > 0) SY_CUDA_CHECK(cudaMallocHost(&ptr_, bytes));
  }
  ~PinnedMemory() {
    if (ptr_) cudaFreeHost(ptr_);
  }
  PinnedMemory(PinnedMemory&& o) noexcept : ptr_(o.ptr_) { o.ptr_ = nullptr; }
  PinnedMemory& operator=(PinnedMemory&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    return *this;
  }
  template <typename U>
  U* as(size_t byte_offset = 0) const {
    return reinterpret_cast<U*>(static_cast<char*>(ptr_) + byte_offset);
  }

 private:
  void* ptr_ = nullptr;
};

/** Carves aligned sub-buffers out of one allocation: first pass counts, second assigns. */
class Layout {
 public:
  size_t take(size_t bytes) {
    const size_t at = (size_ + 255) & ~size_t(255);
    size_ = at + bytes;
    return at;
  }
  size_t size() const { return size_; }

 private:
  size_t size_ = 0;
};

// Decode batch sizes that get a CUDA graph; a decode step runs the smallest one that fits.
constexpr int kGraphBatchSizes[] = {1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512};
constexpr int kMaxTopLogprobs = 32;
constexpr int kMaxSplits = 32;
// Whether batch-1 decode steps run as one persistent kernel unless SWITCHYARD_CUDA_PERSISTENT
// (on | off) says otherwise.
constexpr bool kPersistentByDefault = false;
// Whether batch-1 decode steps run each layer's attention sublayer as one cluster kernel unless
// SWITCHYARD_CUDA_ATTENTION_SUBLAYER says otherwise: off, slower than kernel per op on the H200
// (bench/CUDA_NOTES.md, "Session 13").
constexpr bool kSublayerByDefault = false;
// The most rows whose split lm_head input runs as one GEMM over the stacked hi and lo rows, as a
// share of the hidden size. Stacking reads the weights (vocab x hidden x 2 bytes) once instead of
// twice. It moves m x vocab x 8 more bytes of logits: the lo rows written, then add_into reading
// both halves and writing the sum (4 x m x vocab x 4), against the second GEMM's read and rewrite
// of the m rows (2 x m x vocab x 4). So it pays below m = hidden / 4; the limit is half that, so
// that the logits' extra rows stay small (128 rows, 78 MB, for the 0.6B shape).
constexpr int kStackedLogitRowsPerHidden = 8;  // hidden / 8 rows

// fp16 saturates, as the kernels' conversions do (from_f32); the caller counts what did.
uint16_t f32_to_half_bits(float v, bool bf16) {
  if (bf16) {
    __nv_bfloat16 h = __float2bfloat16(v);
    uint16_t bits;
    std::memcpy(&bits, &h, 2);
    return bits;
  }
  __half h = __float2half(std::fabs(v) > cuda::kHalfMax ? std::copysign(cuda::kHalfMax, v) : v);
  uint16_t bits;
  std::memcpy(&bits, &h, 2);
  return bits;
}

template <typename T>
constexpr bool is_bf16() {
  return std::is_same<T, __nv_bfloat16>::value;
}

/**
 * SWITCHYARD_CUDA_PROFILE=1: host timers and CUDA events around the phases of each graph decode
 * step and of each step with prefill tokens, averaged and printed to stderr every 200 decode
 * steps and every 8 prefill steps. SWITCHYARD_CUDA_PROFILE_STEP=k: cudaProfilerStart/Stop around
 * the k-th graph decode step (for `ncu --profile-from-start off`);
 * SWITCHYARD_CUDA_PROFILE_PREFILL_STEP=k the same around the k-th step with prefill tokens.
 */
struct StepProfile {
  using Clock = std::chrono::steady_clock;

  /** Sums over the steps of one kind since its last report. */
  struct Phases {
    int counted = 0;
    double tokens = 0, outside_us = 0, prep_us = 0, launch_us = 0, sample_host_us = 0, wait_us = 0, gpu_forward_us = 0,
           gpu_sample_us = 0;

    void report(const std::string& what) {
      const double n = counted;
      fprintf(stderr,
              "switchyard profile: %s, %d steps of %.0f tokens: outside step (scheduler, outputs, loop) %.1f us | "
              "metadata %.1f us | H2D+forward launch %.1f us | sample launch+wait+read %.1f us (of it waiting %.1f us) "
              "| GPU: H2D+forward %.1f us, sampling+D2H %.1f us\n",
              what.c_str(), counted, tokens / n, outside_us / n, prep_us / n, launch_us / n, sample_host_us / n,
              wait_us / n, gpu_forward_us / n, gpu_sample_us / n);
      *this = Phases{};
    }
  };

  bool on = false;
  int ncu_step = -1, ncu_prefill_step = -1;
  int graph_steps = 0, prefill_steps = 0;
  Phases decode, prefill;
  cudaEvent_t ev[3] = {nullptr, nullptr, nullptr};
  Clock::time_point last_exit;
  bool has_last = false;

  void init() {
    const char* p = std::getenv("SWITCHYARD_CUDA_PROFILE");
    on = p && *p && *p != '0';
    ncu_step = env_int("SWITCHYARD_CUDA_PROFILE_STEP").value_or(-1);
    ncu_prefill_step = env_int("SWITCHYARD_CUDA_PROFILE_PREFILL_STEP").value_or(-1);
    if (on)
      for (auto& e : ev) SY_CUDA_CHECK(cudaEventCreate(&e));
  }
  static double us(Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double, std::micro>(b - a).count();
  }
};

/**
 * Which GEMM inputs are split into hi + lo (kernels.h): the rounding of these activations to
 * bf16 is most of a bf16 engine's distance from an fp32 reference (bench/CUDA_NOTES.md,
 * "Correctness"). Prefill pays one more GEMM per split input, and decode batches past gemv's
 * (more than 4 rows) a second read of the weights; decode's gemv reads them in fp32 at no cost.
 * SWITCHYARD_CUDA_SPLIT_GEMM = "all", "none", or a comma list of qkv, o, gate_up, down,
 * lm_head; by default "all" in bf16 and "none" in fp16, whose 11 significant bits already put
 * the rounding below the KV cache's (bench/CUDA_NOTES.md, "Session 5").
 */
struct SplitGemmInputs {
  bool qkv = true, o = true, gate_up = true, down = true, lm_head = true;

  bool any() const { return qkv || o || gate_up || down || lm_head; }

  static SplitGemmInputs from_env(bool bf16) {
    SplitGemmInputs s;
    const char* v = std::getenv("SWITCHYARD_CUDA_SPLIT_GEMM");
    if (!v || !*v) v = bf16 ? "all" : "none";
    if (std::strcmp(v, "all") == 0) return s;
    s.qkv = s.o = s.gate_up = s.down = s.lm_head = false;
    if (std::strcmp(v, "none") == 0) return s;
    std::string list(v);
    size_t start = 0;
    while (start <= list.size()) {
      const size_t end = std::min(list.find(',', start), list.size());
      const std::string name = list.substr(start, end - start);
      if (name == "qkv") s.qkv = true;
      else if (name == "o") s.o = true;
      else if (name == "gate_up") s.gate_up = true;
      else if (name == "down") s.down = true;
      else if (name == "lm_head") s.lm_head = true;
      else throw std::runtime_error("SWITCHYARD_CUDA_SPLIT_GEMM: unknown GEMM '" + name +
                                    "' (expected all, none, or a comma list of qkv, o, gate_up, down, lm_head)");
      start = end + 1;
    }
    return s;
  }
};

template <typename T>
class Qwen3Cuda final : public CudaModelRunner {
 public:
  Qwen3Cuda(const std::string& dir, const ModelConfig& config, const CudaRunnerOptions& options)
      : c_(config), opt_(options) {
    SY_CUDA_CHECK(cudaSetDevice(device_));
    SY_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    // A load that throws (a bad checkpoint, no room for the KV cache) must not leave the stream,
    // the cuBLAS handle or the events behind: the destructor does not run for it.
    try {
      construct(dir);
    } catch (...) {
      release();
      throw;
    }
  }

  ~Qwen3Cuda() override { release(); }

 private:
  void construct(const std::string& dir) {
    SY_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, device_));
    gemm_ = std::make_unique<cuda::Gemm>(stream_);
    prof_.init();
    split_ = SplitGemmInputs::from_env(is_bf16<T>());
    // SWITCHYARD_CUDA_DECODE_FUSION=off keeps the separate q/k norm + RoPE + KV store pass in
    // decode steps too (same results; for measuring what the fusion gives).
    fuse_decode_ = !env_is_off("SWITCHYARD_CUDA_DECODE_FUSION");
    // SWITCHYARD_CUDA_GEMV_MAX_ROWS (0-8, default 2): steps of up to that many tokens use gemv,
    // larger ones Gemm (small_gemm up to 16 rows, then cuBLAS). H200 decode steps, gemv vs
    // cuBLAS (session 3): batch 3 1.56 vs 2.25 ms, batch 4 1.58 vs 2.29, batch 6 2.24 vs 2.21;
    // gemv vs small_gemm (session 15, bf16): batch 3 1.313 vs 1.224, batch 4 1.360 vs 1.279,
    // batch 2 1.225 vs 1.229.
    if (const auto rows = env_int("SWITCHYARD_CUDA_GEMV_MAX_ROWS")) gemv_max_rows_ = std::clamp(*rows, 0, 8);
    // SWITCHYARD_CUDA_LM_HEAD_STACKED_ROWS (0 = off; default hidden / kStackedLogitRowsPerHidden):
    // the most rows whose split lm_head input runs as one stacked GEMM.
    if (const auto rows = env_int("SWITCHYARD_CUDA_LM_HEAD_STACKED_ROWS")) stacked_logit_rows_ = std::max(0, *rows);
    // SWITCHYARD_CUDA_PERSISTENT (on | off; default kPersistentByDefault): batch-1 decode steps
    // as one persistent kernel (same bits as kernel per op with SWITCHYARD_CUDA_DECODE_WARPS=off;
    // bench/CUDA_NOTES.md, "Session 4").
    const char* persistent = std::getenv("SWITCHYARD_CUDA_PERSISTENT");
    persistent_wanted_ = persistent && *persistent ? std::strcmp(persistent, "off") != 0 : kPersistentByDefault;
    // SWITCHYARD_CUDA_GEMV_SILU=prologue: gemv steps compute SiLU·up in the down projection's
    // prologue (every block over the whole row) rather than in the gate_up gemv (gemv_silu).
    const char* silu = std::getenv("SWITCHYARD_CUDA_GEMV_SILU");
    silu_in_gate_up_ = !(silu && std::strcmp(silu, "prologue") == 0);
    // SWITCHYARD_CUDA_SMALL_GEMM_SILU=off: steps on small_gemm run SiLU·up as a pass of its own
    // after the gate_up product, as before session 18 (same bits; for measuring).
    silu_in_small_gemm_ = !env_is_off("SWITCHYARD_CUDA_SMALL_GEMM_SILU");
    // SWITCHYARD_CUDA_DECODE_SPLITS (1-32): the most splits a decode row's context is cut into
    // (default 32; fewer means more 64-key tiles a block and fewer partial states to merge).
    if (const auto splits = env_int("SWITCHYARD_CUDA_DECODE_SPLITS")) max_splits_ = std::clamp(*splits, 1, kMaxSplits);
    // SWITCHYARD_CUDA_ATTENTION_SUBLAYER (on | off | 2-16; default kSublayerByDefault): batch-1 decode
    // steps run each layer's qkv, attention and o as one cluster kernel (attention_sublayer.cu);
    // a number asks for that many blocks a cluster (for measuring).
    // SWITCHYARD_CUDA_DECODE_WARPS=off: decode attention on the block kernel, as before session 14
    // (the persistent decode step's; for measuring and for comparing bits with that step).
    // SWITCHYARD_CUDA_DECODE_MMA=off: on the warp-stepped kernel, as before session 15.
    decode_kernel_ = env_is_off("SWITCHYARD_CUDA_DECODE_WARPS") ? cuda::DecodeKernel::Block
                     : env_is_off("SWITCHYARD_CUDA_DECODE_MMA") ? cuda::DecodeKernel::WarpStepped
                                                                : cuda::DecodeKernel::TensorCore;
    const char* sublayer = std::getenv("SWITCHYARD_CUDA_ATTENTION_SUBLAYER");
    if (sublayer && *sublayer) {
      sublayer_wanted_ = std::strcmp(sublayer, "off") != 0;
      sublayer_cluster_ = std::atoi(sublayer);  // 0 for on: the largest that fits
    }
    hd_ = c_.head_dim;
    qdim_ = c_.num_heads * hd_;
    kvdim_ = c_.num_kv_heads * hd_;
    qkvdim_ = qdim_ + 2 * kvdim_;
    if (c_.num_heads % c_.num_kv_heads != 0) throw std::runtime_error("num_heads must be a multiple of num_kv_heads");
    load_weights(dir);
    decode_slots_ = cuda::decode_attention_slots<T>(hd_, c_.num_heads, c_.num_kv_heads, decode_kernel_, false);
    decode_split_slots_ = cuda::decode_attention_slots<T>(hd_, c_.num_heads, c_.num_kv_heads, decode_kernel_, true);
    allocate_activations();
    allocate_kv_cache();
    tune_gemms();
    cuda::gemv_prepare<T>();
    const int widest = static_cast<int>(std::max({c_.hidden_size, c_.intermediate_size, static_cast<int>(qdim_)}));
    gemv_ok_ = cuda::gemv_fits(8, widest) && c_.hidden_size % 8 == 0 && qdim_ % 8 == 0 && c_.intermediate_size % 8 == 0;
    prepare_persistent_step();
    prepare_attention_sublayer();
  }

  void release() {
    if (stream_) cudaStreamSynchronize(stream_);
    for (auto& [b, exec] : graphs_)
      if (exec) cudaGraphExecDestroy(exec);
    for (auto& e : prof_.ev)
      if (e) cudaEventDestroy(e);
    gemm_.reset();  // its cuBLAS handle is bound to the stream
    if (stream_) cudaStreamDestroy(stream_);
    stream_ = nullptr;
  }

 public:
  const char* name() const override { return "cuda"; }
  const char* dtype() const override { return is_bf16<T>() ? "bfloat16" : "float16"; }
  std::string detail() const override {
    const std::string tuned = gemm_->tuned_summary();
    return std::string(dtype()) + (split_.any() ? ", GEMM inputs split into hi + lo" : "") +
           (tuned.empty() ? "" : "; " + tuned) +
           (gemm_->small_products()
                ? "; products of up to " + std::to_string(cuda::kSmallGemmRows) + " rows on tensor cores" +
                      (silu_in_small_gemm_ ? ", SiLU·up in their gate_up product" : "")
                : "") +
           (stacked_logit_rows_ > 0
                ? "; lm_head on stacked hi + lo rows for up to " + std::to_string(stacked_logit_rows_) + " rows"
                : "") +
           "; prefill attention " +
           cuda::prefill_kernel_name(hd_) + "; decode attention " +
           cuda::decode_attention_summary(hd_, c_.num_heads, c_.num_kv_heads, decode_kernel_) + "; " +
           (persistent_ok_ ? "batch-1 decode steps: one persistent kernel"
                           : "batch-1 decode steps: kernel per op (" + persistent_why_not_ + ")") +
           (sublayer_.cluster ? "; batch-1 attention sublayer: one kernel, clusters of " + std::to_string(sublayer_.cluster)
                              : "; batch-1 attention sublayer: kernel per op (" + sublayer_why_not_ + ")");
  }
  int num_kv_blocks() const override { return num_blocks_; }

  CudaKvCacheMemory kv_cache_memory() const override {
    CudaKvCacheMemory m;
    m.base = kv_mem_.as<void>();
    m.bytes = kv_cache_bytes_;
    m.device_id = device_;
    m.num_layers = c_.num_layers;
    m.area_bytes = layer_cache_elems_ * static_cast<int64_t>(sizeof(T));
    m.block_bytes = static_cast<int64_t>(opt_.block_size) * kvdim_ * static_cast<int64_t>(sizeof(T));
    return m;
  }

  void synchronize() override { SY_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

  void step(const ForwardBatch& batch, const std::vector<SampleRequest>& requests,
            std::vector<SampledToken>* sampled) override {
    const auto t_enter = StepProfile::Clock::now();
    const int n = static_cast<int>(batch.tokens.size());
    const int m = static_cast<int>(batch.logit_tokens.size());
    const int num_seqs = static_cast<int>(batch.block_tables.size());
    if (n > max_tokens_ || m > max_rows_ || num_seqs > max_rows_) {
      throw std::runtime_error("step larger than the CUDA runner was sized for");
    }
    // Each sequence's tokens are consecutive in the flat batch, at consecutive positions.
    std::vector<int> first(num_seqs, -1), count(num_seqs, 0);
    for (int t = 0; t < n; ++t) {
      const int s = batch.token_seq[t];
      if (first[s] < 0) first[s] = t;
      ++count[s];
    }
    bool all_decode = n == num_seqs && m == n;
    for (int s = 0; s < num_seqs && all_decode; ++s) all_decode = count[s] == 1 && batch.logit_tokens[s] == first[s];
    int padded = n;
    bool use_graph = false;
    if (all_decode && !opt_.enforce_eager && !cuda_debug_enabled()) {
      for (int b : kGraphBatchSizes) {
        if (b >= n && b <= max_rows_) {
          padded = b;
          use_graph = true;
          break;
        }
      }
    }

    // Metadata, written to pinned memory and copied in one transfer.
    int32_t* tokens = meta_h_.as<int32_t>(off_tokens_);
    int32_t* positions = meta_h_.as<int32_t>(off_positions_);
    int32_t* slots = meta_h_.as<int32_t>(off_slots_);
    int32_t* logit_rows = meta_h_.as<int32_t>(off_logit_rows_);
    int32_t* decode_rows = meta_h_.as<int32_t>(off_decode_);
    int32_t* tiles = meta_h_.as<int32_t>(off_tiles_);
    int32_t* tables = meta_h_.as<int32_t>(off_tables_);
    std::copy(batch.tokens.begin(), batch.tokens.end(), tokens);
    std::copy(batch.positions.begin(), batch.positions.end(), positions);
    std::copy(batch.slots.begin(), batch.slots.end(), slots);
    std::copy(batch.logit_tokens.begin(), batch.logit_tokens.end(), logit_rows);
    int num_decode = 0, num_tiles = 0;
    const int tile_tokens = cuda::prefill_tile_tokens(c_.num_heads / c_.num_kv_heads, hd_);
    for (int s = 0; s < num_seqs; ++s) {
      const int last_pos = batch.positions[first[s] + count[s] - 1];
      const int used = last_pos / opt_.block_size + 1;
      std::copy(batch.block_tables[s], batch.block_tables[s] + used, tables + static_cast<int64_t>(s) * table_stride_);
      if (count[s] == 1) {
        decode_rows[3 * num_decode] = first[s];
        decode_rows[3 * num_decode + 1] = s;
        decode_rows[3 * num_decode + 2] = batch.positions[first[s]] + 1;
        ++num_decode;
      } else {
        for (int t = 0; t < count[s]; t += tile_tokens) {
          tiles[3 * num_tiles] = s;
          tiles[3 * num_tiles + 1] = first[s] + t;
          tiles[3 * num_tiles + 2] = std::min(tile_tokens, count[s] - t);
          ++num_tiles;
        }
      }
    }
    cuda::order_prefill_tiles(tiles, num_tiles, batch.positions.data());
    for (int i = n; i < padded; ++i) {
      // Padding rows of a graph batch: token 0 at position 0 of the scratch block.
      tokens[i] = 0;
      positions[i] = 0;
      slots[i] = scratch_block_ * opt_.block_size;
      logit_rows[i] = i;
      decode_rows[3 * i] = i;
      decode_rows[3 * i + 1] = i;
      decode_rows[3 * i + 2] = 1;
      tables[static_cast<int64_t>(i) * table_stride_] = scratch_block_;
    }
    const int seqs_in_meta = use_graph ? padded : num_seqs;
    const size_t meta_bytes = off_tables_ + sizeof(int32_t) * static_cast<size_t>(seqs_in_meta) * table_stride_;
    cudaGraphExec_t graph = use_graph ? graph_for(padded) : nullptr;
    const bool profiled = prof_.on && (graph || num_tiles > 0);
    const bool ncu = (graph && prof_.ncu_step >= 0 && prof_.graph_steps == prof_.ncu_step) ||
                     (num_tiles > 0 && prof_.ncu_prefill_step >= 0 && prof_.prefill_steps == prof_.ncu_prefill_step);
    if (graph) ++prof_.graph_steps;
    if (num_tiles > 0) ++prof_.prefill_steps;
    if (ncu) SY_CUDA_CHECK(cudaProfilerStart());
    const auto t_prep = StepProfile::Clock::now();
    if (profiled) SY_CUDA_CHECK(cudaEventRecord(prof_.ev[0], stream_));
    SY_CUDA_CHECK(cudaMemcpyAsync(meta_d_.as<void>(), meta_h_.as<void>(), meta_bytes, cudaMemcpyHostToDevice, stream_));

    if (graph) {
      SY_CUDA_CHECK(cudaGraphLaunch(graph, stream_));
    } else {
      forward(n, m, num_decode, num_tiles, splits_for(num_decode));
    }
    if (profiled) SY_CUDA_CHECK(cudaEventRecord(prof_.ev[1], stream_));
    const auto t_launched = StepProfile::Clock::now();
    profile_wait_us_ = 0;
    sample(m, requests, sampled);
    if (profiled && m == 0) SY_CUDA_CHECK(cudaEventRecord(prof_.ev[2], stream_));  // sample() records it otherwise
    if (step_trace_.on() && n == 1 && num_decode == 1 && num_tiles == 0 && m > 0) step_trace_.collect();
    if (ncu) SY_CUDA_CHECK(cudaProfilerStop());
    const auto t_exit = StepProfile::Clock::now();
    if (profiled) {
      float a = 0, b = 0;
      SY_CUDA_CHECK(cudaEventSynchronize(prof_.ev[2]));
      SY_CUDA_CHECK(cudaEventElapsedTime(&a, prof_.ev[0], prof_.ev[1]));
      SY_CUDA_CHECK(cudaEventElapsedTime(&b, prof_.ev[1], prof_.ev[2]));
      StepProfile::Phases& p = graph ? prof_.decode : prof_.prefill;
      if (prof_.has_last) p.outside_us += StepProfile::us(prof_.last_exit, t_enter);
      p.tokens += graph ? padded : n;
      p.prep_us += StepProfile::us(t_enter, t_prep);
      p.launch_us += StepProfile::us(t_prep, t_launched);
      p.sample_host_us += StepProfile::us(t_launched, t_exit);
      p.wait_us += profile_wait_us_;
      p.gpu_forward_us += 1000.0 * a;
      p.gpu_sample_us += 1000.0 * b;
      if (graph && ++p.counted == 200) p.report("graph decode steps");
      if (!graph && ++p.counted == 8) p.report("steps with prefill tokens");
    }
    prof_.last_exit = StepProfile::Clock::now();
    prof_.has_last = profiled;
  }

 private:
  struct LayerWeights {
    T *qkv, *o, *gate_up, *down;
    float *input_norm, *post_norm, *q_norm, *k_norm;
  };

  int splits_for(int rows) const {
    // Enough blocks for two waves over the SMs, but no more splits than 64-key tiles of context;
    // past one wave of the blocks the GPU runs at once, a few more splits where that fills the
    // last wave (bench/CUDA_NOTES.md, "Session 13"). Waves count the slots of the build a launch
    // runs: the 16-key build's for unsplit rows (decode_slots_: 264 on the H200, two blocks an
    // SM, where batch 64's one split a row is 1.94 waves), the 8-key build's for split rows
    // (decode_split_slots_: 396, three blocks an SM, where batch 8's 5 splits are one wave; counted
    // as 264 before session 16, its 7 splits were 1.13: +5% a step at 2048-token contexts).
    // Unsplit rows that already fill their last wave take no splits, though short of two waves
    // over the SMs: splitting them only adds the merge and a later wave (batch 32's 256 blocks,
    // 0.97 of a wave, ran 8-12.5% faster unsplit than in 3 splits; session 17).
    const int blocks = std::max(1, rows * c_.num_kv_heads);
    const auto last_wave_fill = [](double waves) { return waves / std::ceil(waves); };
    if (last_wave_fill(static_cast<double>(blocks) / decode_slots_) >= 0.8) return 1;
    const int cap = std::max(1, std::min(max_splits_, (opt_.max_model_len + 63) / 64));
    const int want = std::max(1, std::min((2 * num_sms_ + blocks - 1) / blocks, cap));
    // One split was settled above (it fills its last wave or it does not): from two on, split rows.
    for (int s = std::max(want, 2); s <= std::min(cap, 2 * want); ++s) {
      const double waves = static_cast<double>(blocks) * s / decode_split_slots_;
      if (waves < 1.0) break;
      if (last_wave_fill(waves) >= 0.8) return s;
    }
    return want;
  }

  void load_weights(const std::string& dir) {
    SafetensorsCheckpoint ck(dir);
    const int64_t h = c_.hidden_size, inter = c_.intermediate_size, V = c_.vocab_size;
    const bool tied = c_.tie_word_embeddings || !ck.has("lm_head.weight");
    Layout lay;
    const size_t e = sizeof(T);
    const size_t off_embed = lay.take(V * h * e);
    const size_t off_head = tied ? off_embed : lay.take(V * h * e);
    std::vector<size_t> off(c_.num_layers * 8);
    for (int l = 0; l < c_.num_layers; ++l) {
      size_t* o = &off[l * 8];
      o[0] = lay.take(qkvdim_ * h * e);
      o[1] = lay.take(h * qdim_ * e);
      o[2] = lay.take(2 * inter * h * e);
      o[3] = lay.take(h * inter * e);
      o[4] = lay.take(h * 4);
      o[5] = lay.take(h * 4);
      o[6] = lay.take(hd_ * 4);
      o[7] = lay.take(hd_ * 4);
    }
    const size_t off_final = lay.take(h * 4);
    const size_t off_freq = lay.take(hd_ / 2 * 4);
    weights_ = DeviceMemory(lay.size());
    weight_bytes_ = static_cast<int64_t>(lay.size());

    // A matrix in the other 16-bit type is converted on the GPU (a 0.6B model's 600M weights
    // take seconds on the host); an fp32 one on the host. Values past fp16's range are counted
    // and fail the load below rather than saturate unseen.
    using Other = std::conditional_t<is_bf16<T>(), __half, __nv_bfloat16>;
    const DType own = is_bf16<T>() ? DType::BF16 : DType::F16, other = is_bf16<T>() ? DType::F16 : DType::BF16;
    std::vector<uint16_t> staging;
    DeviceMemory staging_d, beyond_d(sizeof(unsigned));
    SY_CUDA_CHECK(cudaMemset(beyond_d.as<void>(), 0, sizeof(unsigned)));
    int64_t beyond_host = 0;
    std::string first_beyond;
    auto matrix = [&](const std::string& name, int64_t rows, int64_t cols, size_t at) {
      WeightView w = ck.matrix(name, {rows, cols});
      const size_t count = static_cast<size_t>(rows * cols);
      if (w.dtype == own) {
        SY_CUDA_CHECK(cudaMemcpy(weights_.as<char>(at), w.data, count * 2, cudaMemcpyHostToDevice));
        return;
      }
      if (w.dtype == other) {
        if (staging_d.bytes() < count * 2) staging_d = DeviceMemory(count * 2);
        // On the kernel's stream: a cudaMemcpy from pageable memory may return before its DMA
        // lands, and stream_ does not wait for the legacy stream (the first version converted
        // half-copied matrices of the 0.6B model, differently from run to run).
        SY_CUDA_CHECK(cudaMemcpyAsync(staging_d.as<void>(), w.data, count * 2, cudaMemcpyHostToDevice, stream_));
        cuda::convert_16bit<Other, T>(staging_d.as<Other>(), static_cast<int64_t>(count), weights_.as<T>(at),
                                      beyond_d.as<unsigned>(), stream_);
        SY_CUDA_CHECK(cudaStreamSynchronize(stream_));  // before staging_d takes the next matrix
        return;
      }
      staging.resize(count);
      for (size_t i = 0; i < count; ++i) {
        const float v = weight_at(w, static_cast<int64_t>(i));
        if (!is_bf16<T>() && std::fabs(v) > cuda::kHalfMax && beyond_host++ == 0) first_beyond = name;
        staging[i] = f32_to_half_bits(v, is_bf16<T>());
      }
      SY_CUDA_CHECK(cudaMemcpy(weights_.as<char>(at), staging.data(), count * 2, cudaMemcpyHostToDevice));
    };
    auto vector = [&](const std::string& name, int64_t len, size_t at) {
      std::vector<float> v = weight_to_f32(ck.matrix(name, {len}));
      SY_CUDA_CHECK(cudaMemcpy(weights_.as<char>(at), v.data(), v.size() * 4, cudaMemcpyHostToDevice));
    };
    matrix("model.embed_tokens.weight", V, h, off_embed);
    if (!tied) matrix("lm_head.weight", V, h, off_head);
    embed_ = weights_.as<T>(off_embed);
    lm_head_ = weights_.as<T>(off_head);
    for (int l = 0; l < c_.num_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l);
      const size_t* o = &off[l * 8];
      // Fused projections: q, k, v rows stacked into one [qkvdim, h]; gate then up into [2 inter, h].
      matrix(p + ".self_attn.q_proj.weight", qdim_, h, o[0]);
      matrix(p + ".self_attn.k_proj.weight", kvdim_, h, o[0] + qdim_ * h * e);
      matrix(p + ".self_attn.v_proj.weight", kvdim_, h, o[0] + (qdim_ + kvdim_) * h * e);
      matrix(p + ".self_attn.o_proj.weight", h, qdim_, o[1]);
      matrix(p + ".mlp.gate_proj.weight", inter, h, o[2]);
      matrix(p + ".mlp.up_proj.weight", inter, h, o[2] + inter * h * e);
      matrix(p + ".mlp.down_proj.weight", h, inter, o[3]);
      vector(p + ".input_layernorm.weight", h, o[4]);
      vector(p + ".post_attention_layernorm.weight", h, o[5]);
      LayerWeights L{weights_.as<T>(o[0]), weights_.as<T>(o[1]), weights_.as<T>(o[2]), weights_.as<T>(o[3]),
                     weights_.as<float>(o[4]), weights_.as<float>(o[5]), nullptr, nullptr};
      if (c_.qk_norm) {
        vector(p + ".self_attn.q_norm.weight", hd_, o[6]);
        vector(p + ".self_attn.k_norm.weight", hd_, o[7]);
        L.q_norm = weights_.as<float>(o[6]);
        L.k_norm = weights_.as<float>(o[7]);
      }
      layers_.push_back(L);
    }
    // Every copy above landed before any kernel on stream_ reads the weights (see above).
    SY_CUDA_CHECK(cudaDeviceSynchronize());
    unsigned beyond_gpu = 0;
    SY_CUDA_CHECK(cudaMemcpy(&beyond_gpu, beyond_d.as<void>(), sizeof(unsigned), cudaMemcpyDeviceToHost));
    if (const int64_t beyond = beyond_gpu + beyond_host; beyond > 0) {
      throw std::runtime_error(std::to_string(beyond) + (beyond == 1 ? " weight" : " weights") +
                               " of this checkpoint" + (beyond == 1 ? " lies" : " lie") +
                               " beyond float16's range (+-65504)" +
                               (first_beyond.empty() ? "" : ", the first in " + first_beyond) +
                               ": serve it with dtype bfloat16");
    }
    vector("model.norm.weight", h, off_final);
    final_norm_ = weights_.as<float>(off_final);
    std::vector<float> inv_freq(hd_ / 2);
    for (int i = 0; i < hd_ / 2; ++i) {
      inv_freq[i] = static_cast<float>(1.0 / std::pow(c_.rope_theta, static_cast<double>(2 * i) / hd_));
    }
    SY_CUDA_CHECK(cudaMemcpy(weights_.as<char>(off_freq), inv_freq.data(), inv_freq.size() * 4, cudaMemcpyHostToDevice));
    inv_freq_ = weights_.as<float>(off_freq);
  }

  void allocate_activations() {
    max_rows_ = opt_.max_num_seqs;
    max_tokens_ = std::max(opt_.max_num_batched_tokens, max_rows_);
    table_stride_ = (opt_.max_model_len + opt_.block_size - 1) / opt_.block_size;
    const int64_t N = max_tokens_, M = max_rows_, h = c_.hidden_size, inter = c_.intermediate_size;
    const size_t e = sizeof(T);
    Layout lay;
    // A split input is one GEMM over 2n rows (stacked_gemm): its buffer (hn, attn, act) holds the
    // lo rows after the hi rows, and the output (qkv, gu, delta) the two products.
    const size_t qkv_rows = split_.qkv ? 2 : 1, gu_rows = split_.gate_up ? 2 : 1;
    const size_t hn_rows = split_.qkv || split_.gate_up ? 2 : 1, delta_rows = split_.o || split_.down ? 2 : 1;
    const size_t x = lay.take(N * h * 4), x2 = lay.take(8 * h * 4), delta = lay.take(delta_rows * N * h * 4);
    const size_t hn = lay.take(hn_rows * N * h * e);
    const size_t qkv = lay.take(qkv_rows * N * qkvdim_ * 4), q = lay.take(N * qdim_ * e);
    const size_t attn = lay.take((split_.o ? 2 : 1) * N * qdim_ * e);
    const size_t attn_f = lay.take(N * qdim_ * 4), counters = lay.take(M * c_.num_kv_heads * 4);
    const size_t barrier = lay.take(cuda::decode_step_barrier_words() * 4);
    const size_t argmax_scratch = lay.take(cuda::argmax_scratch_bytes(static_cast<int>(M)));
    const size_t gu = lay.take(gu_rows * N * 2 * inter * 4), act = lay.take((split_.down ? 2 : 1) * N * inter * e);
    // The split lm_head input's lo rows follow its m hi rows (stacked_gemm), and the logits have
    // room for the lo products of up to stacked_logit_rows_ rows after the m hi ones.
    const size_t last = lay.take((split_.lm_head ? 2 : 1) * M * h * e);
    if (stacked_logit_rows_ < 0) stacked_logit_rows_ = c_.hidden_size / kStackedLogitRowsPerHidden;
    stacked_logit_rows_ = split_.lm_head ? std::min(stacked_logit_rows_, max_rows_) : 0;
    const size_t logits = lay.take((M + stacked_logit_rows_) * c_.vocab_size * 4);
    const size_t partials = lay.take(static_cast<size_t>(M) * c_.num_heads * kMaxSplits * (hd_ + 2) * 4);
    const size_t out_ids = lay.take(M * 4 * 2 + M * kMaxTopLogprobs * 8), params = lay.take(M * sizeof(cuda::SampleRow));
    const size_t rope = lay.take(static_cast<size_t>(opt_.max_model_len) * hd_ * 4);
    const size_t o_parts = lay.take(static_cast<size_t>(c_.num_kv_heads) * h * 4), o_out = lay.take(h * 4);
    const size_t tickets = lay.take(cuda::kAttentionSublayerMaxCluster * 4);
    act_mem_ = DeviceMemory(lay.size());
    x_ = act_mem_.as<float>(x);
    x2_ = act_mem_.as<float>(x2);
    attn_f_ = act_mem_.as<float>(attn_f);
    counters_ = act_mem_.as<int>(counters);
    argmax_scratch_ = act_mem_.as<void>(argmax_scratch);
    SY_CUDA_CHECK(cudaMemset(counters_, 0, M * c_.num_kv_heads * 4));
    barrier_ = act_mem_.as<unsigned>(barrier);
    SY_CUDA_CHECK(cudaMemset(barrier_, 0, cuda::decode_step_barrier_words() * 4));
    delta_ = act_mem_.as<float>(delta);
    hn_ = act_mem_.as<T>(hn);
    qkv_ = act_mem_.as<float>(qkv);
    q_ = act_mem_.as<T>(q);
    attn_ = act_mem_.as<T>(attn);
    gu_ = act_mem_.as<float>(gu);
    act_ = act_mem_.as<T>(act);
    last_ = act_mem_.as<T>(last);
    logits_ = act_mem_.as<float>(logits);
    partials_ = act_mem_.as<float>(partials);
    out_d_ = act_mem_.as<char>(out_ids);
    params_d_ = act_mem_.as<cuda::SampleRow>(params);
    rope_ = act_mem_.as<float>(rope);
    o_parts_ = act_mem_.as<float>(o_parts);
    o_out_ = act_mem_.as<float>(o_out);
    tickets_ = act_mem_.as<int>(tickets);
    SY_CUDA_CHECK(cudaMemset(tickets_, 0, cuda::kAttentionSublayerMaxCluster * 4));
    // inv_freq_'s pageable cudaMemcpy may still be landing, and stream_ does not wait for it.
    SY_CUDA_CHECK(cudaDeviceSynchronize());
    cuda::rope_table(inv_freq_, opt_.max_model_len, static_cast<int>(hd_), rope_, stream_);
    SY_CUDA_CHECK(cudaStreamSynchronize(stream_));
    out_bytes_ = M * 4 * 2 + M * kMaxTopLogprobs * 8;
    out_h_ = PinnedMemory(out_bytes_);
    params_h_ = PinnedMemory(M * sizeof(cuda::SampleRow));

    Layout meta;
    off_tokens_ = meta.take(N * 4);
    off_positions_ = meta.take(N * 4);
    off_slots_ = meta.take(N * 4);
    off_logit_rows_ = meta.take(M * 4);
    off_decode_ = meta.take(M * 12);
    off_tiles_ = meta.take((N + M) * 12);
    off_tables_ = meta.take(M * table_stride_ * 4);
    meta_d_ = DeviceMemory(meta.size());
    meta_h_ = PinnedMemory(meta.size());
  }

  void allocate_kv_cache() {
    size_t free_bytes = 0, total_bytes = 0;
    SY_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    // gpu_memory_utilization is this engine's share of the card, as vLLM's: the share less what
    // this engine allocated (weights, activations), never more than is free (other processes,
    // e.g. a second worker on the GPU, hold their own shares), less room for the CUDA context,
    // cuBLAS's workspaces and the decode graphs. Counted from its own allocations, not from
    // changes in free memory, so engines that share a GPU may start at the same time.
    constexpr int64_t kReserve = 1LL << 30;
    const int64_t own = static_cast<int64_t>(weights_.bytes() + act_mem_.bytes() + meta_d_.bytes());
    const int64_t share = static_cast<int64_t>(opt_.gpu_memory_utilization * static_cast<double>(total_bytes));
    int64_t budget = std::min(share - own, static_cast<int64_t>(free_bytes)) - kReserve;
    if (opt_.kv_cache_memory_bytes > 0) budget = std::min(budget, opt_.kv_cache_memory_bytes);
    const int64_t block_bytes = 2LL * c_.num_layers * opt_.block_size * kvdim_ * static_cast<int64_t>(sizeof(T));
    const int64_t blocks = budget / block_bytes - 1;  // one more block is the graphs' scratch
    if (blocks < 1) {
      throw std::runtime_error("no room for the KV cache on the GPU: this engine holds " + std::to_string(own >> 20) +
                               " MiB (weights, activations), " + std::to_string(free_bytes >> 20) + " MiB of " +
                               std::to_string(total_bytes >> 20) + " MiB are free, gpu_memory_utilization " +
                               std::to_string(opt_.gpu_memory_utilization) + " allows " + std::to_string(share >> 20) +
                               " MiB, and 1024 MiB stay free for the context, cuBLAS and graphs; one block takes " +
                               std::to_string(block_bytes) + " bytes");
    }
    num_blocks_ = static_cast<int>(std::min<int64_t>(blocks, 1 << 28));
    scratch_block_ = num_blocks_;
    layer_cache_elems_ = static_cast<int64_t>(num_blocks_ + 1) * opt_.block_size * kvdim_;
    kv_mem_ = DeviceMemory(static_cast<size_t>(2 * c_.num_layers * layer_cache_elems_) * sizeof(T));
    kv_cache_bytes_ = static_cast<int64_t>(kv_mem_.bytes());
  }

  // The prefill GEMMs' algorithms, timed once here for every size class up to this engine's
  // largest step (gemm.h), before any decode graph captures one. Each timed product takes the next
  // layer's matrix, so weights stream from memory as they do in a step. The buffers it fills (the
  // GEMM input hn_, the products qkv_ and gu_) are scratch until the first step.
  void tune_gemms() {
    const int64_t N = max_tokens_, h = c_.hidden_size, inter = c_.intermediate_size;
    const int64_t hn_rows = ((split_.qkv || split_.gate_up) ? 2 : 1) * N;
    // Inputs with a spread of values rather than a constant, since the tensor cores' power, and
    // with it their clock, depends on the operands: rows of layer 0's gate_up matrix (h long too),
    // repeated. Where inputs are split, the lo rows get these values as well.
    const int64_t source_rows = 2 * inter;
    for (int64_t r = 0; r < hn_rows; r += source_rows) {
      const int64_t count = std::min(source_rows, hn_rows - r);
      SY_CUDA_CHECK(cudaMemcpyAsync(hn_ + r * h, layers_[0].gate_up, static_cast<size_t>(count * h) * sizeof(T),
                                    cudaMemcpyDeviceToDevice, stream_));
    }
    const auto rows = [N](bool split) { return split ? 2 * N : N; };
    std::vector<const void*> qkv, gate_up;
    for (const LayerWeights& L : layers_) {
      qkv.push_back(L.qkv);
      gate_up.push_back(L.gate_up);
    }
    // qkv and gate_up into their products (stacked_gemm_products: prefill-sized steps are not pure
    // decode steps, whose fused attention reads an fp32 qkv).
    gemm_->tune(hn_, rows(split_.qkv), qkv, qkvdim_, h, kGemmType, qkv_, false, kProducts16);
    gemm_->tune(hn_, rows(split_.gate_up), gate_up, 2 * inter, h, kGemmType, gu_, false, kProducts16);
    // o and down stay on cuBLAS's default: bench/cuda_gemm_algos.cu finds nothing faster for them
    // (within 1%), and loads that timed others fastest here (8-CTA cluster algorithms) ran the
    // pair up to 1.2x slower inside the step (bench/CUDA_NOTES.md, "Session 8").
    SY_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  T* k_cache(int l) const { return kv_mem_.as<T>() + (2LL * l) * layer_cache_elems_; }
  T* v_cache(int l) const { return kv_mem_.as<T>() + (2LL * l + 1) * layer_cache_elems_; }

  static constexpr cuda::Half16 kGemmType = is_bf16<T>() ? cuda::Half16::BF16 : cuda::Half16::F16;

  /**
   * y = x · wᵀ, plus x_lo · wᵀ when the input is split (x_lo not null); with `add`, y += instead
   * (the residual stream taking a projection's output in the GEMM's epilogue).
   */
  void gemm(const T* x, const T* x_lo, int64_t n, const T* w, int64_t out, int64_t in, float* y, bool add = false) {
    gemm_->run(x, n, w, out, in, kGemmType, y, add);
    if (x_lo) gemm_->run(x_lo, n, w, out, in, kGemmType, y, /*accumulate=*/true);
  }
  void gemv(const cuda::GemvInput& x, int n, const T* w, int64_t out, int64_t in, float* y) {
    cuda::gemv<T>(x, n, w, static_cast<int>(out), static_cast<int>(in), y, stream_);
  }

  /**
   * A split input whose lo rows follow its n hi rows (x + n * in): one GEMM over the 2n rows, so
   * y holds W·hi in its first n rows and W·lo in the next n, which the consumer adds. Cheaper
   * than gemm's second call, which reads y back to add to it (bench/CUDA_NOTES.md, "Session 6").
   * Without the split, y = x · wᵀ over n rows.
   */
  void stacked_gemm(const T* x, bool split, int64_t n, const T* w, int64_t out, int64_t in, float* y) {
    gemm_->run(x, split ? 2 * n : n, w, out, in, kGemmType, y);
  }

  using Product = cuda::Product<T>;
  static constexpr bool kProducts16 = !std::is_same_v<Product, float>;

  /** stacked_gemm into the qkv or gate_up products as their separate pass reads them (kernels.h, Product). */
  void stacked_gemm_products(const T* x, bool split, int64_t n, const T* w, int64_t out, int64_t in, Product* y) {
    if constexpr (kProducts16) {
      gemm_->run_16bit_out(x, split ? 2 * n : n, w, out, in, kGemmType, y);
    } else {
      stacked_gemm(x, split, n, w, out, in, y);
    }
  }

  /**
   * A projection of x (n rows, lo rows after them when split) that joins the residual stream:
   * added to x_ by the GEMM (beta = 1), or, split and with a norm to follow, its two products
   * left in delta_ for that norm to add.
   */
  void add_to_stream(const T* x, bool split, int64_t n, const T* w, int64_t out, int64_t in, bool norm_follows) {
    if (split && norm_follows) return stacked_gemm(x, true, n, w, out, in, delta_);
    gemm(x, split ? x + n * in : nullptr, n, w, out, in, x_, /*add=*/true);
  }

  /** The persistent batch-1 decode step's arguments (kernels.h, DecodeStep). */
  cuda::DecodeStep<T> persistent_step(const int32_t* decode_rows, const int32_t* slots, const int32_t* tables,
                                      int splits) const {
    cuda::DecodeStep<T> s{};
    s.layers = decode_layers_.as<cuda::DecodeLayer<T>>();
    s.num_layers = c_.num_layers;
    s.hidden = c_.hidden_size;
    s.inter = c_.intermediate_size;
    s.num_heads = c_.num_heads;
    s.num_kv_heads = c_.num_kv_heads;
    s.head_dim = hd_;
    s.eps = static_cast<float>(c_.rms_norm_eps);
    s.split = {split_.qkv, split_.o, split_.gate_up, split_.down};
    s.rows = decode_rows;
    s.slots = slots;
    s.rope = rope_;
    s.block_tables = tables;
    s.table_stride = table_stride_;
    s.block_size = opt_.block_size;
    s.splits = splits;
    s.x = x_;
    s.x2 = x2_;
    s.delta = delta_;
    s.qkv = qkv_;
    s.attn = attn_f_;
    s.gate_up = gu_;
    s.partials = partials_;
    s.counters = counters_;
    s.barrier = barrier_;
    s.trace = step_trace_.device();
    return s;
  }

  // Why a batch-1 fused path switched by the environment variable `env` cannot run, whatever the
  // GPU: "" when it can be tried.
  std::string batch1_fusion_blocker(bool wanted, const char* env) const {
    if (!wanted) return std::string(env) + " is off";
    if (!fuse_decode_ || !gemv_ok_ || gemv_max_rows_ < 1) return "it needs the decode fusion and gemv at batch 1";
    return "";
  }

  // The persistent batch-1 decode step, where this GPU and shape allow it (decode_step_prepare);
  // otherwise batch 1 runs kernel per op, as larger batches do, and the engine's info says why.
  void prepare_persistent_step() {
    persistent_ok_ = false;
    persistent_why_not_ = batch1_fusion_blocker(persistent_wanted_, "SWITCHYARD_CUDA_PERSISTENT");
    if (!persistent_why_not_.empty()) return;
    std::vector<cuda::DecodeLayer<T>> layers;
    for (int l = 0; l < c_.num_layers; ++l) {
      const LayerWeights& L = layers_[l];
      layers.push_back({L.qkv, L.o, L.gate_up, L.down, L.input_norm, L.post_norm, L.q_norm, L.k_norm, k_cache(l),
                        v_cache(l)});
    }
    decode_layers_ = DeviceMemory(layers.size() * sizeof(cuda::DecodeLayer<T>));
    SY_CUDA_CHECK(cudaMemcpy(decode_layers_.as<void>(), layers.data(), layers.size() * sizeof(cuda::DecodeLayer<T>),
                             cudaMemcpyHostToDevice));
    persistent_ok_ = cuda::decode_step_prepare<T>(persistent_step(nullptr, nullptr, nullptr, 1), &persistent_why_not_);
    if (persistent_ok_) step_trace_.init(num_sms_, c_.num_layers);
  }

  // The batch-1 attention sublayer as one kernel, where this GPU and shape allow it
  // (attention_sublayer_prepare); otherwise its three kernels, and the engine's info says why.
  void prepare_attention_sublayer() {
    sublayer_ = {};
    sublayer_why_not_ = batch1_fusion_blocker(sublayer_wanted_, "SWITCHYARD_CUDA_ATTENTION_SUBLAYER");
    if (!sublayer_why_not_.empty()) return;
    cuda::AttentionSublayer<T>& s = sublayer_;
    s.eps = static_cast<float>(c_.rms_norm_eps);
    s.rope = rope_;
    s.table_stride = table_stride_;
    s.block_size = opt_.block_size;
    s.hidden = c_.hidden_size;
    s.num_heads = c_.num_heads;
    s.num_kv_heads = c_.num_kv_heads;
    s.head_dim = hd_;
    s.split_qkv = split_.qkv;
    s.split_o = split_.o;
    s.o_parts = o_parts_;
    s.tickets = tickets_;
    s.out = o_out_;
    if (!cuda::attention_sublayer_prepare<T>(&s, sublayer_cluster_, &sublayer_why_not_)) s.cluster = 0;
  }

  // Launches only (no host synchronization), so that a decode step can be captured in a graph.
  void forward(int n, int m, int num_decode, int num_tiles, int splits) {
    const int h = c_.hidden_size, inter = c_.intermediate_size;
    const float eps = static_cast<float>(c_.rms_norm_eps);
    const int32_t* tokens = meta_d_.as<int32_t>(off_tokens_);
    const int32_t* positions = meta_d_.as<int32_t>(off_positions_);
    const int32_t* slots = meta_d_.as<int32_t>(off_slots_);
    const int32_t* logit_rows = meta_d_.as<int32_t>(off_logit_rows_);
    const int32_t* decode_rows = meta_d_.as<int32_t>(off_decode_);
    const int32_t* tiles = meta_d_.as<int32_t>(off_tiles_);
    const int32_t* tables = meta_d_.as<int32_t>(off_tables_);
    const cuda::QkvLayout qkv_layout{c_.num_heads, c_.num_kv_heads, hd_, eps, opt_.block_size};
    cuda::embed<T>(embed_, tokens, n, h, x_, stream_);
    const bool small = n <= gemv_max_rows_ && gemv_ok_;
    // A pure decode step: the attention kernel makes q and stores k, v itself (one launch less a layer).
    const bool fuse_decode = num_decode == n && num_tiles == 0 && fuse_decode_;
    float* xa = x_;   // the residual stream before this layer's adds
    float* xb = x2_;  // small steps: where the fused prologue writes it after an add
    using GI = cuda::GemvInput;
    // Batch 1: every layer in one persistent kernel, which leaves the stream in x_ as the loop
    // below does (two swaps a layer).
    const bool persistent = n == 1 && small && fuse_decode && persistent_ok_;
    // Batch 1 otherwise: each layer's qkv, attention and o in one kernel, where prepared.
    const bool sublayer = n == 1 && small && fuse_decode && sublayer_.cluster != 0;
    if (persistent) {
      cuda::decode_step<T>(persistent_step(decode_rows, slots, tables, splits), stream_);
    }
    // Split GEMM inputs (cuBLAS steps): the lo rows follow the n hi rows of their buffer, and one
    // GEMM over the 2n rows leaves the two products in consecutive halves of its output.
    const int64_t rows = n;
    T* hn_lo = hn_ + rows * h;
    // The qkv and gate_up buffers hold fp32 (gemv steps; pure decode steps' qkv, which the fused
    // attention reads) or the products as their separate pass reads them (kernels.h, Product).
    Product* qkv_p = reinterpret_cast<Product*>(qkv_);
    Product* gu_p = reinterpret_cast<Product*>(gu_);
    const bool qkv_split = !small && split_.qkv;
    const float* qkv_lo = qkv_split ? qkv_ + rows * qkvdim_ : nullptr;
    const Product* qkv_p_lo = qkv_split ? qkv_p + rows * qkvdim_ : nullptr;
    T* attn_lo = split_.o ? attn_ + rows * qdim_ : nullptr;
    const Product* gu_p_lo = split_.gate_up ? gu_p + rows * 2 * inter : nullptr;
    T* act_lo = split_.down ? act_ + rows * inter : nullptr;
    // Small steps (gemv) carry each projection's output in delta_ to the next fused prologue,
    // which adds it to the stream. Larger steps add the o and down projections to the stream x_
    // in the GEMM itself (beta = 1), so the norms after them only read it; with a split input,
    // the two products wait in delta_ (hi, then lo) for the next norm, which adds them.
    bool delta_pending = false;
    for (int l = 0; l < c_.num_layers && !persistent; ++l) {
      const LayerWeights& L = layers_[l];
      if (sublayer) {
        cuda::AttentionSublayer<T> s = sublayer_;
        s.x = xa;
        s.delta = l == 0 ? nullptr : delta_;
        s.x_out = xb;
        s.input_norm = L.input_norm;
        s.qkv = L.qkv;
        s.o = L.o;
        s.q_norm = L.q_norm;
        s.k_norm = L.k_norm;
        s.rows = decode_rows;
        s.slots = slots;
        s.block_tables = tables;
        s.k_cache = k_cache(l);
        s.v_cache = v_cache(l);
        cuda::attention_sublayer<T>(s, stream_);
        std::swap(xa, xb);
        mlp_gemv(xa, xb, o_out_, L, n);
        continue;
      }
      if (small) {
        const float* d_in = l == 0 ? nullptr : delta_;
        gemv(GI{GI::kNorm, xa, d_in, nullptr, L.input_norm, eps, xb, split_.qkv}, n, L.qkv, qkvdim_, h, qkv_);
        std::swap(xa, xb);
      } else {
        cuda::add_rmsnorm<T>(x_, delta_pending ? delta_ : nullptr, delta_pending ? delta_ + rows * h : nullptr,
                             L.input_norm, n, h, eps, hn_, split_.qkv ? hn_lo : nullptr, stream_);
        if (fuse_decode) {
          stacked_gemm(hn_, split_.qkv, n, L.qkv, qkvdim_, h, qkv_);
        } else {
          stacked_gemm_products(hn_, split_.qkv, n, L.qkv, qkvdim_, h, qkv_p);
        }
      }
      cuda::DecodeFusion<T> fuse;
      if (fuse_decode) {
        fuse = {qkv_, slots, rope_, L.q_norm, L.k_norm, eps, k_cache(l), v_cache(l), qkv_lo};
      } else if (small) {
        cuda::qkv_norm_rope_store<T, float>(qkv_, nullptr, n, positions, slots, rope_, L.q_norm, L.k_norm,
                                            qkv_layout, q_, k_cache(l), v_cache(l), stream_);
      } else {
        cuda::qkv_norm_rope_store<T, Product>(qkv_p, qkv_p_lo, n, positions, slots, rope_, L.q_norm, L.k_norm,
                                              qkv_layout, q_, k_cache(l), v_cache(l), stream_);
      }
      const cuda::PagedKv<T> kv{k_cache(l), v_cache(l), tables, table_stride_, opt_.block_size, c_.num_kv_heads, hd_};
      // gemv rounds (and splits) its fp32 input itself; cuBLAS takes the o input as attention stores it.
      const cuda::AttentionOut<T> attn_out =
          small ? cuda::AttentionOut<T>{attn_f_} : cuda::AttentionOut<T>{nullptr, attn_, attn_lo};
      cuda::paged_attention_decode<T>(q_, decode_rows, num_decode, kv, c_.num_heads, splits, partials_,
                                      counters_, attn_out, fuse, decode_kernel_, stream_);
      cuda::paged_attention_prefill<T>(q_, tiles, num_tiles, positions, kv, c_.num_heads, attn_out, stream_);
      if (small) {
        GI o_in{GI::kF32, attn_f_};
        o_in.split = split_.o;
        gemv(o_in, n, L.o, h, qdim_, delta_);
        mlp_gemv(xa, xb, delta_, L, n);
      } else {
        add_to_stream(attn_, split_.o, n, L.o, h, qdim_, /*norm_follows=*/true);
        cuda::add_rmsnorm<T>(x_, split_.o ? delta_ : nullptr, split_.o ? delta_ + rows * h : nullptr, L.post_norm, n, h,
                             eps, hn_, split_.gate_up ? hn_lo : nullptr, stream_);
        gate_up_silu(n, L, gu_p, gu_p_lo, act_lo);
        // The last layer's down has no norm after it in this loop: it goes into x_ itself.
        const bool norm_follows = l + 1 < c_.num_layers;
        add_to_stream(act_, split_.down, n, L.down, h, inter, norm_follows);
        delta_pending = split_.down && norm_follows;
      }
    }
    if (m == 0) return;
    const float* last_delta = small ? delta_ : nullptr;  // the last down projection, if not in the stream yet
    if (m <= gemv_max_rows_ && gemv_ok_) {
      gemv(GI{GI::kNorm, xa, last_delta, logit_rows, final_norm_, eps, nullptr, split_.lm_head}, m, lm_head_,
           c_.vocab_size, h, logits_);
    } else {
      T* last_lo = split_.lm_head ? last_ + static_cast<int64_t>(m) * h : nullptr;
      cuda::gather_add_rmsnorm<T>(xa, last_delta, logit_rows, m, final_norm_, h, eps, last_, last_lo, stream_);
      if (last_lo && m <= stacked_logit_rows_) {
        // One read of lm_head's weights (297 MiB for the 0.6B shape) instead of gemm's two; the
        // lo products land after the m hi rows and are added in.
        const int64_t count = static_cast<int64_t>(m) * c_.vocab_size;
        stacked_gemm(last_, true, m, lm_head_, c_.vocab_size, h, logits_);
        cuda::add_into(logits_, logits_ + count, count, stream_);
      } else {
        gemm(last_, last_lo, m, lm_head_, c_.vocab_size, h, logits_);
      }
    }
  }

  // SiLU·up of the gate_up product of hn_ (n rows; lo rows after them when split) into act_ and
  // act_lo: one small_gemm_silu launch where it serves (steps of a few rows), else the products
  // in gu_p (and gu_p_lo) and a silu_mul pass. The same bits either way.
  void gate_up_silu(int n, const LayerWeights& L, Product* gu_p, const Product* gu_p_lo, T* act_lo) {
    const int64_t h = c_.hidden_size, inter = c_.intermediate_size;
    const int64_t rows = split_.gate_up ? 2 * n : n;
    if (silu_in_small_gemm_ && gemm_->small_products() &&
        cuda::small_gemm_silu_fits(hn_, rows, split_.gate_up, L.gate_up, inter, h)) {
      cuda::small_gemm_silu(hn_, rows, split_.gate_up, L.gate_up, inter, h, kGemmType, act_, act_lo, stream_);
      return;
    }
    stacked_gemm_products(hn_, split_.gate_up, n, L.gate_up, 2 * inter, h, gu_p);
    cuda::silu_mul<T>(gu_p, gu_p_lo, n, static_cast<int>(inter), act_, act_lo, stream_);
  }

  // A small step's MLP half (gemv): gate_up with the RMSNorm of xa + o (xa + o written to xb), then
  // down into delta_; swaps xa and xb as the stream moves.
  void mlp_gemv(float*& xa, float*& xb, const float* o, const LayerWeights& L, int n) {
    using GI = cuda::GemvInput;
    const int64_t h = c_.hidden_size, inter = c_.intermediate_size;
    const GI post{GI::kNorm, xa, o, nullptr, L.post_norm, static_cast<float>(c_.rms_norm_eps), xb, split_.gate_up};
    std::swap(xa, xb);
    // SiLU·up made where gate and up are summed (gemv_silu), so down reads a plain input;
    // the same values as the SiLU·up prologue of down.
    GI down_in{silu_in_gate_up_ ? GI::kF32 : GI::kSilu, gu_};
    down_in.split = split_.down;
    if (silu_in_gate_up_) {
      cuda::gemv_silu<T>(post, n, L.gate_up, static_cast<int>(inter), static_cast<int>(h), gu_, stream_);
    } else {
      gemv(post, n, L.gate_up, 2 * inter, h, gu_);
    }
    gemv(down_in, n, L.down, h, inter, delta_);
  }

  // The decode graph of a padded batch size, captured on first use. A size whose capture fails
  // runs eagerly from then on (said once on stderr): graphs are an optimization, not a need.
  cudaGraphExec_t graph_for(int batch) {
    auto it = graphs_.find(batch);
    if (it != graphs_.end()) return it->second;
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    SY_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    try {
      forward(batch, batch, batch, 0, splits_for(batch));
      SY_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
      SY_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
      cudaGraphDestroy(graph);
    } catch (const std::exception& e) {
      cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
      cudaStreamIsCapturing(stream_, &capturing);
      if (capturing != cudaStreamCaptureStatusNone) {
        cudaGraph_t partial = nullptr;
        cudaStreamEndCapture(stream_, &partial);
        if (partial) cudaGraphDestroy(partial);
      }
      if (graph) cudaGraphDestroy(graph);
      cudaGetLastError();
      fprintf(stderr, "switchyard: CUDA graph capture for decode batch %d failed, running it eagerly: %s\n", batch,
              e.what());
      exec = nullptr;
    }
    graphs_[batch] = exec;
    return exec;
  }

  // Greedy rows take the argmax, random rows sample on the device; rows with penalties or
  // min_tokens suppression (rare) copy their logits back and use the host sampler.
  void sample(int m, const std::vector<SampleRequest>& requests, std::vector<SampledToken>* sampled) {
    sampled->assign(m, SampledToken{});
    if (m == 0) return;
    const int V = c_.vocab_size;
    std::vector<int> host_rows, random_rows;
    int top_k = 0;
    for (int i = 0; i < m; ++i) {
      const SamplingParams& p = *requests[i].params;
      const SamplingContext& ctx = requests[i].context;
      const bool suppress = ctx.num_output < p.min_tokens &&
                            (!p.stop_token_ids.empty() || (!p.ignore_eos && !ctx.eos_token_ids->empty()));
      if (p.repetition_penalty != 1.0f || p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f || suppress ||
          p.logprobs > kMaxTopLogprobs) {
        host_rows.push_back(i);
        continue;
      }
      if (!is_greedy(p)) random_rows.push_back(i);
      top_k = std::max(top_k, p.logprobs);
    }
    int32_t* ids_d = reinterpret_cast<int32_t*>(out_d_);
    float* lp_d = reinterpret_cast<float*>(out_d_ + max_rows_ * 4);
    int32_t* top_ids_d = reinterpret_cast<int32_t*>(out_d_ + max_rows_ * 8);
    float* top_lp_d = reinterpret_cast<float*>(out_d_ + max_rows_ * 8 + max_rows_ * kMaxTopLogprobs * 4);
    cuda::argmax_logprob(logits_, m, V, ids_d, lp_d, argmax_scratch_, stream_);
    if (!random_rows.empty()) {
      cuda::SampleRow* rows = params_h_.as<cuda::SampleRow>();
      for (size_t k = 0; k < random_rows.size(); ++k) {
        const SampleRequest& r = requests[random_rows[k]];
        const SamplingParams& p = *r.params;
        rows[k] = {random_rows[k], p.temperature, p.top_p, p.min_p, p.top_k, static_cast<float>(r.rng->uniform())};
      }
      SY_CUDA_CHECK(cudaMemcpyAsync(params_d_, rows, random_rows.size() * sizeof(cuda::SampleRow),
                                    cudaMemcpyHostToDevice, stream_));
      // Sampled ids overwrite the argmax of their rows: the kernel writes entry k, so it gets
      // its own region (the top-logprob area is free when sampling; see below).
      cuda::sample_rows(logits_, static_cast<int>(random_rows.size()), V, params_d_, top_ids_d, top_lp_d, stream_);
    }
    // Copy back what was asked for: ids, their logprobs, sampled ids, top logprobs.
    char* out_h = out_h_.as<char>();
    SY_CUDA_CHECK(cudaMemcpyAsync(out_h, ids_d, m * 4, cudaMemcpyDeviceToHost, stream_));
    SY_CUDA_CHECK(cudaMemcpyAsync(out_h + max_rows_ * 4, lp_d, m * 4, cudaMemcpyDeviceToHost, stream_));
    if (!random_rows.empty()) {
      SY_CUDA_CHECK(cudaMemcpyAsync(out_h + max_rows_ * 8, top_ids_d, random_rows.size() * 4, cudaMemcpyDeviceToHost, stream_));
      SY_CUDA_CHECK(cudaMemcpyAsync(out_h + max_rows_ * 8 + max_rows_ * kMaxTopLogprobs * 4, top_lp_d,
                                    random_rows.size() * 4, cudaMemcpyDeviceToHost, stream_));
    }
    if (prof_.on) SY_CUDA_CHECK(cudaEventRecord(prof_.ev[2], stream_));
    const auto t_wait = StepProfile::Clock::now();
    SY_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (prof_.on) profile_wait_us_ = StepProfile::us(t_wait, StepProfile::Clock::now());
    const int32_t* ids_h = out_h_.as<int32_t>();
    const float* lp_h = out_h_.as<float>(max_rows_ * 4);
    for (int i = 0; i < m; ++i) {
      (*sampled)[i].token = ids_h[i];
      (*sampled)[i].logprob = lp_h[i];
    }
    const int32_t* sid_h = out_h_.as<int32_t>(max_rows_ * 8);
    const float* slp_h = out_h_.as<float>(max_rows_ * 8 + max_rows_ * kMaxTopLogprobs * 4);
    for (size_t k = 0; k < random_rows.size(); ++k) {
      (*sampled)[random_rows[k]].token = sid_h[k];
      (*sampled)[random_rows[k]].logprob = slp_h[k];
    }
    if (top_k > 0) {
      cuda::top_logprobs(logits_, m, V, top_k, top_ids_d, top_lp_d, stream_);
      SY_CUDA_CHECK(cudaMemcpyAsync(out_h + max_rows_ * 8, top_ids_d, static_cast<size_t>(m) * top_k * 4,
                                    cudaMemcpyDeviceToHost, stream_));
      SY_CUDA_CHECK(cudaMemcpyAsync(out_h + max_rows_ * 8 + max_rows_ * kMaxTopLogprobs * 4, top_lp_d,
                                    static_cast<size_t>(m) * top_k * 4, cudaMemcpyDeviceToHost, stream_));
      SY_CUDA_CHECK(cudaStreamSynchronize(stream_));
      for (int i = 0; i < m; ++i) {
        const int k = requests[i].params->logprobs;
        for (int j = 0; j < k && j < top_k; ++j) (*sampled)[i].top.push_back({sid_h[i * top_k + j], slp_h[i * top_k + j]});
      }
    }
    if (!host_rows.empty()) {
      std::vector<float> row(V);
      for (int i : host_rows) {
        SY_CUDA_CHECK(cudaMemcpy(row.data(), logits_ + static_cast<int64_t>(i) * V, V * 4, cudaMemcpyDeviceToHost));
        const SampleRequest& r = requests[i];
        (*sampled)[i] = sample_token(row.data(), V, *r.params, r.context, *r.rng);
      }
    }
  }

  ModelConfig c_;
  CudaRunnerOptions opt_;
  int device_ = 0;  // the runner uses the process's first visible GPU
  cudaStream_t stream_ = nullptr;
  int num_sms_ = 1;
  std::unique_ptr<cuda::Gemm> gemm_;
  int hd_ = 0;
  int64_t qdim_ = 0, kvdim_ = 0, qkvdim_ = 0;

  DeviceMemory weights_;
  int64_t weight_bytes_ = 0;
  T* embed_ = nullptr;
  T* lm_head_ = nullptr;
  std::vector<LayerWeights> layers_;
  float* final_norm_ = nullptr;
  float* inv_freq_ = nullptr;
  float* rope_ = nullptr;  // cuda::rope_table of positions [0, max_model_len)

  int max_rows_ = 0, max_tokens_ = 0, table_stride_ = 0;
  DeviceMemory act_mem_;
  float *x2_ = nullptr, *attn_f_ = nullptr;
  int* counters_ = nullptr;
  void* argmax_scratch_ = nullptr;
  bool gemv_ok_ = false;
  float *x_ = nullptr, *delta_ = nullptr, *qkv_ = nullptr, *gu_ = nullptr, *logits_ = nullptr, *partials_ = nullptr;
  T *hn_ = nullptr, *q_ = nullptr, *attn_ = nullptr, *act_ = nullptr, *last_ = nullptr;
  SplitGemmInputs split_;
  bool fuse_decode_ = true;
  int gemv_max_rows_ = 2;
  int stacked_logit_rows_ = -1;  // SWITCHYARD_CUDA_LM_HEAD_STACKED_ROWS; -1: hidden / kStackedLogitRowsPerHidden
  int max_splits_ = kMaxSplits;  // SWITCHYARD_CUDA_DECODE_SPLITS
  int decode_slots_ = 1;          // decode attention blocks the GPU runs at once (unsplit rows)
  int decode_split_slots_ = 1;    // the same for split rows
  bool silu_in_gate_up_ = true;   // SWITCHYARD_CUDA_GEMV_SILU
  bool silu_in_small_gemm_ = true;  // SWITCHYARD_CUDA_SMALL_GEMM_SILU
  bool persistent_wanted_ = true, persistent_ok_ = false;
  bool sublayer_wanted_ = kSublayerByDefault;  // SWITCHYARD_CUDA_ATTENTION_SUBLAYER
  int sublayer_cluster_ = 0;
  cuda::DecodeKernel decode_kernel_ = cuda::DecodeKernel::TensorCore;
  cuda::AttentionSublayer<T> sublayer_{};  // the launch's shape; cluster 0 where it does not run
  std::string sublayer_why_not_;
  float *o_parts_ = nullptr, *o_out_ = nullptr;  // its scratch and output
  int* tickets_ = nullptr;
  std::string persistent_why_not_;
  DeviceMemory decode_layers_;  // the persistent step's per-layer pointers (cuda::DecodeLayer)
  unsigned* barrier_ = nullptr;  // its grid barrier's counters
  cuda::DecodeStepTrace step_trace_;  // SWITCHYARD_CUDA_PERSISTENT_TRACE=1
  char* out_d_ = nullptr;
  size_t out_bytes_ = 0;
  PinnedMemory out_h_, params_h_;
  cuda::SampleRow* params_d_ = nullptr;
  size_t off_tokens_ = 0, off_positions_ = 0, off_slots_ = 0, off_logit_rows_ = 0, off_decode_ = 0, off_tiles_ = 0,
         off_tables_ = 0;
  DeviceMemory meta_d_;
  PinnedMemory meta_h_;

  DeviceMemory kv_mem_;
  int num_blocks_ = 0, scratch_block_ = 0;
  int64_t layer_cache_elems_ = 0, kv_cache_bytes_ = 0;
  std::map<int, cudaGraphExec_t> graphs_;
  StepProfile prof_;
  double profile_wait_us_ = 0;
};

}  // namespace

CudaDeviceInfo cuda_device_info() {
  CudaDeviceInfo info;
  info.built = true;
  const cudaError_t status = cudaGetDeviceCount(&info.device_count);
  if (status != cudaSuccess) {
    cudaGetLastError();
    info.device_count = 0;
    info.error = std::string("no usable CUDA device: ") + cudaGetErrorString(status);
    return info;
  }
  if (info.device_count == 0) {
    info.error = "no CUDA device";
    return info;
  }
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
    info.name = prop.name;
    info.total_memory_bytes = static_cast<int64_t>(prop.totalGlobalMem);
  }
  return info;
}

std::unique_ptr<CudaModelRunner> CudaModelRunner::create(const std::string& dir, const ModelConfig& config,
                                                         const CudaRunnerOptions& options) {
  const CudaDeviceInfo info = cuda_device_info();
  if (info.device_count == 0) throw std::runtime_error("device \"cuda\" requested but " + info.error);
  SafetensorsCheckpoint probe(dir);
  std::string dtype = options.dtype;
  if (dtype == "auto") dtype = probe.get("model.embed_tokens.weight").dtype == DType::F16 ? "float16" : "bfloat16";
  if (dtype == "float16") return std::make_unique<Qwen3Cuda<__half>>(dir, config, options);
  if (dtype == "bfloat16") return std::make_unique<Qwen3Cuda<__nv_bfloat16>>(dir, config, options);
  throw std::runtime_error("dtype must be \"auto\", \"bfloat16\" or \"float16\", not \"" + options.dtype + "\"");
}

}  // namespace sy
