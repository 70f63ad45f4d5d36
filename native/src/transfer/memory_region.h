// Registered memory and the descriptors that point into it. Every byte the agent reads or
// serves lies inside a registered region: a descriptor is checked against its region before
// any transfer starts (locally) and again before any byte is served (by the remote agent).
// Regions are immutable and shared: a transfer in flight keeps the regions it touches alive
// (shared_ptr) even after they are deregistered, and the owner of the memory itself (the
// binding, for JavaScript buffers) waits for those references to drop before letting go.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace sy::transfer {

enum class MemoryKind : uint8_t { Host = 0, Cuda = 1 };

const char* memory_kind_name(MemoryKind kind);

struct MemoryRegion {
  uint64_t id = 0;
  MemoryKind kind = MemoryKind::Host;
  int32_t device_id = 0;  // CUDA device ordinal; 0 for host memory
  uint64_t base = 0;      // address in the owning process
  uint64_t length = 0;
  /** Backend-specific export of the region (e.g. a CUDA IPC handle); empty for host memory. */
  std::string backend_blob;
};

/**
 * A block to transfer: either (region, offset, length), or (address, length, device) which
 * is resolved to the registered region that contains it.
 */
struct BlockDescriptor {
  bool by_address = false;
  uint64_t region_id = 0;
  uint64_t offset = 0;
  uint64_t address = 0;
  uint64_t length = 0;
  int32_t device_id = 0;
};

/** A descriptor checked against its region: `offset + length <= region->length`. */
struct ResolvedBlock {
  std::shared_ptr<const MemoryRegion> region;
  uint64_t offset = 0;
  uint64_t length = 0;
  uint8_t* pointer() const { return reinterpret_cast<uint8_t*>(region->base + offset); }
};

/**
 * The compact form of many blocks of one length in one region (a KV read: thousands of
 * blocks): block i is [offsets[i], offsets[i] + length) of the region.
 */
struct BlockList {
  uint64_t region_id = 0;
  uint64_t length = 0;
  std::vector<uint64_t> offsets;

  /** The same blocks as one descriptor each, for the paths that take descriptor pairs. */
  std::vector<BlockDescriptor> descriptors() const {
    std::vector<BlockDescriptor> out(offsets.size());
    for (size_t i = 0; i < out.size(); ++i) {
      out[i].region_id = region_id;
      out[i].offset = offsets[i];
      out[i].length = length;
    }
    return out;
  }
};

/**
 * A block list checked against its region, as a whole: max(offsets) + length <= region->length.
 * offset_bits is the bitwise OR of every offset, so (region->base | length | offset_bits) % 16 == 0
 * says every block starts and ends 16-byte aligned. `offsets` points into the caller's list and
 * is valid only while the read is being posted: what keeps a read past that copies them first.
 */
struct ResolvedBlockList {
  std::shared_ptr<const MemoryRegion> region;
  uint64_t length = 0;
  const uint64_t* offsets = nullptr;
  size_t count = 0;
  uint64_t offset_bits = 0;
};

/** `{region 3, offset 0, length 4096}`, for error messages. */
std::string describe_block(const BlockDescriptor& desc);

/** The local agent's regions; safe to use from the caller's thread and the I/O thread. */
class RegionTable {
 public:
  std::shared_ptr<const MemoryRegion> add(MemoryKind kind, int32_t device_id, uint64_t base, uint64_t length,
                                          std::string backend_blob = {});
  /** Returns false when no region has this id. */
  bool remove(uint64_t id);
  /**
   * Throws TransferError(Invalid) naming the descriptor when it is not inside a region;
   * `whose` names this agent in that message ("this agent", "agent 'prefill-0'").
   */
  ResolvedBlock resolve(const BlockDescriptor& desc, const std::string& whose) const;
  std::vector<std::shared_ptr<const MemoryRegion>> list() const;

 private:
  mutable std::mutex mu_;
  uint64_t next_id_ = 1;
  std::map<uint64_t, std::shared_ptr<const MemoryRegion>> regions_;
};

/**
 * Checks `desc` against a list of regions (this agent's, or a peer's from its metadata) and
 * returns the region and offset it refers to. `whose` names the owner in the error.
 */
ResolvedBlock resolve_in(const std::vector<std::shared_ptr<const MemoryRegion>>& regions, const BlockDescriptor& desc,
                         const std::string& whose);

}  // namespace sy::transfer
