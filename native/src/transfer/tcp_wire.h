// The TCP backend's frames. Every frame is a 24-byte header (type, flags, request id, body
// length; little-endian) and a body. The reader (the agent that posted the READ) connects to
// the target's listener, says Hello with its name, then sends ReadRequests of at most one
// chunk each; the target answers each with ReadData (the bytes, straight from the registered
// region) or ReadError (why it refused). Notifications travel either way on any connection.
//
//   Hello         body: u32 protocol version, u32 length + agent name
//   ReadRequest   id: request id; body: u64 region id, u64 offset, u64 length
//   ReadData      id: request id; body: exactly the requested bytes
//   ReadError     id: request id; body: a UTF-8 message
//   Notification  body: the notification's bytes
#pragma once
#include <cstdint>

namespace sy::transfer::wire {

constexpr uint32_t kProtocolVersion = 1;
constexpr size_t kHeaderBytes = 24;
constexpr uint64_t kMaxHelloBytes = 4096;
constexpr uint64_t kMaxErrorBytes = 64 * 1024;
constexpr uint64_t kMaxNotificationBytes = 1024 * 1024;
constexpr uint64_t kReadRequestBytes = 24;

enum class FrameType : uint32_t { Hello = 1, ReadRequest = 2, ReadData = 3, ReadError = 4, Notification = 5 };

struct FrameHeader {
  FrameType type = FrameType::Hello;
  uint32_t flags = 0;
  uint64_t request_id = 0;
  uint64_t body_length = 0;
};

inline void store_le(uint8_t* p, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
inline uint64_t load_le(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

inline void encode_header(const FrameHeader& h, uint8_t* out) {
  store_le(out, static_cast<uint32_t>(h.type), 4);
  store_le(out + 4, h.flags, 4);
  store_le(out + 8, h.request_id, 8);
  store_le(out + 16, h.body_length, 8);
}

inline FrameHeader decode_header(const uint8_t* in) {
  FrameHeader h;
  h.type = static_cast<FrameType>(load_le(in, 4));
  h.flags = static_cast<uint32_t>(load_le(in + 4, 4));
  h.request_id = load_le(in + 8, 8);
  h.body_length = load_le(in + 16, 8);
  return h;
}

}  // namespace sy::transfer::wire
