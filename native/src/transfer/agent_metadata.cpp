#include "transfer/agent_metadata.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "transfer/byte_io.h"

namespace sy::transfer {
namespace {

constexpr uint32_t kMagic = 0x4d415953;  // "SYAM" little-endian: Switchyard Agent Metadata
// Version 1: the fields up to the region list. Version 2 appends the backend sections. An
// agent writes version 1 when it has no sections, so agents built before sections existed
// still read the metadata of every agent that does not use UCX.
constexpr uint32_t kVersionWithoutSections = 1;
constexpr uint32_t kVersion = 2;
constexpr uint32_t kMaxSections = 16;
constexpr size_t kMaxSectionBytes = 64u << 20;
constexpr size_t kMaxName = 256;
constexpr size_t kMaxRegionBlob = 4096;
constexpr uint32_t kMaxRegions = 1u << 20;

}  // namespace

bool AgentMetadata::has_backend(const std::string& backend) const {
  for (const auto& b : backends) {
    if (b == backend) return true;
  }
  return false;
}

std::string AgentMetadata::address() const {
  bool ipv6 = host.find(':') != std::string::npos;
  return (ipv6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::string encode_metadata(const AgentMetadata& m) {
  ByteWriter w;
  w.u32(kMagic);
  w.u32(m.sections.empty() ? kVersionWithoutSections : kVersion);
  w.bytes(m.name);
  w.u32(static_cast<uint32_t>(m.backends.size()));
  for (const auto& b : m.backends) w.bytes(b);
  w.bytes(m.host);
  w.u32(m.port);
  w.bytes(m.host_id);
  w.u32(static_cast<uint32_t>(m.regions.size()));
  for (const auto& r : m.regions) {
    w.u64(r->id);
    w.u8(static_cast<uint8_t>(r->kind));
    w.i32(r->device_id);
    w.u64(r->base);
    w.u64(r->length);
    w.bytes(r->backend_blob);
  }
  if (!m.sections.empty()) {
    w.u32(static_cast<uint32_t>(m.sections.size()));
    for (const auto& [backend, section] : m.sections) {
      w.bytes(backend);
      w.bytes(section);
    }
  }
  return std::move(w.str());
}

AgentMetadata decode_metadata(const std::string& blob) {
  ByteReader r(blob.data(), blob.size(), "agent metadata");
  if (blob.size() < 8 || r.u32() != kMagic) {
    throw TransferError(ErrorKind::Invalid, "not a Switchyard transfer agent metadata blob");
  }
  uint32_t version = r.u32();
  if (version != kVersion && version != kVersionWithoutSections) {
    throw TransferError(ErrorKind::Invalid, "agent metadata version " + std::to_string(version) +
                                                " is not supported (this agent reads versions " +
                                                std::to_string(kVersionWithoutSections) + " to " +
                                                std::to_string(kVersion) + ")");
  }
  AgentMetadata m;
  m.name = r.bytes(kMaxName);
  if (m.name.empty()) throw TransferError(ErrorKind::Invalid, "agent metadata has an empty agent name");
  uint32_t nb = r.u32();
  if (nb > 16) throw TransferError(ErrorKind::Invalid, "agent metadata lists " + std::to_string(nb) + " backends");
  for (uint32_t i = 0; i < nb; ++i) m.backends.push_back(r.bytes(kMaxName));
  m.host = r.bytes(kMaxName);
  uint32_t port = r.u32();
  if (port > 65535) throw TransferError(ErrorKind::Invalid, "agent metadata has port " + std::to_string(port));
  m.port = static_cast<uint16_t>(port);
  m.host_id = r.bytes(kMaxName);
  uint32_t nr = r.u32();
  if (nr > kMaxRegions) throw TransferError(ErrorKind::Invalid, "agent metadata lists too many regions");
  for (uint32_t i = 0; i < nr; ++i) {
    auto region = std::make_shared<MemoryRegion>();
    region->id = r.u64();
    uint8_t kind = r.u8();
    if (kind > static_cast<uint8_t>(MemoryKind::Cuda)) {
      throw TransferError(ErrorKind::Invalid, "agent metadata has a region of unknown memory kind " +
                                                  std::to_string(kind));
    }
    region->kind = static_cast<MemoryKind>(kind);
    region->device_id = r.i32();
    region->base = r.u64();
    region->length = r.u64();
    region->backend_blob = r.bytes(kMaxRegionBlob);
    m.regions.push_back(std::move(region));
  }
  if (version >= 2) {
    uint32_t ns = r.u32();
    if (ns > kMaxSections) throw TransferError(ErrorKind::Invalid, "agent metadata has " + std::to_string(ns) + " backend sections");
    for (uint32_t i = 0; i < ns; ++i) {
      std::string backend = r.bytes(kMaxName);
      m.sections[backend] = r.bytes(kMaxSectionBytes);
    }
  }
  if (!r.at_end()) throw TransferError(ErrorKind::Invalid, "agent metadata has trailing bytes");
  return m;
}

std::string local_host_id() {
  // Lets two processes of one machine stand for two hosts (tests of the cross-host paths).
  if (const char* forced = std::getenv("SWITCHYARD_TRANSFER_HOST_ID"); forced && *forced) return forced;
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::string id;
  if (f && std::getline(f, id) && !id.empty()) return id;
  char name[256] = {0};
  gethostname(name, sizeof name - 1);
  return name;
}

}  // namespace sy::transfer
