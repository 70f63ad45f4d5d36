// Continuous batching with chunked prefill, vLLM v1 style: each step has a token budget
// (max_num_batched_tokens). Running sequences are served first (a decode token, or the next
// chunk of a prompt), then waiting ones in arrival order while the budget, max_num_seqs and
// free blocks allow. When a running sequence needs a block and none is free, the newest
// running sequence is preempted: its blocks are released (their KV stays cached where it
// can) and it goes back to the front of the queue, to be recomputed later.
//
// Disaggregation, decode side: a sequence whose prompt a remote worker prefilled gets blocks
// for its whole prompt at once (reserve_remote) and waits apart, never scheduled, until the KV
// has been copied in (commit_remote) or the copy failed (recompute_remote).
#pragma once
#include <deque>
#include <string>
#include <vector>

#include "engine/block_pool.h"
#include "engine/sequence.h"

namespace sy {

struct SchedulerConfig {
  int max_num_seqs = 256;
  int max_num_batched_tokens = 2048;
};

struct ScheduledSequence {
  Sequence* seq;
  int num_new_tokens;  // tokens computed this step, from seq->num_computed_tokens on
};

struct SchedulerOutput {
  std::vector<ScheduledSequence> scheduled;
  int num_tokens = 0;
};

class Scheduler {
 public:
  Scheduler(const SchedulerConfig& config, BlockPool& pool) : config_(config), pool_(pool) {}

  void add(Sequence* seq);
  /** Removes a sequence from the queues and releases its blocks. */
  void remove(Sequence* seq);
  SchedulerOutput schedule();
  /** After the forward pass: advances computed tokens and registers newly full blocks. */
  void on_computed(const SchedulerOutput& out);

  /**
   * Gives `seq` (new, no blocks) one block per block_size prompt tokens: its leading
   * prefix-cache hits (every full prompt block may hit: no logits are needed here), then free
   * blocks. The sequence then waits for its remote KV. False (nothing changed) when the pool
   * cannot hold the prompt now.
   */
  bool reserve_remote(Sequence* seq);
  /**
   * The reserved blocks now hold the prompt's KV: registers its full blocks in the prefix cache
   * and queues the sequence first, as if it had computed its prompt here.
   */
  void commit_remote(Sequence* seq);
  /** Drops the reservation and queues the sequence first, to compute all its tokens here. */
  void recompute_remote(Sequence* seq);
  /**
   * Removes a sequence like remove(), but hands the references to its first `num_blocks`
   * blocks to the caller (who releases them later) instead of releasing them.
   */
  std::vector<int32_t> remove_keeping_prefix(Sequence* seq, int num_blocks);
  /** Checks the queues against the sequences' states; "" or the first violation. */
  std::string check_invariants() const;

  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  int num_waiting_for_remote_kv() const { return static_cast<int>(waiting_for_remote_kv_.size()); }
  int num_running() const { return static_cast<int>(running_.size()); }
  bool has_unfinished() const { return !waiting_.empty() || !running_.empty(); }
  int64_t preemptions() const { return preemptions_; }
  int64_t prefix_cache_queries() const { return prefix_queries_; }
  int64_t prefix_cache_hits() const { return prefix_hits_; }

 private:
  /** Makes block_table cover `num_tokens` tokens; false (nothing changed) when blocks are short. */
  bool grow(Sequence* seq, int num_tokens);
  void preempt(Sequence* seq);
  void release_blocks(Sequence* seq);
  /** Registers the full blocks of computed tokens that are not registered yet in the prefix cache. */
  void cache_computed_blocks(Sequence* seq);

  SchedulerConfig config_;
  BlockPool& pool_;
  std::deque<Sequence*> waiting_;
  std::vector<Sequence*> running_;
  std::vector<Sequence*> waiting_for_remote_kv_;  // unordered: each leaves by its own command
  int64_t preemptions_ = 0;
  int64_t prefix_queries_ = 0;  // in tokens, like vLLM's prefix-cache metrics
  int64_t prefix_hits_ = 0;
};

}  // namespace sy
