// Where the persistent decode step's time goes (SWITCHYARD_CUDA_PERSISTENT_TRACE=1): the kernel's
// blocks write %globaltimer at each phase's points (DecodeStep::trace); after each traced step
// this copies them back and, every 200 steps, prints per phase (averaged over layers and steps)
// how long the barrier took to release the first block after the last arrival, how far apart the
// blocks started, and the mean time of waiting for the weights, staging the input and the dot
// products, to stderr. A diagnostic: the copy back costs a synchronous transfer per step.
#pragma once
#include <cstdint>
#include <vector>

namespace sy::cuda {

class DecodeStepTrace {
 public:
  /** Reads the switch; when on, allocates the device buffer for `blocks` blocks of `num_layers` layers. */
  void init(int blocks, int num_layers);
  ~DecodeStepTrace();
  bool on() const { return device_ != nullptr; }
  unsigned long long* device() const { return device_; }
  /** After a traced step has finished on the device. */
  void collect();

 private:
  void report();
  int blocks_ = 0, num_layers_ = 0, steps_ = 0;
  unsigned long long* device_ = nullptr;
  std::vector<unsigned long long> host_;
  std::vector<double> sums_;  // per phase: barrier, start spread, stage, weights, dot mean, dot max, span
  double total_ = 0;
};

}  // namespace sy::cuda
