// The Qwen3 (and Llama) forward pass on a CUDA GPU, with its own device state: weights in
// bf16/fp16 (the checkpoint's, or as options.dtype says), the paged KV cache in the same dtype,
// activation buffers, CUDA graphs for decode
// steps, and sampling on the device. The engine (scheduler, block pool, sequences) stays on the
// host and hands each step's flat batch to `step`. This header has no CUDA types, so the engine
// compiles the same with or without the CUDA backend (qwen3_cuda_stub.cpp stands in without it).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/qwen3.h"
#include "sampler/sampler.h"

namespace sy {

struct CudaRunnerOptions {
  int block_size = 16;
  int max_num_seqs = 256;
  int max_num_batched_tokens = 2048;
  int max_model_len = 4096;
  /** Fraction of the GPU's memory this engine may hold in all (weights, activations, KV cache). */
  double gpu_memory_utilization = 0.9;
  /** When positive, the KV cache takes at most this many bytes. */
  int64_t kv_cache_memory_bytes = 0;
  /** No CUDA graphs: every kernel launched one by one. */
  bool enforce_eager = false;
  /**
   * The type of the weights, the KV cache and the GEMM inputs: "auto" (the checkpoint's: bf16
   * or fp16; fp32 checkpoints run in bf16), "bfloat16" or "float16". A bf16 checkpoint in
   * float16 keeps its weights' values exactly (loading fails if one lies beyond fp16's range)
   * and rounds activations 8x finer, but activations past +-65504 saturate.
   */
  std::string dtype = "auto";
};

/**
 * Where a runner's KV cache lives, for a transfer agent: one cudaMalloc allocation (a CUDA IPC
 * handle maps an allocation from its base) holding, layer after layer, the layer's K area then
 * its V area, each `area_bytes`; block b of an area is `block_bytes` at b * block_bytes
 * ([block][slot in block][kv head][head dim]). Past the pool's blocks each area keeps one more
 * block, the decode graphs' scratch, which no block id names.
 */
struct CudaKvCacheMemory {
  void* base = nullptr;
  int64_t bytes = 0;
  int device_id = 0;
  int num_layers = 0;
  int64_t area_bytes = 0;
  int64_t block_bytes = 0;
};

/** What the sampler needs for one logit row of a step. */
struct SampleRequest {
  const SamplingParams* params;
  SamplingContext context;
  Rng* rng;
};

/** Whether this addon has the CUDA backend and sees a GPU; `error` says why not. */
struct CudaDeviceInfo {
  bool built = false;
  int device_count = 0;
  std::string name;
  int64_t total_memory_bytes = 0;
  std::string error;
};
CudaDeviceInfo cuda_device_info();

class CudaModelRunner {
 public:
  /** Loads the checkpoint of `dir` onto the GPU and sizes the KV cache; throws with the CUDA message. */
  static std::unique_ptr<CudaModelRunner> create(const std::string& dir, const ModelConfig& config,
                                                 const CudaRunnerOptions& options);
  virtual ~CudaModelRunner() = default;

  virtual const char* name() const = 0;
  virtual int num_kv_blocks() const = 0;
  /** Runs the forward pass over `batch` and samples one token per logit token (in order). */
  virtual void step(const ForwardBatch& batch, const std::vector<SampleRequest>& requests,
                    std::vector<SampledToken>* sampled) = 0;
  virtual CudaKvCacheMemory kv_cache_memory() const = 0;
  /**
   * Waits until every kernel of the steps so far has finished. A step that samples ends
   * synchronized already; one without logit rows (a prompt chunk) returns while its KV stores
   * may still be running.
   */
  virtual void synchronize() = 0;
  /** How decode steps run on this GPU, for the engine's info (e.g. whether batch 1 is one persistent kernel). */
  virtual std::string detail() const { return ""; }
  /** The type the runner computes and caches in: "bfloat16" or "float16". */
  virtual const char* dtype() const = 0;
};

}  // namespace sy
