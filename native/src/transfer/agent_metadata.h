// What one agent tells another so that the other can read from it: its name, the backends
// it speaks, where its TCP listener is, a host identity (CUDA IPC works only within one
// host), its registered regions, and a section per backend that needs more than the region
// list (UCX: its worker address and a remote key per region). The blob is opaque to callers;
// its layout is private to agent_metadata.cpp and versioned by a magic number, so a foreign or
// newer blob is refused with a clear error instead of being misread.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "transfer/memory_region.h"

namespace sy::transfer {

struct AgentMetadata {
  std::string name;
  std::vector<std::string> backends;  // e.g. {"tcp", "cuda_ipc"}
  std::string host;                   // the TCP listener's advertised host and port
  uint16_t port = 0;
  /** Same value on two agents <=> same host (boot id); decides whether CUDA IPC is possible. */
  std::string host_id;
  std::vector<std::shared_ptr<const MemoryRegion>> regions;
  /** Backend name -> what that backend exported (TransferBackend::metadata_section). */
  std::map<std::string, std::string> sections;

  bool has_backend(const std::string& backend) const;
  std::string address() const;
};

std::string encode_metadata(const AgentMetadata& metadata);
/** Throws TransferError(Invalid) on a truncated, foreign or newer-version blob. */
AgentMetadata decode_metadata(const std::string& blob);

/**
 * This machine's identity for same-host checks: SWITCHYARD_TRANSFER_HOST_ID when set, else
 * /proc/sys/kernel/random/boot_id, else the hostname.
 */
std::string local_host_id();

}  // namespace sy::transfer
