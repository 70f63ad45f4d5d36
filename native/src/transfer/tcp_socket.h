// Non-blocking TCP sockets for the TCP backend: a listener, an outgoing connect that
// completes later (poll for writable, then connect_result), and errno as a message.
#pragma once
#include <cstdint>
#include <string>

namespace sy::transfer {

/** strerror(errno) as "what: message". */
std::string system_message(const std::string& what, int err);

struct Listener {
  int fd = -1;
  uint16_t port = 0;  // the bound port (the one picked when 0 was asked for)
};

/** Binds and listens on host:port (port 0: any free port). Throws TransferError(System). */
Listener listen_tcp(const std::string& host, uint16_t port);

/**
 * Starts a non-blocking connect to host:port. Returns the socket, or -1 with `error` set when
 * the address does not resolve or the connect fails at once (e.g. connection refused).
 */
int start_connect(const std::string& host, uint16_t port, std::string& error);

/** After a connecting socket polls writable: 0, or the connect's errno. */
int connect_result(int fd);

/** Accepts one connection, non-blocking; -1 when none is waiting. */
int accept_connection(int listen_fd);

}  // namespace sy::transfer
