#include "engine/scheduler.h"

#include <algorithm>

namespace sy {

void Scheduler::add(Sequence* seq) {
  seq->status = SeqStatus::Waiting;
  waiting_.push_back(seq);
}

void Scheduler::release_blocks(Sequence* seq) {
  // Released tail first, so a sequence's last blocks are evicted before its prefix, which
  // other requests are more likely to share.
  std::vector<int32_t> reversed(seq->block_table.rbegin(), seq->block_table.rend());
  pool_.release(reversed);
  seq->block_table.clear();
  seq->num_computed_tokens = 0;
  seq->num_cached_blocks = 0;
}

void Scheduler::remove(Sequence* seq) {
  auto w = std::find(waiting_.begin(), waiting_.end(), seq);
  if (w != waiting_.end()) waiting_.erase(w);
  auto r = std::find(running_.begin(), running_.end(), seq);
  if (r != running_.end()) running_.erase(r);
  release_blocks(seq);
  seq->status = SeqStatus::Finished;
}

bool Scheduler::grow(Sequence* seq, int num_tokens) {
  const int bs = pool_.block_size();
  const int need = (num_tokens + bs - 1) / bs - static_cast<int>(seq->block_table.size());
  if (need <= 0) return true;
  if (need > pool_.num_free()) return false;
  for (int32_t b : pool_.allocate(need)) seq->block_table.push_back(b);
  return true;
}

void Scheduler::preempt(Sequence* seq) {
  release_blocks(seq);
  seq->status = SeqStatus::Waiting;
  waiting_.push_front(seq);
  ++preemptions_;
}

SchedulerOutput Scheduler::schedule() {
  SchedulerOutput out;
  int budget = config_.max_num_batched_tokens;
  bool preempted = false;

  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence* seq = running_[i];
    const int n = std::min(seq->num_tokens() - seq->num_computed_tokens, budget);
    bool self_preempted = false;
    while (!grow(seq, seq->num_computed_tokens + n)) {
      Sequence* victim = running_.back();
      running_.pop_back();
      preempt(victim);
      preempted = true;
      if (victim == seq) {
        self_preempted = true;
        break;
      }
    }
    if (self_preempted) break;
    out.scheduled.push_back({seq, n});
    budget -= n;
    ++i;
  }

  // No new admissions in a step that had to preempt: memory is short.
  while (!preempted && !waiting_.empty() && budget > 0 && static_cast<int>(running_.size()) < config_.max_num_seqs) {
    Sequence* seq = waiting_.front();
    std::vector<int32_t> hits;
    if (seq->block_table.empty()) {
      // At least the last token is computed, so the step yields logits to sample from.
      const int max_hit_blocks = (seq->num_tokens() - 1) / pool_.block_size();
      hits = pool_.find_cached_prefix(seq->block_hashes, max_hit_blocks);
    }
    const int hit_tokens = static_cast<int>(hits.size()) * pool_.block_size();
    const int start = seq->block_table.empty() ? hit_tokens : seq->num_computed_tokens;
    const int n = std::min(seq->num_tokens() - start, budget);
    const int bs = pool_.block_size();
    const int need = (start + n + bs - 1) / bs - static_cast<int>(hits.size()) - static_cast<int>(seq->block_table.size());
    if (need > pool_.num_free() - pool_.free_among(hits)) break;  // wait for blocks
    if (seq->block_table.empty()) {
      pool_.take(hits);
      seq->block_table = hits;
      seq->num_cached_blocks = static_cast<int>(hits.size());
      seq->num_computed_tokens = hit_tokens;
      if (seq->num_cached_prompt_tokens < 0) {
        seq->num_cached_prompt_tokens = std::min(hit_tokens, seq->num_prompt_tokens);
        prefix_queries_ += seq->num_prompt_tokens;
        prefix_hits_ += seq->num_cached_prompt_tokens;
      }
    }
    grow(seq, start + n);
    waiting_.pop_front();
    seq->status = SeqStatus::Running;
    running_.push_back(seq);
    out.scheduled.push_back({seq, n});
    budget -= n;
  }
  for (const auto& s : out.scheduled) out.num_tokens += s.num_new_tokens;
  return out;
}

void Scheduler::on_computed(const SchedulerOutput& out) {
  const int bs = pool_.block_size();
  for (const auto& s : out.scheduled) {
    Sequence* seq = s.seq;
    seq->num_computed_tokens += s.num_new_tokens;
    const int full = seq->num_computed_tokens / bs;
    if (full > seq->num_cached_blocks) {
      const int first = seq->num_cached_blocks;
      std::vector<int32_t> blocks(seq->block_table.begin() + first, seq->block_table.begin() + full);
      std::vector<uint64_t> hashes(seq->block_hashes.begin() + first, seq->block_hashes.begin() + full);
      pool_.cache_blocks(blocks, hashes, first, seq->parent_hash(first), seq->tokens.data() + first * bs);
      seq->num_cached_blocks = full;
    }
  }
}

}  // namespace sy
