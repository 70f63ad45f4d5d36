#include "transfer/transfer_error.h"

namespace sy::transfer {

const char* error_kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::Invalid: return "invalid";
    case ErrorKind::Rejected: return "rejected";
    case ErrorKind::Timeout: return "timeout";
    case ErrorKind::Closed: return "closed";
    case ErrorKind::Protocol: return "protocol";
    case ErrorKind::Canceled: return "canceled";
    case ErrorKind::System: return "system";
  }
  return "unknown";
}

}  // namespace sy::transfer
