// SiLU(gate) * up, the one expression every kernel that makes the down projection's input uses
// (silu_mul for cuBLAS steps, gemv's prologue for small ones), so a token gets the same bits on
// either path. Fast intrinsics: the result is rounded to 16 bits (hi + lo) right after, far
// coarser than their few ulps, and in the gemv prologue every block evaluates it for the whole
// row, where expf and an IEEE division are tens of instructions an element.
#pragma once

namespace sy::cuda {

__device__ __forceinline__ float silu_times(float gate, float up) {
  return __fdividef(gate, 1.0f + __expf(-gate)) * up;
}

}  // namespace sy::cuda
