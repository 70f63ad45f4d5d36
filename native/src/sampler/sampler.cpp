#include "sampler/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>
#include <unordered_set>

namespace sy {

void Rng::reseed(uint64_t seed) {
  uint64_t x = seed;
  for (auto& s : s_) {
    x += 0x9E3779B97F4A7C15ULL;
    uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    s = z ^ (z >> 31);
  }
}

uint64_t Rng::next() {
  auto rotl = [](uint64_t v, int k) { return (v << k) | (v >> (64 - k)); };
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

namespace {

// log_softmax normalizer: max + log(sum(exp(x - max))).
double log_normalizer(const float* x, int n) {
  float mx = -INFINITY;
  for (int i = 0; i < n; ++i) mx = std::max(mx, x[i]);
  double total = 0;
  for (int i = 0; i < n; ++i) total += std::exp(static_cast<double>(x[i]) - mx);
  return mx + std::log(total);
}

int argmax(const float* x, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;  // ties go to the lowest id, like torch.argmax
  return best;
}

}  // namespace

SampledToken sample_token(float* logits, int vocab, const SamplingParams& p, const SamplingContext& ctx, Rng& rng) {
  SampledToken out;
  // Raw logprobs are taken before any processing; keep what is needed of the raw logits.
  double raw_norm = 0;
  std::vector<float> raw;
  if (p.logprobs >= 0) {
    raw_norm = log_normalizer(logits, vocab);
    raw.assign(logits, logits + vocab);
  }

  // Penalties, as vLLM applies them: repetition over prompt and output tokens, presence and
  // frequency over output tokens only.
  if (p.repetition_penalty != 1.0f) {
    std::unordered_set<int32_t> seen(ctx.prompt, ctx.prompt + ctx.num_prompt);
    seen.insert(ctx.output, ctx.output + ctx.num_output);
    for (int32_t t : seen) {
      float& l = logits[t];
      l = l > 0 ? l / p.repetition_penalty : l * p.repetition_penalty;
    }
  }
  if (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) {
    std::unordered_map<int32_t, int> counts;
    for (int i = 0; i < ctx.num_output; ++i) ++counts[ctx.output[i]];
    for (const auto& [t, c] : counts) logits[t] -= p.frequency_penalty * c + p.presence_penalty;
  }
  if (ctx.num_output < p.min_tokens) {
    for (int32_t t : p.stop_token_ids)
      if (t >= 0 && t < vocab) logits[t] = -INFINITY;
    if (!p.ignore_eos)
      for (int32_t t : *ctx.eos_token_ids)
        if (t >= 0 && t < vocab) logits[t] = -INFINITY;
  }

  if (is_greedy(p)) {
    out.token = argmax(logits, vocab);
  } else {
    const float inv_t = 1.0f / p.temperature;
    for (int i = 0; i < vocab; ++i) logits[i] *= inv_t;
    // Candidates sorted by logit, descending (ties by id); top-k cuts the list first.
    std::vector<int32_t> order(vocab);
    for (int i = 0; i < vocab; ++i) order[i] = i;
    auto by_logit = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    int keep = vocab;
    if (p.top_k > 0 && p.top_k < vocab) {
      keep = p.top_k;
      std::partial_sort(order.begin(), order.begin() + keep, order.end(), by_logit);
    } else if (p.top_p < 1.0f || p.min_p > 0.0f) {
      std::sort(order.begin(), order.end(), by_logit);
    }
    const float mx = logits[order[0]] == -INFINITY ? 0.0f : *std::max_element(logits, logits + vocab);
    std::vector<double> probs(keep);
    double total = 0;
    for (int i = 0; i < keep; ++i) total += (probs[i] = std::exp(static_cast<double>(logits[order[i]]) - mx));
    if (p.top_p < 1.0f) {
      // Keep the smallest head of the sorted list whose mass reaches top_p (at least one token).
      double cum = 0;
      int cut = keep;
      for (int i = 0; i < keep; ++i) {
        cum += probs[i] / total;
        if (cum >= p.top_p) {
          cut = i + 1;
          break;
        }
      }
      keep = cut;
    }
    if (p.min_p > 0.0f) {
      const double floor = p.min_p * probs[0];
      int cut = 1;
      while (cut < keep && probs[cut] >= floor) ++cut;
      keep = cut;
    }
    double kept = 0;
    for (int i = 0; i < keep; ++i) kept += probs[i];
    const double u = rng.uniform() * kept;
    double cum = 0;
    out.token = order[keep - 1];
    for (int i = 0; i < keep; ++i) {
      cum += probs[i];
      if (u < cum) {
        out.token = order[i];
        break;
      }
    }
  }

  if (p.logprobs >= 0) {
    out.logprob = static_cast<float>(raw[out.token] - raw_norm);
    if (p.logprobs > 0) {
      const int k = std::min(p.logprobs, vocab);
      std::vector<int32_t> idx(vocab);
      for (int i = 0; i < vocab; ++i) idx[i] = i;
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                        [&](int32_t a, int32_t b) { return raw[a] > raw[b] || (raw[a] == raw[b] && a < b); });
      for (int i = 0; i < k; ++i) out.top.push_back({idx[i], static_cast<float>(raw[idx[i]] - raw_norm)});
    }
  }
  return out;
}

}  // namespace sy
