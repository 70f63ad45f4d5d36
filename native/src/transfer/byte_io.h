// Little-endian encoding for the transfer agent's two binary formats: the metadata blob an
// agent exports and the frames its TCP backend sends. ByteReader throws TransferError on a
// short or malformed input, so a corrupt blob or frame is reported, never read past its end.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

#include "transfer/transfer_error.h"

namespace sy::transfer {

class ByteWriter {
 public:
  void u8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void u32(uint32_t v) { put(v, 4); }
  void u64(uint64_t v) { put(v, 8); }
  void i32(int32_t v) { u32(static_cast<uint32_t>(v)); }
  /** Length-prefixed (u32) bytes. */
  void bytes(const std::string& s) {
    u32(static_cast<uint32_t>(s.size()));
    out_.append(s);
  }
  std::string& str() { return out_; }

 private:
  void put(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  std::string out_;
};

class ByteReader {
 public:
  ByteReader(const void* data, size_t size, const char* what)
      : p_(static_cast<const uint8_t*>(data)), n_(size), what_(what) {}
  uint8_t u8() { return static_cast<uint8_t>(get(1)); }
  uint32_t u32() { return static_cast<uint32_t>(get(4)); }
  uint64_t u64() { return get(8); }
  int32_t i32() { return static_cast<int32_t>(u32()); }
  std::string bytes(size_t max_len) {
    uint32_t len = u32();
    if (len > max_len || len > n_ - pos_) {
      throw TransferError(ErrorKind::Invalid, std::string(what_) + ": a field of " + std::to_string(len) +
                                                  " bytes does not fit (at most " + std::to_string(max_len) + ")");
    }
    std::string s(reinterpret_cast<const char*>(p_ + pos_), len);
    pos_ += len;
    return s;
  }
  bool at_end() const { return pos_ == n_; }

 private:
  uint64_t get(int n) {
    if (n_ - pos_ < static_cast<size_t>(n)) {
      throw TransferError(ErrorKind::Invalid, std::string(what_) + " is truncated");
    }
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(p_[pos_ + i]) << (8 * i);
    pos_ += n;
    return v;
  }
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
  const char* what_;
};

}  // namespace sy::transfer
