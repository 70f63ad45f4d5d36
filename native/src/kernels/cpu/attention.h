// Causal attention of a flat batch of query tokens over the paged KV cache (grouped-query:
// query head h reads KV head h / (num_heads / num_kv_heads)). The fast path runs (token, head)
// pairs across the thread pool; the reference path is a plain loop. Both read K and V only
// from the cache, so a token's result is the same whether its context was computed in this
// step, an earlier chunk, or came from the prefix cache.
#pragma once
#include "kernels/backend.h"
#include "util/thread_pool.h"

namespace sy {

void attention_fast(ThreadPool& pool, const KvCache& cache, int layer, const float* q, int num_heads,
                    const AttentionBatch& batch, float* out);
void attention_reference(const KvCache& cache, int layer, const float* q, int num_heads, const AttentionBatch& batch,
                         float* out);

}  // namespace sy
