#include "transfer/memory_region.h"

#include <cstdio>

#include "transfer/transfer_error.h"

namespace sy::transfer {

const char* memory_kind_name(MemoryKind kind) { return kind == MemoryKind::Cuda ? "cuda" : "host"; }

std::string describe_block(const BlockDescriptor& d) {
  if (d.by_address) {
    return "{address 0x" + [&] {
      char buf[32];
      snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(d.address));
      return std::string(buf);
    }() + ", length " + std::to_string(d.length) + ", device " + std::to_string(d.device_id) + "}";
  }
  return "{region " + std::to_string(d.region_id) + ", offset " + std::to_string(d.offset) + ", length " +
         std::to_string(d.length) + "}";
}

namespace {

// Overflow-safe "[offset, offset + length) inside [0, size)".
bool fits(uint64_t offset, uint64_t length, uint64_t size) { return offset <= size && length <= size - offset; }

}  // namespace

ResolvedBlock resolve_in(const std::vector<std::shared_ptr<const MemoryRegion>>& regions, const BlockDescriptor& d,
                         const std::string& whose) {
  if (d.length == 0) throw TransferError(ErrorKind::Invalid, "descriptor " + describe_block(d) + " is empty");
  if (d.by_address) {
    for (const auto& r : regions) {
      if (r->device_id != d.device_id) continue;
      if (d.address >= r->base && fits(d.address - r->base, d.length, r->length)) {
        return ResolvedBlock{r, d.address - r->base, d.length};
      }
    }
    throw TransferError(ErrorKind::Invalid,
                        "descriptor " + describe_block(d) + " is not inside any registered region of " + whose);
  }
  for (const auto& r : regions) {
    if (r->id != d.region_id) continue;
    if (!fits(d.offset, d.length, r->length)) {
      throw TransferError(ErrorKind::Invalid, "descriptor " + describe_block(d) + " runs past the end of region " +
                                                  std::to_string(r->id) + " of " + whose + " (" +
                                                  std::to_string(r->length) + " bytes)");
    }
    return ResolvedBlock{r, d.offset, d.length};
  }
  throw TransferError(ErrorKind::Invalid,
                      "descriptor " + describe_block(d) + " names no registered region of " + whose);
}

std::shared_ptr<const MemoryRegion> RegionTable::add(MemoryKind kind, int32_t device_id, uint64_t base,
                                                     uint64_t length, std::string backend_blob) {
  if (length == 0) throw TransferError(ErrorKind::Invalid, "cannot register an empty memory region");
  if (base == 0) throw TransferError(ErrorKind::Invalid, "cannot register a region at address 0");
  std::lock_guard<std::mutex> lock(mu_);
  auto r = std::make_shared<MemoryRegion>();
  r->id = next_id_++;
  r->kind = kind;
  r->device_id = device_id;
  r->base = base;
  r->length = length;
  r->backend_blob = std::move(backend_blob);
  regions_[r->id] = r;
  return r;
}

bool RegionTable::remove(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  return regions_.erase(id) > 0;
}

std::vector<std::shared_ptr<const MemoryRegion>> RegionTable::list() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::shared_ptr<const MemoryRegion>> out;
  out.reserve(regions_.size());
  for (const auto& [id, r] : regions_) out.push_back(r);
  return out;
}

ResolvedBlock RegionTable::resolve(const BlockDescriptor& d, const std::string& whose) const {
  if (!d.by_address) {
    // The common case on the serving path: one map lookup under the lock, no list copy.
    std::shared_ptr<const MemoryRegion> r;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = regions_.find(d.region_id);
      if (it != regions_.end()) r = it->second;
    }
    if (r && d.length > 0 && fits(d.offset, d.length, r->length)) return ResolvedBlock{std::move(r), d.offset, d.length};
    if (r) return resolve_in({r}, d, whose);  // for its error message
  }
  return resolve_in(list(), d, whose);
}

}  // namespace sy::transfer
