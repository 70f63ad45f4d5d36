// Matrix products of a few rows on tensor cores (small_gemm.cu), for the Gemm class (gemm.h):
// y[n, out] = x[n, in] · wᵀ for n ≤ kSmallGemmRows, the decode steps past the gemv's rows.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/gemm.h"

namespace sy::cuda {

/** The most rows a small product takes (two 8-row MMA tiles: a batch of 8 split into hi and lo). */
constexpr int64_t kSmallGemmRows = 16;

/**
 * The most rows of w it takes: one block a 16-row tile, so a matrix of many tiles is many waves of
 * short blocks, each paying its load latency. lm_head (151 936 rows) took ~105 µs a product of 16
 * rows on it against cuBLAS's ~80 (H200); the 0.6B shape's projections (1 024-6 144 rows) are
 * faster on it. Larger projections were not measured.
 */
constexpr int64_t kSmallGemmMaxOut = 8192;

/** Lets the kernels take their staged rounds' shared memory, as much of it as the device has; call
 *  once before any graph capture (launches before it stage nothing). */
void small_gemm_prepare();
/** Whether small_gemm serves this product: few rows, at most kSmallGemmMaxOut rows of w in whole
 *  16-row tiles, rows of w in 32-element pieces, 16-byte aligned operands. */
bool small_gemm_fits(const void* x, int64_t n, const void* w, int64_t out, int64_t in);

/**
 * y = x · wᵀ (y += x · wᵀ with `accumulate`), x [n, in] and w [out, in] row-major in the 16-bit
 * dtype, fp32 sums; y [n, out] in fp32, or in the dtype with `y_16bit` (rounded as from_f32
 * rounds). Launched as a programmatic dependent: its weight loads overlap the kernel before.
 */
void small_gemm(const void* x, int64_t n, const void* w, int64_t out, int64_t in, Half16 dtype, void* y, bool y_16bit,
                bool accumulate, cudaStream_t stream);

/** Whether small_gemm_silu serves this product: small_gemm_fits for the whole gate_up matrix, whole
 *  16-row tiles of gate, and as many lo rows as hi ones when split. */
bool small_gemm_silu_fits(const void* x, int64_t n, bool split, const void* gate_up, int64_t inter, int64_t in);

/**
 * act[t] = silu(gate) · up for the gate_up weights ([2 inter, in]: gate rows, then up rows), with
 * act (and act_lo, the remainder, when not null: the down projection's split input) in the dtype.
 * x holds n rows; `split`: the first n / 2 are the hi halves of the tokens and the rest their lo
 * halves, whose products are added. The same bits as small_gemm's products (16-bit ones in
 * float16, as Product says) followed by silu_mul, in one launch instead of two.
 */
void small_gemm_silu(const void* x, int64_t n, bool split, const void* gate_up, int64_t inter, int64_t in,
                     Half16 dtype, void* act, void* act_lo, cudaStream_t stream);

}  // namespace sy::cuda
