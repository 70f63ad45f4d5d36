// One request inside the engine: its tokens (prompt, then output), how many of them have KV
// in the cache, the blocks holding that KV, and the chained hashes of its full blocks.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "sampler/sampler.h"

namespace sy {

// WaitingForRemoteKv: blocks are reserved for the prompt and a remote prefill's KV is being
// copied into them; the scheduler leaves the sequence alone until the copy ends.
enum class SeqStatus { Waiting, WaitingForRemoteKv, Running, Finished };

class Sequence {
 public:
  Sequence(std::string request_id, std::vector<int32_t> prompt, SamplingParams sampling, int block_size,
           uint64_t default_seed);

  const std::string request_id;
  const SamplingParams sampling;
  const int num_prompt_tokens;
  const int block_size;

  std::vector<int32_t> tokens;       // prompt + output
  std::vector<uint64_t> block_hashes;  // of each full block of `tokens`
  std::vector<int32_t> block_table;  // physical blocks, in position order
  int num_computed_tokens = 0;       // tokens whose KV is in the blocks of block_table
  /** Leading blocks of block_table registered in the prefix cache (or taken from it). */
  int num_cached_blocks = 0;
  /** Prompt tokens served from the prefix cache at first scheduling; -1 before that. */
  int num_cached_prompt_tokens = -1;
  SeqStatus status = SeqStatus::Waiting;
  Rng rng;
  /** Disaggregation, prefill side: on a normal finish the prompt's blocks stay held. */
  bool hold_kv_for_remote_decode = false;
  /** Disaggregation, decode side: the token the remote prefill sampled; -1 when none. */
  int32_t remote_first_token = -1;

  int num_tokens() const { return static_cast<int>(tokens.size()); }
  int num_output_tokens() const { return num_tokens() - num_prompt_tokens; }
  /** Blocks that cover the prompt, the last one possibly partly filled. */
  int num_prompt_blocks() const { return (num_prompt_tokens + block_size - 1) / block_size; }
  const int32_t* output_tokens() const { return tokens.data() + num_prompt_tokens; }
  /** Appends a sampled token, hashing the block it completes. */
  void append_token(int32_t token);
  /** Hash of the block before block `i` (the root parent for block 0). */
  uint64_t parent_hash(int i) const;
};

}  // namespace sy
