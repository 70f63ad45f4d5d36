// The paged KV cache's storage: for each layer, K and V for `num_blocks` blocks of
// `block_size` token slots. A token's slot is block_id * block_size + offset in its block.
// Layout per layer and per K/V: [slot][kv_head][head_dim], fp32. The CPU backend keeps it in
// host memory; a CUDA backend allocates the same layout on the device.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace sy {

struct KvCacheShape {
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int block_size = 16;

  /** Bytes one block takes across all layers, K and V. */
  int64_t bytes_per_block() const {
    return 2LL * num_layers * block_size * num_kv_heads * head_dim * static_cast<int64_t>(sizeof(float));
  }
};

class KvCache {
 public:
  KvCache(const KvCacheShape& shape, int num_blocks);

  const KvCacheShape& shape() const { return shape_; }
  int num_blocks() const { return num_blocks_; }
  /** Floats per token slot of one layer's K (or V). */
  int64_t slot_stride() const { return static_cast<int64_t>(shape_.num_kv_heads) * shape_.head_dim; }
  float* k(int layer) { return storage_.data() + layer_offset(layer, 0); }
  float* v(int layer) { return storage_.data() + layer_offset(layer, 1); }
  const float* k(int layer) const { return storage_.data() + layer_offset(layer, 0); }
  const float* v(int layer) const { return storage_.data() + layer_offset(layer, 1); }

  // The raw storage, for a transfer agent to copy whole blocks in and out: within each layer's
  // K (and V), block b takes block_bytes() from layer_offset_bytes + b * block_bytes().
  void* data() { return storage_.data(); }
  const void* data() const { return storage_.data(); }
  int64_t bytes() const { return static_cast<int64_t>(storage_.size() * sizeof(float)); }
  int64_t block_bytes() const { return shape_.block_size * slot_stride() * static_cast<int64_t>(sizeof(float)); }
  /** Byte offset of layer `layer`'s K (kv 0) or V (kv 1). */
  int64_t layer_offset_bytes(int layer, int kv) const {
    return layer_offset(layer, kv) * static_cast<int64_t>(sizeof(float));
  }

 private:
  int64_t layer_offset(int layer, int kv) const {
    int64_t per = static_cast<int64_t>(num_blocks_) * shape_.block_size * slot_stride();
    return (2LL * layer + kv) * per;
  }
  KvCacheShape shape_;
  int num_blocks_;
  std::vector<float> storage_;
};

}  // namespace sy
