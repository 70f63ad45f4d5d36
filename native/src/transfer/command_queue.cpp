#include "transfer/command_queue.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "transfer/tcp_wire.h"
#include "transfer/transfer_error.h"

namespace sy::transfer {

BackendCommand BackendCommand::read(ReadJob job) {
  BackendCommand c;
  c.kind = Kind::Read;
  c.transfer_id = job.transfer_id;
  c.job = std::move(job);
  return c;
}

BackendCommand BackendCommand::cancel(uint64_t transfer_id) {
  BackendCommand c;
  c.kind = Kind::Cancel;
  c.transfer_id = transfer_id;
  return c;
}

BackendCommand BackendCommand::notify(std::string peer, std::shared_ptr<const AgentMetadata> address, std::string bytes) {
  // Both backends carry a notification in one message; the TCP wire's limit holds for all.
  if (bytes.size() > wire::kMaxNotificationBytes) {
    throw TransferError(ErrorKind::Invalid, "a notification holds at most " + std::to_string(wire::kMaxNotificationBytes) +
                                                " bytes, not " + std::to_string(bytes.size()));
  }
  BackendCommand c;
  c.kind = Kind::Notify;
  c.peer = std::move(peer);
  c.address = std::move(address);
  c.bytes = std::move(bytes);
  return c;
}

CommandQueue::CommandQueue(std::string agent_name) : agent_name_(std::move(agent_name)) {
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) throw TransferError(ErrorKind::System, std::string("eventfd: ") + std::strerror(errno));
}

CommandQueue::~CommandQueue() {
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void CommandQueue::push(BackendCommand command) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) throw TransferError(ErrorKind::Closed, "agent '" + agent_name_ + "' is closed");
    commands_.push_back(std::move(command));
  }
  wake();
}

std::deque<BackendCommand> CommandQueue::take(bool& closing) {
  std::deque<BackendCommand> taken;
  std::lock_guard<std::mutex> lock(mu_);
  taken.swap(commands_);
  closing = closed_;
  return taken;
}

void CommandQueue::close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
  }
  wake();
}

void CommandQueue::wake() {
  uint64_t one = 1;
  // A counter that cannot take more already holds a wakeup; nothing is lost when this fails.
  [[maybe_unused]] ssize_t n = ::write(wake_fd_, &one, sizeof one);
}

void CommandQueue::clear_wakeup() {
  uint64_t count;
  [[maybe_unused]] ssize_t n = ::read(wake_fd_, &count, sizeof count);
}

}  // namespace sy::transfer
