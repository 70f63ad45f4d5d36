// The KV-cache block allocator with prefix caching, vLLM-style. Every block has a reference
// count (the sequences using it). Blocks with no references wait in a free queue ordered
// least-recently-used first; a free block may still hold cached KV (it stays findable by its
// hash) until it is taken for new data, which evicts it. Each change of what the cache holds
// is recorded as a KV event, in the order it happened.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace sy {

struct KvEventRecord {
  enum class Type { Stored, Removed, Cleared };
  Type type = Type::Stored;
  std::vector<uint64_t> block_hashes;
  bool has_parent = false;
  uint64_t parent_hash = 0;
  std::vector<int32_t> token_ids;  // Stored: the tokens of all its blocks
};

class BlockPool {
 public:
  BlockPool(int num_blocks, int block_size, bool enable_prefix_caching);

  int num_blocks() const { return num_blocks_; }
  int block_size() const { return block_size_; }
  bool prefix_caching() const { return caching_; }
  /** Blocks with no references (some of them still hold cached KV). */
  int num_free() const { return num_free_; }
  int ref_count(int block) const { return blocks_[block].ref_count; }
  int num_cached() const { return static_cast<int>(cached_.size()); }

  /** Ids of the longest run of cached blocks matching `hashes` (at most max_blocks). */
  std::vector<int32_t> find_cached_prefix(const std::vector<uint64_t>& hashes, int max_blocks) const;
  /** Free blocks that taking `blocks` (cache hits) would remove from the free queue. */
  int free_among(const std::vector<int32_t>& blocks) const;
  /** Adds a reference to each of `blocks` (cache hits), taking free ones out of the free queue. */
  void take(const std::vector<int32_t>& blocks);
  /** Takes `n` blocks from the head of the free queue, evicting cached ones; n <= num_free(). */
  std::vector<int32_t> allocate(int n);
  /** Drops one reference from each block; blocks reaching zero join the free queue in this order. */
  void release(const std::vector<int32_t>& blocks);
  /**
   * Registers consecutive full blocks of one sequence: `blocks[i]` holds the block at index
   * first_index + i of the sequence, with hash hashes[i] and tokens tokens[i*B, (i+1)*B).
   * `parent_hash` is the hash of the block before the first (ignored when first_index is 0).
   * A hash that another block already holds is not registered twice.
   */
  void cache_blocks(const std::vector<int32_t>& blocks, const std::vector<uint64_t>& hashes, int first_index,
                    uint64_t parent_hash, const int32_t* tokens);
  /** Drops every cached hash when no block is in use; false otherwise. */
  bool reset_prefix_cache();

  std::vector<KvEventRecord> take_events();
  /** Stored events that rebuild the cache's contents, parents before children. */
  std::vector<KvEventRecord> snapshot() const;
  /** Checks the pool's invariants; returns a description of the first violation, or "". */
  std::string check_invariants() const;

 private:
  struct Block {
    int ref_count = 0;
    bool cached = false;
    uint64_t hash = 0;
    bool has_parent = false;
    uint64_t parent_hash = 0;
    int depth = 0;  // index of the block in its sequence; orders the snapshot
    std::vector<int32_t> tokens;
    int prev = -1, next = -1;  // free-queue links
    bool in_free_queue = false;
  };

  void push_free_tail(int id);
  void unlink_free(int id);
  void evict(int id);

  int num_blocks_;
  int block_size_;
  bool caching_;
  std::vector<Block> blocks_;
  int free_head_ = -1, free_tail_ = -1, num_free_ = 0;
  std::unordered_map<uint64_t, int32_t> cached_;
  std::vector<KvEventRecord> events_;
};

}  // namespace sy
