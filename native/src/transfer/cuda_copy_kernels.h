// GPU kernels of the CUDA IPC backend (built where nvcc is found: SWITCHYARD_TRANSFER_CUDA_KERNELS).
//
// A KV read is thousands of small blocks (a 4k-token prompt of a Qwen3-0.6B-shaped model is
// 14 336 blocks of 32 KiB); one cudaMemcpyAsync per block costs a few microseconds of launch
// each, so the backend copies a whole read with one kernel over a list of pieces in device
// memory instead. The host splits the read into pieces (plan_copy_pieces); each CUDA block of
// the kernel copies whole pieces, 16 bytes per thread-access where source, destination and
// length allow it, bytes otherwise.
//
// The pattern kernels are for benchmarks and checks on a GPU host (bench/transfer_cuda.ts):
// they fill memory with words that name their own offset, and count words that do not.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

namespace sy::transfer {

/** bytes [src, src + bytes) copied to [dst, dst + bytes); pieces of one launch do not overlap. */
struct CopyPiece {
  uint64_t src = 0;
  uint64_t dst = 0;
  uint64_t bytes = 0;
};

/** One round of the kernel's block: 256 threads x 8 accesses x 16 bytes. */
constexpr uint64_t kCopyPieceBytes = 32 * 1024;

/**
 * Appends the pieces of the copy src -> dst of `bytes` bytes to `out`: a head and a tail of
 * under 16 bytes where src and dst share their misalignment (so the middle is 16-byte
 * aligned), the rest in pieces of at most kCopyPieceBytes.
 */
void plan_copy_pieces(uint64_t src, uint64_t dst, uint64_t bytes, std::vector<CopyPiece>& out);

/**
 * Copies every piece of `pieces` (device memory) in one launch of at most `max_blocks` blocks;
 * streaming_stores marks the destination's lines evict-first in L2 (__stcs).
 */
cudaError_t launch_gather_copy(const CopyPiece* pieces, uint32_t count, uint32_t max_blocks, cudaStream_t stream,
                               bool streaming_stores = false);

/**
 * Copies a read given as two block lists in one launch of at most `max_blocks` blocks, with no
 * piece list: block i is [src_base + offsets[i], + block_bytes) into [dst_base + offsets[count +
 * i], + block_bytes); each block is cut into pieces of kCopyPieceBytes, and the kernel computes
 * a piece's addresses from its index. `offsets` (device memory) holds the 2 x count offsets;
 * src_base, dst_base, block_bytes and every offset are multiples of 16; blocks do not overlap
 * in the destination.
 */
cudaError_t launch_gather_block_list(uint64_t src_base, uint64_t dst_base, const uint64_t* offsets, uint32_t count,
                                     uint64_t block_bytes, uint32_t max_blocks, cudaStream_t stream);

/** The pieces launch_gather_block_list cuts `count` blocks of `block_bytes` into. */
inline uint64_t block_list_pieces(uint64_t count, uint64_t block_bytes) {
  return count * ((block_bytes + kCopyPieceBytes - 1) / kCopyPieceBytes);
}

/** Word i of [base, base + bytes) (bytes a multiple of 4) := pattern_word(i, seed). */
cudaError_t launch_fill_pattern(void* base, uint64_t bytes, uint32_t seed, cudaStream_t stream);

/**
 * Adds to *mismatches (device memory) the number of words of each piece's destination that
 * differ from pattern_word(piece.src / 4 + k, seed): piece.src is the byte offset, in the
 * memory that was filled, that the destination should have been copied from.
 */
cudaError_t launch_count_pattern_mismatches(const CopyPiece* pieces, uint32_t count, uint32_t seed,
                                            unsigned long long* mismatches, cudaStream_t stream);

}  // namespace sy::transfer
