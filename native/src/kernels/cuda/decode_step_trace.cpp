#include "kernels/cuda/decode_step_trace.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/kernels.h"

namespace sy::cuda {
namespace {

constexpr int kStats = 7;
constexpr int kReportEvery = 200;
const char* const kPhaseNames[kDecodeStepPhases] = {"qkv", "attention", "o", "gate_up", "down"};

}  // namespace

void DecodeStepTrace::init(int blocks, int num_layers) {
  const char* v = std::getenv("SWITCHYARD_CUDA_PERSISTENT_TRACE");
  if (!v || std::strcmp(v, "1") != 0) return;
  blocks_ = blocks;
  num_layers_ = num_layers;
  host_.resize(static_cast<size_t>(blocks) * num_layers * kDecodeStepPhases * kDecodeStepTracePoints);
  sums_.assign(kDecodeStepPhases * kStats, 0.0);
  SY_CUDA_CHECK(cudaMalloc(&device_, host_.size() * sizeof(unsigned long long)));
}

DecodeStepTrace::~DecodeStepTrace() {
  if (device_) cudaFree(device_);
}

void DecodeStepTrace::collect() {
  SY_CUDA_CHECK(cudaMemcpy(host_.data(), device_, host_.size() * sizeof(unsigned long long), cudaMemcpyDeviceToHost));
  auto at = [&](int b, int l, int phase, int point) {
    return static_cast<double>(
        host_[((static_cast<size_t>(b) * num_layers_ + l) * kDecodeStepPhases + phase) * kDecodeStepTracePoints + point]);
  };
  double first = 1e300, last = 0;
  for (int l = 0; l < num_layers_; ++l) {
    for (int ph = 0; ph < kDecodeStepPhases; ++ph) {
      double start_min = 1e300, start_max = 0, done_max = 0, prev_done_max = 0, weights = 0, stage = 0, dot = 0,
             dot_max = 0;
      const bool has_prev = l > 0 || ph > 0;
      const int prev_l = ph > 0 ? l : l - 1, prev_ph = ph > 0 ? ph - 1 : kDecodeStepPhases - 1;
      for (int b = 0; b < blocks_; ++b) {
        const double t0 = at(b, l, ph, 0), t1 = at(b, l, ph, 1), t2 = at(b, l, ph, 2), t3 = at(b, l, ph, 3);
        start_min = std::min(start_min, t0);
        start_max = std::max(start_max, t0);
        done_max = std::max(done_max, t3);
        if (has_prev) prev_done_max = std::max(prev_done_max, at(b, prev_l, prev_ph, 3));
        weights += t1 - t0;
        stage += t2 - t1;
        dot += t3 - t2;
        dot_max = std::max(dot_max, t3 - t2);
      }
      double* s = &sums_[ph * kStats];
      if (has_prev) s[0] += start_min - prev_done_max;
      s[1] += start_max - start_min;
      s[2] += weights / blocks_;
      s[3] += stage / blocks_;
      s[4] += dot / blocks_;
      s[5] += dot_max;
      s[6] += done_max - start_min;
      first = std::min(first, start_min);
      last = std::max(last, done_max);
    }
  }
  total_ += last - first;
  if (++steps_ == kReportEvery) report();
}

void DecodeStepTrace::report() {
  const double layers = static_cast<double>(steps_) * num_layers_;
  fprintf(stderr,
          "persistent decode step, %d steps: kernel %.1f us (first start to last done); per layer, us:\n"
          "  phase      barrier  start-spread  weights-wait  stage  dot-mean  dot-max  span\n",
          steps_, total_ / steps_ / 1000.0);
  for (int ph = 0; ph < kDecodeStepPhases; ++ph) {
    const double* s = &sums_[ph * kStats];
    const double barrier_layers = ph == 0 ? layers - steps_ : layers;  // layer 0's qkv has no barrier before it
    fprintf(stderr, "  %-9s  %7.2f  %12.2f  %12.2f  %5.2f  %8.2f  %7.2f  %5.2f\n", kPhaseNames[ph],
            s[0] / barrier_layers / 1000.0, s[1] / layers / 1000.0, s[2] / layers / 1000.0, s[3] / layers / 1000.0,
            s[4] / layers / 1000.0, s[5] / layers / 1000.0, s[6] / layers / 1000.0);
  }
  steps_ = 0;
  total_ = 0;
  std::fill(sums_.begin(), sums_.end(), 0.0);
}

}  // namespace sy::cuda
