#include "transfer/cuda_copy_kernels.h"

#include <algorithm>

namespace sy::transfer {
namespace {

constexpr int kThreads = 256;
constexpr int kVectorsPerThread = static_cast<int>(kCopyPieceBytes / (kThreads * 16));
static_assert(kVectorsPerThread * kThreads * 16 == kCopyPieceBytes, "a piece is one round of the block");

// Every load of a round is issued before its first store, so each thread keeps 8 independent
// 16-byte loads in flight; the source is read once, so loads bypass L1 and are marked
// evict-first in L2 (__ldcs). The next piece's descriptor is loaded before this piece's copy.
template <bool kStreamingStores>
__device__ __forceinline__ void copy_piece(const CopyPiece& piece) {
  if (((piece.src | piece.dst | piece.bytes) & 15) == 0) {
    const uint4* src = reinterpret_cast<const uint4*>(piece.src);
    uint4* dst = reinterpret_cast<uint4*>(piece.dst);
    const uint64_t n = piece.bytes / 16;
    for (uint64_t base = 0; base < n; base += kThreads * kVectorsPerThread) {
      uint4 v[kVectorsPerThread];
#pragma unroll
      for (int k = 0; k < kVectorsPerThread; ++k) {
        const uint64_t i = base + k * kThreads + threadIdx.x;
        if (i < n) v[k] = __ldcs(src + i);
      }
#pragma unroll
      for (int k = 0; k < kVectorsPerThread; ++k) {
        const uint64_t i = base + k * kThreads + threadIdx.x;
        if (i < n) {
          if constexpr (kStreamingStores) {
            __stcs(dst + i, v[k]);
          } else {
            dst[i] = v[k];
          }
        }
      }
    }
  } else {
    const uint8_t* src = reinterpret_cast<const uint8_t*>(piece.src);
    uint8_t* dst = reinterpret_cast<uint8_t*>(piece.dst);
    for (uint64_t i = threadIdx.x; i < piece.bytes; i += kThreads) dst[i] = src[i];
  }
}

template <bool kStreamingStores>
__global__ void __launch_bounds__(kThreads) gather_copy_kernel(const CopyPiece* __restrict__ pieces, uint32_t count) {
  uint32_t p = blockIdx.x;
  if (p >= count) return;
  CopyPiece piece = pieces[p];
  for (;;) {
    const uint32_t next = p + gridDim.x;
    CopyPiece next_piece;
    if (next < count) next_piece = pieces[next];
    copy_piece<kStreamingStores>(piece);
    if (next >= count) break;
    p = next;
    piece = next_piece;
  }
}

// Piece p is piece p % pieces_per_block of block p / pieces_per_block; streaming stores, as the
// backend's piece-list launch. The backend launches a block per piece; a smaller grid loops over
// pieces gridDim apart, reading the next piece's offsets before this piece's copy.
__global__ void __launch_bounds__(kThreads)
    gather_block_list_kernel(uint64_t src_base, uint64_t dst_base, const uint64_t* __restrict__ offsets,
                             uint32_t count, uint64_t block_bytes, uint32_t pieces_per_block) {
  const uint64_t total = static_cast<uint64_t>(count) * pieces_per_block;
  uint64_t p = blockIdx.x;
  if (p >= total) return;
  auto piece_at = [&](uint64_t index) {
    const uint32_t block = static_cast<uint32_t>(index / pieces_per_block);
    const uint64_t start = (index - static_cast<uint64_t>(block) * pieces_per_block) * kCopyPieceBytes;
    CopyPiece piece;
    piece.src = src_base + offsets[block] + start;
    piece.dst = dst_base + offsets[static_cast<uint64_t>(count) + block] + start;
    piece.bytes = block_bytes - start < kCopyPieceBytes ? block_bytes - start : kCopyPieceBytes;
    return piece;
  };
  CopyPiece piece = piece_at(p);
  for (;;) {
    const uint64_t next = p + gridDim.x;
    CopyPiece next_piece;
    if (next < total) next_piece = piece_at(next);
    copy_piece<true>(piece);
    if (next >= total) break;
    p = next;
    piece = next_piece;
  }
}

__device__ __forceinline__ uint32_t pattern_word(uint64_t index, uint32_t seed) {
  // A 32-bit finalizer (murmur3's) of the word index: neighbouring words and regions filled
  // with other seeds differ, so a misplaced block never matches by chance.
  uint32_t x = static_cast<uint32_t>(index) ^ static_cast<uint32_t>(index >> 32) * 0x9e3779b9u ^ seed;
  x ^= x >> 16;
  x *= 0x85ebca6bu;
  x ^= x >> 13;
  x *= 0xc2b2ae35u;
  x ^= x >> 16;
  return x;
}

__global__ void fill_pattern_kernel(uint32_t* base, uint64_t words, uint32_t seed) {
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; i < words;
       i += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
    base[i] = pattern_word(i, seed);
  }
}

__global__ void count_pattern_mismatches_kernel(const CopyPiece* pieces, uint32_t count, uint32_t seed,
                                                unsigned long long* mismatches) {
  unsigned long long bad = 0;
  for (uint32_t p = blockIdx.x; p < count; p += gridDim.x) {
    const CopyPiece piece = pieces[p];
    const uint32_t* dst = reinterpret_cast<const uint32_t*>(piece.dst);
    const uint64_t first = piece.src / 4;
    for (uint64_t k = threadIdx.x; k < piece.bytes / 4; k += blockDim.x) bad += dst[k] != pattern_word(first + k, seed);
  }
  if (bad) atomicAdd(mismatches, bad);
}

int sm_count() {
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return sms > 0 ? sms : 1;
}

}  // namespace

void plan_copy_pieces(uint64_t src, uint64_t dst, uint64_t bytes, std::vector<CopyPiece>& out) {
  auto emit = [&](uint64_t length) {
    while (length > 0) {
      uint64_t n = std::min(length, kCopyPieceBytes);
      out.push_back({src, dst, n});
      src += n;
      dst += n;
      bytes -= n;
      length -= n;
    }
  };
  if (((src ^ dst) & 15) == 0) {
    emit(std::min(bytes, (16 - (src & 15)) & 15));  // head, up to the first aligned byte
    uint64_t tail = bytes & 15;
    emit(bytes - tail);
    emit(tail);
  } else {
    emit(bytes);  // misaligned against each other: byte copies
  }
}

cudaError_t launch_gather_copy(const CopyPiece* pieces, uint32_t count, uint32_t max_blocks, cudaStream_t stream,
                               bool streaming_stores) {
  if (count == 0) return cudaSuccess;
  const uint32_t blocks = std::min(count, std::max(max_blocks, 1u));
  if (streaming_stores) {
    gather_copy_kernel<true><<<blocks, kThreads, 0, stream>>>(pieces, count);
  } else {
    gather_copy_kernel<false><<<blocks, kThreads, 0, stream>>>(pieces, count);
  }
  return cudaGetLastError();
}

cudaError_t launch_gather_block_list(uint64_t src_base, uint64_t dst_base, const uint64_t* offsets, uint32_t count,
                                     uint64_t block_bytes, uint32_t max_blocks, cudaStream_t stream) {
  const uint64_t pieces = block_list_pieces(count, block_bytes);
  if (pieces == 0) return cudaSuccess;
  const uint64_t per_block = pieces / count;
  if (per_block > UINT32_MAX) return cudaErrorInvalidValue;
  const uint32_t blocks = static_cast<uint32_t>(std::min<uint64_t>(pieces, std::max(max_blocks, 1u)));
  gather_block_list_kernel<<<blocks, kThreads, 0, stream>>>(src_base, dst_base, offsets, count, block_bytes,
                                                           static_cast<uint32_t>(per_block));
  return cudaGetLastError();
}

cudaError_t launch_fill_pattern(void* base, uint64_t bytes, uint32_t seed, cudaStream_t stream) {
  const uint64_t words = bytes / 4;
  if (words == 0) return cudaSuccess;
  const uint64_t blocks = std::min<uint64_t>((words + 255) / 256, static_cast<uint64_t>(sm_count()) * 8);
  fill_pattern_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(static_cast<uint32_t*>(base), words, seed);
  return cudaGetLastError();
}

cudaError_t launch_count_pattern_mismatches(const CopyPiece* pieces, uint32_t count, uint32_t seed,
                                            unsigned long long* mismatches, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  const unsigned blocks = std::min<unsigned>(count, static_cast<unsigned>(sm_count()) * 8);
  count_pattern_mismatches_kernel<<<blocks, 256, 0, stream>>>(pieces, count, seed, mismatches);
  return cudaGetLastError();
}

}  // namespace sy::transfer
