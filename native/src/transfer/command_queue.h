// The hand-off from callers' threads to a network backend's own I/O thread (TCP, UCX). Callers
// queue commands under a lock and signal an eventfd; the I/O thread polls that fd beside its
// sockets, takes the whole queue at once and acts on it, so every socket and every transfer's
// state is touched by that one thread alone.
#pragma once
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>

#include "transfer/agent_metadata.h"
#include "transfer/backend.h"

namespace sy::transfer {

struct BackendCommand {
  enum class Kind { Read, Cancel, Notify } kind = Kind::Read;
  ReadJob job;               // Read
  uint64_t transfer_id = 0;  // Read, Cancel
  std::string peer;          // Notify: the peer's name
  std::shared_ptr<const AgentMetadata> address;  // Notify: its metadata, when loaded
  std::string bytes;         // Notify: the message

  static BackendCommand read(ReadJob job);
  static BackendCommand cancel(uint64_t transfer_id);
  /** Throws TransferError(Invalid) for a message over the wire's limit. */
  static BackendCommand notify(std::string peer, std::shared_ptr<const AgentMetadata> address, std::string bytes);
};

class CommandQueue {
 public:
  /** `agent_name` names the agent in the error a push after close() throws. */
  explicit CommandQueue(std::string agent_name);
  ~CommandQueue();
  CommandQueue(const CommandQueue&) = delete;
  CommandQueue& operator=(const CommandQueue&) = delete;

  /** Throws TransferError(Closed) once close() was called. */
  void push(BackendCommand command);
  /** Everything queued so far; `closing` tells whether close() was called before the take. */
  std::deque<BackendCommand> take(bool& closing);
  /** Refuses further pushes and wakes the I/O thread to see it. */
  void close();

  /** Readable while a command (or close) is waiting: poll it beside the sockets. */
  int fd() const { return wake_fd_; }
  /** After poll reported fd() readable. */
  void clear_wakeup();

 private:
  void wake();

  const std::string agent_name_;
  int wake_fd_ = -1;
  std::mutex mu_;
  std::deque<BackendCommand> commands_;
  bool closed_ = false;
};

}  // namespace sy::transfer
