// y = x · wᵀ on the CPU with w in its file dtype (bf16/f16/f32), converted to fp32 row by row
// as it is read. The fast path splits w's rows across the thread pool and streams each weight
// row once for all rows of x; the reference path is the textbook triple loop.
#pragma once
#include <cstdint>

#include "model/tensor.h"
#include "util/thread_pool.h"

namespace sy {

void matmul_fast(ThreadPool& pool, const float* x, int64_t n, const WeightView& w, float* y);
void matmul_reference(const float* x, int64_t n, const WeightView& w, float* y);

}  // namespace sy
