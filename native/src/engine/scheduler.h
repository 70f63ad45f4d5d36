// Continuous batching with chunked prefill, vLLM v1 style: each step has a token budget
// (max_num_batched_tokens). Running sequences are served first (a decode token, or the next
// chunk of a prompt), then waiting ones in arrival order while the budget, max_num_seqs and
// free blocks allow. When a running sequence needs a block and none is free, the newest
// running sequence is preempted: its blocks are released (their KV stays cached where it
// can) and it goes back to the front of the queue, to be recomputed later.
#pragma once
#include <deque>
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

  int num_waiting() const { return static_cast<int>(waiting_.size()); }
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

  SchedulerConfig config_;
  BlockPool& pool_;
  std::deque<Sequence*> waiting_;
  std::vector<Sequence*> running_;
  int64_t preemptions_ = 0;
  int64_t prefix_queries_ = 0;  // in tokens, like vLLM's prefix-cache metrics
  int64_t prefix_hits_ = 0;
};

}  // namespace sy
