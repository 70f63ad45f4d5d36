#include "engine/block_pool.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace sy {

BlockPool::BlockPool(int num_blocks, int block_size, bool enable_prefix_caching)
    : num_blocks_(num_blocks), block_size_(block_size), caching_(enable_prefix_caching), blocks_(num_blocks) {
  for (int i = 0; i < num_blocks; ++i) push_free_tail(i);
}

void BlockPool::push_free_tail(int id) {
  Block& b = blocks_[id];
  b.prev = free_tail_;
  b.next = -1;
  if (free_tail_ >= 0) {
    blocks_[free_tail_].next = id;
  } else {
    free_head_ = id;
  }
  free_tail_ = id;
  b.in_free_queue = true;
  ++num_free_;
}

void BlockPool::unlink_free(int id) {
  Block& b = blocks_[id];
  if (b.prev >= 0) {
    blocks_[b.prev].next = b.next;
  } else {
    free_head_ = b.next;
  }
  if (b.next >= 0) {
    blocks_[b.next].prev = b.prev;
  } else {
    free_tail_ = b.prev;
  }
  b.prev = b.next = -1;
  b.in_free_queue = false;
  --num_free_;
}

void BlockPool::evict(int id) {
  Block& b = blocks_[id];
  if (!b.cached) return;
  cached_.erase(b.hash);
  b.cached = false;
  b.tokens.clear();
  // Consecutive evictions of one step merge into one BlockRemoved event.
  if (events_.empty() || events_.back().type != KvEventRecord::Type::Removed) {
    events_.push_back(KvEventRecord{KvEventRecord::Type::Removed, {}, false, 0, {}});
  }
  events_.back().block_hashes.push_back(b.hash);
}

std::vector<int32_t> BlockPool::find_cached_prefix(const std::vector<uint64_t>& hashes, int max_blocks) const {
  std::vector<int32_t> hits;
  if (!caching_) return hits;
  const int n = std::min(static_cast<int>(hashes.size()), max_blocks);
  for (int i = 0; i < n; ++i) {
    auto it = cached_.find(hashes[i]);
    if (it == cached_.end()) break;
    hits.push_back(it->second);
  }
  return hits;
}

int BlockPool::free_among(const std::vector<int32_t>& blocks) const {
  int n = 0;
  for (int32_t b : blocks) n += blocks_[b].ref_count == 0 ? 1 : 0;
  return n;
}

void BlockPool::take(const std::vector<int32_t>& blocks) {
  for (int32_t id : blocks) {
    Block& b = blocks_[id];
    if (b.ref_count == 0) unlink_free(id);
    ++b.ref_count;
  }
}

std::vector<int32_t> BlockPool::allocate(int n) {
  if (n > num_free_) throw std::logic_error("BlockPool::allocate: not enough free blocks");
  std::vector<int32_t> out;
  out.reserve(n);
  for (int i = 0; i < n; ++i) {
    const int id = free_head_;
    unlink_free(id);
    evict(id);
    blocks_[id].ref_count = 1;
    out.push_back(id);
  }
  return out;
}

void BlockPool::release(const std::vector<int32_t>& blocks) {
  for (int32_t id : blocks) {
    Block& b = blocks_[id];
    if (b.ref_count <= 0) throw std::logic_error("BlockPool::release: block " + std::to_string(id) + " is not in use");
    if (--b.ref_count == 0) push_free_tail(id);
  }
}

void BlockPool::cache_blocks(const std::vector<int32_t>& blocks, const std::vector<uint64_t>& hashes, int first_index,
                             uint64_t parent_hash, const int32_t* tokens) {
  if (!caching_) return;
  // One BlockStored event per run of newly registered consecutive blocks.
  bool run_open = false;
  for (size_t i = 0; i < blocks.size(); ++i) {
    const int index = first_index + static_cast<int>(i);
    const uint64_t parent = i == 0 ? parent_hash : hashes[i - 1];
    Block& b = blocks_[blocks[i]];
    if (b.cached || cached_.count(hashes[i])) {
      run_open = false;
      continue;
    }
    b.cached = true;
    b.hash = hashes[i];
    b.has_parent = index > 0;
    b.parent_hash = b.has_parent ? parent : 0;
    b.depth = index;
    b.tokens.assign(tokens + i * block_size_, tokens + (i + 1) * block_size_);
    cached_[b.hash] = blocks[i];
    if (!run_open) {
      events_.push_back(KvEventRecord{KvEventRecord::Type::Stored, {}, b.has_parent, b.parent_hash, {}});
      run_open = true;
    }
    events_.back().block_hashes.push_back(b.hash);
    events_.back().token_ids.insert(events_.back().token_ids.end(), b.tokens.begin(), b.tokens.end());
  }
}

bool BlockPool::reset_prefix_cache() {
  if (num_free_ != num_blocks_) return false;
  for (auto& b : blocks_) {
    b.cached = false;
    b.tokens.clear();
  }
  cached_.clear();
  events_.push_back(KvEventRecord{KvEventRecord::Type::Cleared, {}, false, 0, {}});
  return true;
}

std::vector<KvEventRecord> BlockPool::take_events() {
  std::vector<KvEventRecord> out;
  out.swap(events_);
  return out;
}

std::vector<KvEventRecord> BlockPool::snapshot() const {
  std::vector<const Block*> cached;
  for (const auto& b : blocks_)
    if (b.cached) cached.push_back(&b);
  std::stable_sort(cached.begin(), cached.end(), [](const Block* a, const Block* b) { return a->depth < b->depth; });
  std::vector<KvEventRecord> out;
  for (const Block* b : cached) {
    out.push_back(KvEventRecord{KvEventRecord::Type::Stored, {b->hash}, b->has_parent, b->parent_hash, b->tokens});
  }
  return out;
}

std::string BlockPool::check_invariants() const {
  int free_count = 0;
  int prev = -1;
  for (int id = free_head_; id >= 0; id = blocks_[id].next) {
    const Block& b = blocks_[id];
    if (b.ref_count != 0) return "block " + std::to_string(id) + " is in the free queue with references";
    if (!b.in_free_queue || b.prev != prev) return "free queue links are broken at block " + std::to_string(id);
    prev = id;
    if (++free_count > num_blocks_) return "free queue has a cycle";
  }
  if (free_count != num_free_) return "free count disagrees with the free queue";
  for (int id = 0; id < num_blocks_; ++id) {
    const Block& b = blocks_[id];
    if (b.ref_count < 0) return "negative reference count";
    if ((b.ref_count == 0) != b.in_free_queue) return "block " + std::to_string(id) + " free state is inconsistent";
    if (b.cached) {
      auto it = cached_.find(b.hash);
      if (it == cached_.end() || it->second != id) return "cached block " + std::to_string(id) + " is not in the map";
    }
  }
  for (const auto& [hash, id] : cached_) {
    if (!blocks_[id].cached || blocks_[id].hash != hash) return "map entry points at an uncached block";
  }
  return "";
}

}  // namespace sy
