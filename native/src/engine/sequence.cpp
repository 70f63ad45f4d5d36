#include "engine/sequence.h"

#include "engine/block_hash.h"

namespace sy {

Sequence::Sequence(std::string id, std::vector<int32_t> prompt, SamplingParams params, int bs, uint64_t default_seed)
    : request_id(std::move(id)),
      sampling(std::move(params)),
      num_prompt_tokens(static_cast<int>(prompt.size())),
      block_size(bs),
      tokens(std::move(prompt)),
      rng(sampling.has_seed ? sampling.seed : default_seed) {
  for (int b = 0; (b + 1) * block_size <= num_tokens(); ++b) {
    block_hashes.push_back(block_hash(parent_hash(b), tokens.data() + b * block_size, block_size));
  }
}

void Sequence::append_token(int32_t token) {
  tokens.push_back(token);
  if (num_tokens() % block_size == 0) {
    const int b = num_tokens() / block_size - 1;
    block_hashes.push_back(block_hash(parent_hash(b), tokens.data() + b * block_size, block_size));
  }
}

uint64_t Sequence::parent_hash(int i) const { return i == 0 ? kRootParentHash : block_hashes[i - 1]; }

}  // namespace sy
