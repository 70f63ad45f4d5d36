#include "model/kv_cache.h"

namespace sy {

KvCache::KvCache(const KvCacheShape& shape, int num_blocks)
    : shape_(shape),
      num_blocks_(num_blocks),
      storage_(static_cast<size_t>(2LL * shape.num_layers * num_blocks * shape.block_size * shape.num_kv_heads *
                                   shape.head_dim),
               0.0f) {}

}  // namespace sy
