// GPU helpers for benchmarks and checks of the CUDA IPC backend on a GPU host: device memory
// for a JavaScript process (which has no CUDA of its own), patterned fills and their check,
// and the ceilings a READ is compared with, measured in the same process: one plain
// device-to-device cudaMemcpyAsync, and the backend's gather kernel on local memory.
// Exported by the transfer addon as `cudaTools` where its kernels were built
// (SWITCHYARD_TRANSFER_CUDA_KERNELS); bench/transfer_cuda.ts uses them. Errors are
// TransferError(System) with CUDA's message.
#pragma once
#include <cstdint>
#include <vector>

#include "transfer/cuda_copy_kernels.h"

namespace sy::transfer::cuda_tools {

uint64_t device_alloc(uint64_t bytes, int device);
void device_free(uint64_t address);
void fill_pattern(uint64_t address, uint64_t bytes, uint32_t seed);
/** Words of each piece's destination that differ from the pattern at piece.src (a byte offset). */
uint64_t count_pattern_mismatches(const std::vector<CopyPiece>& pieces, uint32_t seed);
/** Milliseconds of each of `iterations` cudaMemcpyAsync(dst, src, bytes), after one warm-up. */
std::vector<double> memcpy_ms(uint64_t dst, uint64_t src, uint64_t bytes, int iterations);
/**
 * Milliseconds of each of `iterations` gather-kernel launches over `runs` (src, dst, bytes),
 * after one warm-up, with a grid of blocks_per_sm blocks per SM (0: one block per piece), with
 * or without streaming stores.
 */
std::vector<double> gather_copy_ms(const std::vector<CopyPiece>& runs, int iterations, uint32_t blocks_per_sm,
                                   bool streaming_stores);

}  // namespace sy::transfer::cuda_tools
