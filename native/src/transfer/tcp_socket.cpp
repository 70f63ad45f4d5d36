#include "transfer/tcp_socket.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "transfer/transfer_error.h"

namespace sy::transfer {
namespace {

void tune(int fd) {
  int one = 1;
  // Requests are small and latency-bound; data frames are large and sent with writev.
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

struct AddrInfo {
  addrinfo* list = nullptr;
  ~AddrInfo() {
    if (list) freeaddrinfo(list);
  }
};

int resolve(const std::string& host, uint16_t port, bool passive, AddrInfo& out) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  std::string service = std::to_string(port);
  return getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &out.list);
}

}  // namespace

std::string system_message(const std::string& what, int err) {
  char buf[256];
  // GNU strerror_r returns the message (maybe not in buf).
  const char* msg = strerror_r(err, buf, sizeof buf);
  return what + ": " + msg;
}

Listener listen_tcp(const std::string& host, uint16_t port) {
  AddrInfo ai;
  int rc = resolve(host, port, true, ai);
  if (rc != 0) {
    throw TransferError(ErrorKind::System, "cannot resolve listen host '" + host + "': " + gai_strerror(rc));
  }
  int last_err = 0;
  for (addrinfo* a = ai.list; a; a = a->ai_next) {
    int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      last_err = errno;
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 128) == 0) {
      sockaddr_storage bound{};
      socklen_t len = sizeof bound;
      getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
      uint16_t p = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                               : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
      return Listener{fd, p};
    }
    last_err = errno;
    close(fd);
  }
  throw TransferError(ErrorKind::System,
                      system_message("cannot listen on " + host + ":" + std::to_string(port), last_err));
}

int start_connect(const std::string& host, uint16_t port, std::string& error) {
  AddrInfo ai;
  int rc = resolve(host, port, false, ai);
  if (rc != 0) {
    error = "cannot resolve '" + host + "': " + gai_strerror(rc);
    return -1;
  }
  int last_err = 0;
  for (addrinfo* a = ai.list; a; a = a->ai_next) {
    int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      last_err = errno;
      continue;
    }
    tune(fd);
    if (connect(fd, a->ai_addr, a->ai_addrlen) == 0 || errno == EINPROGRESS) return fd;
    last_err = errno;
    close(fd);
  }
  error = system_message("cannot connect", last_err);
  return -1;
}

int connect_result(int fd) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno;
  return err;
}

int accept_connection(int listen_fd) {
  int fd = accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd >= 0) tune(fd);
  return fd;
}

}  // namespace sy::transfer
