// The one exception type of the transfer agent. Its kind says what went wrong in terms a
// caller acts on (retry elsewhere, fix the request, give up), and crosses to JavaScript as
// TransferError.code.
#pragma once
#include <stdexcept>
#include <string>

namespace sy::transfer {

enum class ErrorKind {
  Invalid,   // a bad argument or descriptor: the caller's fault, never retried
  Rejected,  // the remote agent refused a read (its region is gone or too small)
  Timeout,   // no completion before the deadline
  Closed,    // the connection to the peer, or this agent, was closed
  Protocol,  // the peer sent something this agent does not understand
  Canceled,  // the caller canceled the transfer
  System,    // a socket or CUDA call failed; the message carries the system's
};

const char* error_kind_name(ErrorKind kind);

class TransferError : public std::runtime_error {
 public:
  TransferError(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

}  // namespace sy::transfer
