// Runs an LlmEngine on its own thread: requests, aborts and the disaggregation commands
// (commit or recompute a remote prefill, release held KV) arrive through a command queue,
// the thread steps while there is work and sleeps when there is none, and each step's
// outputs and KV events leave through `sink` (the binding forwards them to JavaScript).
#pragma once
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/llm_engine.h"

namespace sy {

class EngineLoop {
 public:
  using Sink = std::function<void(StepResult&&)>;

  EngineLoop(std::unique_ptr<LlmEngine> engine, Sink sink);
  ~EngineLoop();

  /** Validates on the caller's thread (throws RequestError), then queues the request. */
  void add(const std::string& id, std::vector<int32_t> prompt, SamplingParams params, Disaggregation disaggregation = {});
  void abort(const std::string& id);
  void commit_remote_kv(const std::string& id);
  void recompute_remote_kv(const std::string& id);
  void release_held_kv(const std::string& id);
  /** `id` comes back in the `barriers` of the result after every command queued before it is applied. */
  void barrier(int64_t id);
  EngineStats stats() const;
  /** Waits for the current step to end, then reads the pool. */
  std::vector<KvEventRecord> kv_snapshot();
  std::string check_invariants();
  /** Stops the thread after the current step; idempotent. */
  void stop();

  const LlmEngine& engine() const { return *engine_; }

 private:
  struct Command {
    enum class Kind { Add, Abort, CommitRemoteKv, RecomputeRemoteKv, ReleaseHeldKv, Barrier };
    Kind kind;
    std::string id;
    std::vector<int32_t> prompt;
    SamplingParams params;
    Disaggregation disaggregation;
    int64_t barrier_id = 0;
  };
  void push(Command command);
  void run();

  std::unique_ptr<LlmEngine> engine_;
  Sink sink_;
  mutable std::mutex mutex_;  // commands_, stop_, stats_
  std::condition_variable wake_;
  std::vector<Command> commands_;
  bool stop_ = false;
  EngineStats stats_;
  std::mutex engine_mutex_;  // held while the engine steps
  std::thread thread_;
};

}  // namespace sy
