#include "engine/scheduler.h"

#include <algorithm>
#include <set>
#include <stdexcept>

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
  auto k = std::find(waiting_for_remote_kv_.begin(), waiting_for_remote_kv_.end(), seq);
  if (k != waiting_for_remote_kv_.end()) waiting_for_remote_kv_.erase(k);
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
    if (need > pool_.num_free() - pool_.free_among(hits)) {
      // A sequence queued with blocks (its remote KV committed) gives them back when nothing
      // runs that could free others: reservations could otherwise hold the whole pool for
      // good. Its full blocks stay cached, so recomputing costs little.
      if (!seq->block_table.empty() && running_.empty()) {
        release_blocks(seq);
        ++preemptions_;
        continue;
      }
      break;  // wait for blocks
    }
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
  for (const auto& s : out.scheduled) {
    s.seq->num_computed_tokens += s.num_new_tokens;
    cache_computed_blocks(s.seq);
  }
}

void Scheduler::cache_computed_blocks(Sequence* seq) {
  const int bs = pool_.block_size();
  const int full = seq->num_computed_tokens / bs;
  if (full <= seq->num_cached_blocks) return;
  const int first = seq->num_cached_blocks;
  std::vector<int32_t> blocks(seq->block_table.begin() + first, seq->block_table.begin() + full);
  std::vector<uint64_t> hashes(seq->block_hashes.begin() + first, seq->block_hashes.begin() + full);
  pool_.cache_blocks(blocks, hashes, first, seq->parent_hash(first), seq->tokens.data() + first * bs);
  seq->num_cached_blocks = full;
}

bool Scheduler::reserve_remote(Sequence* seq) {
  const int bs = pool_.block_size();
  std::vector<int32_t> hits = pool_.find_cached_prefix(seq->block_hashes, seq->num_prompt_tokens / bs);
  const int need = seq->num_prompt_blocks() - static_cast<int>(hits.size());
  if (need > pool_.num_free() - pool_.free_among(hits)) return false;
  // Hits first: allocating could otherwise evict them from the free queue.
  pool_.take(hits);
  seq->block_table = hits;
  for (int32_t b : pool_.allocate(need)) seq->block_table.push_back(b);
  seq->num_cached_blocks = static_cast<int>(hits.size());
  seq->num_computed_tokens = seq->num_cached_blocks * bs;
  seq->num_cached_prompt_tokens = std::min(seq->num_computed_tokens, seq->num_prompt_tokens);
  prefix_queries_ += seq->num_prompt_tokens;
  prefix_hits_ += seq->num_cached_prompt_tokens;
  seq->status = SeqStatus::WaitingForRemoteKv;
  waiting_for_remote_kv_.push_back(seq);
  return true;
}

void Scheduler::commit_remote(Sequence* seq) {
  auto k = std::find(waiting_for_remote_kv_.begin(), waiting_for_remote_kv_.end(), seq);
  if (k == waiting_for_remote_kv_.end()) throw std::logic_error("commit_remote: the sequence holds no reservation");
  waiting_for_remote_kv_.erase(k);
  seq->num_computed_tokens = seq->num_prompt_tokens;
  cache_computed_blocks(seq);
  // First in line: it holds its blocks already, and its first decode step is all it needs.
  seq->status = SeqStatus::Waiting;
  waiting_.push_front(seq);
}

void Scheduler::recompute_remote(Sequence* seq) {
  auto k = std::find(waiting_for_remote_kv_.begin(), waiting_for_remote_kv_.end(), seq);
  if (k == waiting_for_remote_kv_.end()) throw std::logic_error("recompute_remote: the sequence holds no reservation");
  waiting_for_remote_kv_.erase(k);
  release_blocks(seq);
  seq->status = SeqStatus::Waiting;
  waiting_.push_front(seq);
}

std::vector<int32_t> Scheduler::remove_keeping_prefix(Sequence* seq, int num_blocks) {
  if (num_blocks > static_cast<int>(seq->block_table.size())) {
    throw std::logic_error("remove_keeping_prefix: the sequence has fewer blocks than it should keep");
  }
  std::vector<int32_t> kept(seq->block_table.begin(), seq->block_table.begin() + num_blocks);
  seq->block_table.erase(seq->block_table.begin(), seq->block_table.begin() + num_blocks);
  remove(seq);  // releases the rest, tail first
  return kept;
}

std::string Scheduler::check_invariants() const {
  const int bs = pool_.block_size();
  std::set<const Sequence*> seen;
  auto check = [&](const Sequence* seq, SeqStatus expected, const char* queue) -> std::string {
    const std::string name = "sequence " + seq->request_id;
    if (!seen.insert(seq).second) return name + " is in more than one queue";
    if (seq->status != expected) return name + " in the " + queue + " queue has another status";
    const int blocks = static_cast<int>(seq->block_table.size());
    if (seq->num_computed_tokens > seq->num_tokens() || seq->num_computed_tokens > blocks * bs) {
      return name + " has more computed tokens than tokens or block slots";
    }
    if (seq->num_cached_blocks > blocks) return name + " has more cached blocks than blocks";
    return "";
  };
  for (const Sequence* seq : waiting_) {
    std::string p = check(seq, SeqStatus::Waiting, "waiting");
    if (p.empty() && seq->block_table.empty() && seq->num_computed_tokens != 0) {
      p = "sequence " + seq->request_id + " waits without blocks but with computed tokens";
    }
    if (!p.empty()) return p;
  }
  for (const Sequence* seq : running_) {
    std::string p = check(seq, SeqStatus::Running, "running");
    if (!p.empty()) return p;
  }
  for (const Sequence* seq : waiting_for_remote_kv_) {
    std::string p = check(seq, SeqStatus::WaitingForRemoteKv, "remote-KV");
    if (!p.empty()) return p;
    if (static_cast<int>(seq->block_table.size()) != seq->num_prompt_blocks()) {
      return "sequence " + seq->request_id + " waits for remote KV without exactly its prompt's blocks";
    }
    if (seq->num_output_tokens() != 0 || seq->num_computed_tokens != seq->num_cached_blocks * bs) {
      return "sequence " + seq->request_id + " waits for remote KV with tokens beyond its prefix-cache hits";
    }
  }
  return "";
}

}  // namespace sy
