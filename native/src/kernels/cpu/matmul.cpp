#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SY_AVX2 1
#endif

namespace sy {
namespace {

// Converts row r of w into fp32.
void load_row(const WeightView& w, int64_t r, float* out) {
  const int64_t k = w.cols;
  if (w.dtype == DType::F32) {
    std::memcpy(out, static_cast<const float*>(w.data) + r * k, sizeof(float) * k);
    return;
  }
  const uint16_t* src = static_cast<const uint16_t*>(w.data) + r * k;
  int64_t i = 0;
#ifdef SY_AVX2
  if (w.dtype == DType::BF16) {
    for (; i + 8 <= k; i += 8) {
      __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
      __m256i wide = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
      _mm256_storeu_ps(out + i, _mm256_castsi256_ps(wide));
    }
  }
#ifdef __F16C__
  if (w.dtype == DType::F16) {
    for (; i + 8 <= k; i += 8) {
      __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
      _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
    }
  }
#endif
#endif
  if (w.dtype == DType::BF16) {
    for (; i < k; ++i) out[i] = bf16_to_f32(src[i]);
  } else {
    for (; i < k; ++i) out[i] = f16_to_f32(src[i]);
  }
}

#ifdef SY_AVX2
inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  __m128 s = _mm_add_ps(lo, hi);
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
#endif

// Weight element sources: fp32 rows (converted buffers or F32 files) and bf16/f16 file rows
// read directly. Conversion to fp32 is exact, so a dot product gives bit-identical results
// whichever source feeds it.
struct F32Rows {
  using T = float;
  static float at(const float* p, int64_t i) { return p[i]; }
#ifdef SY_AVX2
  static __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
#endif
};
struct Bf16Rows {
  using T = uint16_t;
  static float at(const uint16_t* p, int64_t i) { return bf16_to_f32(p[i]); }
#ifdef SY_AVX2
  static __m256 load8(const uint16_t* p) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
#endif
};

// Every dot product sums in the same order (8 lanes over k, then the lanes, then the scalar
// tail) whether it runs alone or four at a time and whatever the batch, so a row's result
// never depends on the batch it is in: the basis of batch invariance.
template <typename S>
inline float dot1(const float* x, const typename S::T* w, int64_t k) {
  int64_t i = 0;
  float tail = 0;
#ifdef SY_AVX2
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= k; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), S::load8(w + i), acc);
  float head = hsum(acc);
#else
  float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (; i + 8 <= k; i += 8)
    for (int l = 0; l < 8; ++l) lanes[l] += x[i + l] * S::at(w, i + l);
  float head = ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
#endif
  for (; i < k; ++i) tail += x[i] * S::at(w, i);
  return head + tail;
}

// Four weight rows w, w + stride, w + 2 stride, w + 3 stride against one x row.
template <typename S>
inline void dot4(const float* x, const typename S::T* w, int64_t stride, int64_t k, float* out) {
#ifdef SY_AVX2
  int64_t i = 0;
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  for (; i + 8 <= k; i += 8) {
    __m256 xv = _mm256_loadu_ps(x + i);
    a0 = _mm256_fmadd_ps(xv, S::load8(w + i), a0);
    a1 = _mm256_fmadd_ps(xv, S::load8(w + stride + i), a1);
    a2 = _mm256_fmadd_ps(xv, S::load8(w + 2 * stride + i), a2);
    a3 = _mm256_fmadd_ps(xv, S::load8(w + 3 * stride + i), a3);
  }
  float t0 = 0, t1 = 0, t2 = 0, t3 = 0;
  for (; i < k; ++i) {
    t0 += x[i] * S::at(w, i);
    t1 += x[i] * S::at(w, stride + i);
    t2 += x[i] * S::at(w, 2 * stride + i);
    t3 += x[i] * S::at(w, 3 * stride + i);
  }
  out[0] = hsum(a0) + t0;
  out[1] = hsum(a1) + t1;
  out[2] = hsum(a2) + t2;
  out[3] = hsum(a3) + t3;
#else
  for (int j = 0; j < 4; ++j) out[j] = dot1<S>(x, w + j * stride, k);
#endif
}

// Rows [r0, r1) of y for all n rows of x; w points at weight row `w_row0` (row stride k).
template <typename S>
void rows_direct(const float* x, int64_t n, const typename S::T* w, int64_t w_row0, int64_t k, int64_t rows, int64_t r0,
                 int64_t r1, float* y) {
  int64_t r = r0;
  float r4[4];
  for (; r + 4 <= r1; r += 4) {
    for (int64_t t = 0; t < n; ++t) {
      dot4<S>(x + t * k, w + (r - w_row0) * k, k, k, r4);
      std::memcpy(y + t * rows + r, r4, sizeof r4);
    }
  }
  for (; r < r1; ++r)
    for (int64_t t = 0; t < n; ++t) y[t * rows + r] = dot1<S>(x + t * k, w + (r - w_row0) * k, k);
}

// Rows per converted tile: 64 rows of fp32 stay in L2 while every x row streams past them.
constexpr int64_t kTileRows = 64;

}  // namespace

void matmul_fast(ThreadPool& pool, const float* x, int64_t n, const WeightView& w, float* y) {
  const int64_t k = w.cols, rows = w.rows;
  const int64_t groups = (rows + 3) / 4;
  pool.parallel_for(groups, 8, [&](int64_t g0, int64_t g1) {
    const int64_t r0 = g0 * 4, r1 = std::min(rows, g1 * 4);
    if (w.dtype == DType::F32) {
      rows_direct<F32Rows>(x, n, static_cast<const float*>(w.data), 0, k, rows, r0, r1, y);
    } else if (w.dtype == DType::BF16 && n <= 4) {
      // Decode: weights are read once anyway; converting in registers saves a store and reload.
      rows_direct<Bf16Rows>(x, n, static_cast<const uint16_t*>(w.data), 0, k, rows, r0, r1, y);
    } else {
      // Prefill (or f16): convert a tile of rows to fp32 once, then multiply every x row by it.
      thread_local std::vector<float> tile;
      if (static_cast<int64_t>(tile.size()) < kTileRows * k) tile.resize(kTileRows * k);
      for (int64_t t0 = r0; t0 < r1; t0 += kTileRows) {
        const int64_t count = std::min(kTileRows, r1 - t0);
        for (int64_t j = 0; j < count; ++j) load_row(w, t0 + j, tile.data() + j * k);
        rows_direct<F32Rows>(x, n, tile.data(), t0, k, rows, t0, t0 + count, y);
      }
    }
  });
}

void matmul_reference(const float* x, int64_t n, const WeightView& w, float* y) {
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t r = 0; r < w.rows; ++r) {
      double acc = 0;
      for (int64_t i = 0; i < w.cols; ++i) acc += static_cast<double>(x[t * w.cols + i]) * weight_at(w, r * w.cols + i);
      y[t * w.rows + r] = static_cast<float>(acc);
    }
  }
}

}  // namespace sy
