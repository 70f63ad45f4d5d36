// Views of weight tensors. Matrices stay in the dtype of the file (memory-mapped); kernels
// convert to fp32 as they read. Nothing here owns memory.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace sy {

enum class DType { F32, F16, BF16 };

inline size_t dtype_size(DType t) { return t == DType::F32 ? 4 : 2; }
inline const char* dtype_name(DType t) { return t == DType::F32 ? "F32" : t == DType::F16 ? "F16" : "BF16"; }

/** A row-major 2-D (or 1-D, rows = 1) tensor in file memory. */
struct WeightView {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
};

float bf16_to_f32(uint16_t bits);
float f16_to_f32(uint16_t bits);
/** Element i of a weight converted to fp32 (slow path; used for small vectors). */
float weight_at(const WeightView& w, int64_t i);
/** A whole (small) weight converted to fp32, e.g. norm weights. */
std::vector<float> weight_to_f32(const WeightView& w);

}  // namespace sy
