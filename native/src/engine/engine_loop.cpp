#include "engine/engine_loop.h"

namespace sy {

EngineLoop::EngineLoop(std::unique_ptr<LlmEngine> engine, Sink sink) : engine_(std::move(engine)), sink_(std::move(sink)) {
  stats_ = engine_->stats();
  thread_ = std::thread([this] { run(); });
}

EngineLoop::~EngineLoop() { stop(); }

void EngineLoop::add(const std::string& id, std::vector<int32_t> prompt, SamplingParams params, Disaggregation d) {
  engine_->validate(prompt, params, d);
  push(Command{Command::Kind::Add, id, std::move(prompt), std::move(params), d});
}

void EngineLoop::abort(const std::string& id) { push(Command{Command::Kind::Abort, id, {}, {}, {}}); }

void EngineLoop::commit_remote_kv(const std::string& id) { push(Command{Command::Kind::CommitRemoteKv, id, {}, {}, {}}); }

void EngineLoop::recompute_remote_kv(const std::string& id) {
  push(Command{Command::Kind::RecomputeRemoteKv, id, {}, {}, {}});
}

void EngineLoop::release_held_kv(const std::string& id) { push(Command{Command::Kind::ReleaseHeldKv, id, {}, {}, {}}); }

void EngineLoop::barrier(int64_t id) { push(Command{Command::Kind::Barrier, {}, {}, {}, {}, id}); }

void EngineLoop::push(Command command) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (command.kind == Command::Kind::Add) ++stats_.waiting;
    commands_.push_back(std::move(command));
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
        switch (c.kind) {
          case Command::Kind::Abort:
            engine_->abort_request(c.id);
            continue;
          case Command::Kind::CommitRemoteKv:
          case Command::Kind::RecomputeRemoteKv:
            engine_->end_remote_kv_wait(c.id, c.kind == Command::Kind::CommitRemoteKv);
            continue;
          case Command::Kind::ReleaseHeldKv:
            engine_->release_held_kv(c.id);
            continue;
          case Command::Kind::Barrier:
            result.barriers.push_back(c.barrier_id);
            continue;
          case Command::Kind::Add:
            break;
        }
        try {
          engine_->add_request(c.id, std::move(c.prompt), std::move(c.params), c.disaggregation);
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
          result.reservations = std::move(step.reservations);
        } catch (const std::exception& e) {
          // A failed step (e.g. out of host memory) ends the requests, never the process.
          engine_->fail_all(std::string("engine step failed: ") + e.what());
        }
      }
      has_work = engine_->has_work();
      std::lock_guard<std::mutex> stats_lock(mutex_);
      stats_ = engine_->stats();
      for (const auto& c : commands_)
        if (c.kind == Command::Kind::Add) ++stats_.waiting;
    }
    if (!result.outputs.empty() || !result.events.empty() || !result.reservations.empty() || !result.barriers.empty()) {
      sink_(std::move(result));
    }
  }
}

}  // namespace sy
