#include "engine/engine_loop.h"

namespace sy {

EngineLoop::EngineLoop(std::unique_ptr<LlmEngine> engine, Sink sink) : engine_(std::move(engine)), sink_(std::move(sink)) {
  stats_ = engine_->stats();
  thread_ = std::thread([this] { run(); });
}

EngineLoop::~EngineLoop() { stop(); }

void EngineLoop::add(const std::string& id, std::vector<int32_t> prompt, SamplingParams params) {
  engine_->validate(prompt, params);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    commands_.push_back(Command{false, id, std::move(prompt), std::move(params)});
    ++stats_.waiting;
  }
  wake_.notify_one();
}

void EngineLoop::abort(const std::string& id) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    commands_.push_back(Command{true, id, {}, {}});
  }
  wake_.notify_one();
}

EngineStats EngineLoop::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

std::vector<KvEventRecord> EngineLoop::kv_snapshot() {
  std::lock_guard<std::mutex> lock(engine_mutex_);
  return engine_->kv_snapshot();
}

std::string EngineLoop::check_invariants() {
  std::lock_guard<std::mutex> lock(engine_mutex_);
  return engine_->check_invariants();
}

void EngineLoop::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void EngineLoop::run() {
  bool has_work = false;
  for (;;) {
    std::vector<Command> commands;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || !commands_.empty() || has_work; });
      if (stop_) return;
      commands.swap(commands_);
    }
    StepResult result;
    {
      std::lock_guard<std::mutex> lock(engine_mutex_);
      for (auto& c : commands) {
        if (c.is_abort) {
          engine_->abort_request(c.id);
          continue;
        }
        try {
          engine_->add_request(c.id, std::move(c.prompt), std::move(c.params));
        } catch (const std::exception& e) {
          RequestOutput out;
          out.request_id = c.id;
          out.finish_reason = "error";
          out.error_message = e.what();
          result.outputs.push_back(std::move(out));
        }
      }
      if (engine_->has_work()) {
        try {
          StepResult step = engine_->step();
          for (auto& o : step.outputs) result.outputs.push_back(std::move(o));
          result.events = std::move(step.events);
          result.num_tokens = step.num_tokens;
        } catch (const std::exception& e) {
          // A failed step (e.g. out of host memory) ends the requests, never the process.
          engine_->fail_all(std::string("engine step failed: ") + e.what());
        }
      }
      has_work = engine_->has_work();
      std::lock_guard<std::mutex> stats_lock(mutex_);
      stats_ = engine_->stats();
      for (const auto& c : commands_)
        if (!c.is_abort) ++stats_.waiting;
    }
    if (!result.outputs.empty() || !result.events.empty()) sink_(std::move(result));
  }
}

}  // namespace sy
