// Turns one sequence's logits into its next token: penalties, min_tokens, temperature,
// top-k / top-p / min-p filtering, then greedy or seeded random choice, plus the logprobs of
// the raw model distribution (vLLM's default "raw logprobs") for the chosen token and the top
// alternatives. Each request carries its own random generator, so a seeded request samples
// the same tokens whatever else shares its batch.
#pragma once
#include <cstdint>
#include <vector>

namespace sy {

struct SamplingParams {
  float temperature = 1.0f;
  float top_p = 1.0f;
  int top_k = 0;  // 0 or -1: off
  float min_p = 0.0f;
  bool has_seed = false;
  uint64_t seed = 0;
  int max_tokens = 16;
  int min_tokens = 0;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  float repetition_penalty = 1.0f;
  int logprobs = -1;  // number of alternatives; -1: no logprobs
};

/** Greedy requests take the argmax and draw nothing from their generator. */
inline bool is_greedy(const SamplingParams& p) { return p.temperature < 1e-5f; }

/** xoshiro256** seeded through splitmix64. */
class Rng {
 public:
  explicit Rng(uint64_t seed = 0) { reseed(seed); }
  void reseed(uint64_t seed);
  uint64_t next();
  /** Uniform in [0, 1) with 53 bits. */
  double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }

 private:
  uint64_t s_[4];
};

struct TopLogprob {
  int32_t token;
  float logprob;
};

struct SampledToken {
  int32_t token = 0;
  float logprob = 0;
  std::vector<TopLogprob> top;  // filled when logprobs were requested
};

/** What the sampler needs to know about the sequence. */
struct SamplingContext {
  const int32_t* prompt;
  int num_prompt;
  const int32_t* output;
  int num_output;
  const std::vector<int32_t>* eos_token_ids;
};

/** Samples from `logits` (modified in place). */
SampledToken sample_token(float* logits, int vocab, const SamplingParams& p, const SamplingContext& ctx, Rng& rng);

}  // namespace sy
