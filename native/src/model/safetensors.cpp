#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>

#include "util/json.h"

namespace sy {

float bf16_to_f32(uint16_t bits) {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  uint32_t u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal: normalize
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400) == 0);
      u = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3FF) << 13);
    }
  } else if (exp == 0x1F) {
    u = sign | 0x7F800000u | (mant << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float weight_at(const WeightView& w, int64_t i) {
  switch (w.dtype) {
    case DType::F32: return static_cast<const float*>(w.data)[i];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(w.data)[i]);
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(w.data)[i]);
  }
  return 0;
}

std::vector<float> weight_to_f32(const WeightView& w) {
  std::vector<float> out(static_cast<size_t>(w.rows * w.cols));
  for (int64_t i = 0; i < w.rows * w.cols; ++i) out[i] = weight_at(w, i);
  return out;
}

MappedFile::MappedFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    throw std::runtime_error("cannot stat " + path + ": " + std::strerror(err));
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      throw std::runtime_error("cannot mmap " + path + ": " + std::strerror(err));
    }
    data_ = static_cast<uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(data_, size_);
}

static std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

static bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

SafetensorsCheckpoint::SafetensorsCheckpoint(const std::string& dir) : dir_(dir) {
  std::string single = dir + "/model.safetensors";
  std::string index = dir + "/model.safetensors.index.json";
  if (file_exists(single)) {
    open_file(single, "model.safetensors");
  } else if (file_exists(index)) {
    Json idx;
    try {
      idx = Json::parse(read_text(index));
    } catch (const std::exception& e) {
      throw std::runtime_error(index + ": " + e.what());
    }
    const Json* map = idx.find("weight_map");
    if (!map || !map->is_object()) throw std::runtime_error(index + ": no weight_map object");
    std::set<std::string> shards;
    for (const auto& [name, file] : map->object()) {
      if (!file.is_string()) throw std::runtime_error(index + ": weight_map entry for " + name + " is not a file name");
      shards.insert(file.string());
    }
    for (const auto& shard : shards) open_file(dir + "/" + shard, shard);
    for (const auto& [name, file] : map->object()) {
      if (!tensors_.count(name)) {
        throw std::runtime_error(index + " lists tensor " + name + " in " + file.string() + ", which does not hold it");
      }
    }
  } else {
    throw std::runtime_error("model folder " + dir + " has neither model.safetensors nor model.safetensors.index.json");
  }
}

void SafetensorsCheckpoint::open_file(const std::string& path, const std::string& display) {
  auto file = std::make_unique<MappedFile>(path);
  const uint8_t* base = file->data();
  size_t size = file->size();
  if (size < 8) throw std::runtime_error(path + " is not a safetensors file: shorter than its 8-byte header length");
  uint64_t header_len;
  std::memcpy(&header_len, base, 8);
  if (header_len > size - 8) {
    throw std::runtime_error(path + " is corrupt: its header length " + std::to_string(header_len) +
                             " exceeds the file size " + std::to_string(size));
  }
  Json header;
  try {
    header = Json::parse(std::string(reinterpret_cast<const char*>(base + 8), header_len));
  } catch (const std::exception& e) {
    throw std::runtime_error(path + " has a corrupt header: " + e.what());
  }
  if (!header.is_object()) throw std::runtime_error(path + " has a corrupt header: not a JSON object");
  const uint8_t* data_start = base + 8 + header_len;
  size_t data_size = size - 8 - header_len;
  for (const auto& [name, entry] : header.object()) {
    if (name == "__metadata__") continue;
    auto where = [&] { return path + ": tensor " + name; };
    const Json* dtype = entry.find("dtype");
    const Json* shape = entry.find("shape");
    const Json* offsets = entry.find("data_offsets");
    if (!dtype || !dtype->is_string() || !shape || !shape->is_array() || !offsets || !offsets->is_array() ||
        offsets->array().size() != 2) {
      throw std::runtime_error(where() + " has a malformed header entry");
    }
    TensorInfo info;
    info.name = name;
    info.file = display;
    const std::string& dt = dtype->string();
    if (dt == "F32") {
      info.dtype = DType::F32;
    } else if (dt == "BF16") {
      info.dtype = DType::BF16;
    } else if (dt == "F16") {
      info.dtype = DType::F16;
    } else {
      throw std::runtime_error(where() + " has dtype " + dt + "; supported: F32, BF16, F16");
    }
    int64_t count = 1;
    for (const auto& d : shape->array()) {
      if (!d.is_number() || d.number() < 0) throw std::runtime_error(where() + " has a malformed shape");
      info.shape.push_back(static_cast<int64_t>(d.number()));
      count *= info.shape.back();
    }
    double begin = offsets->array()[0].number(), end = offsets->array()[1].number();
    if (begin < 0 || end < begin || end > static_cast<double>(data_size)) {
      throw std::runtime_error(where() + " has data offsets [" + std::to_string(static_cast<int64_t>(begin)) + ", " +
                               std::to_string(static_cast<int64_t>(end)) + ") outside the file's " +
                               std::to_string(data_size) + " data bytes (truncated file?)");
    }
    if (static_cast<int64_t>(end - begin) != count * static_cast<int64_t>(dtype_size(info.dtype))) {
      throw std::runtime_error(where() + " has " + std::to_string(static_cast<int64_t>(end - begin)) +
                               " bytes, which disagrees with its shape and dtype");
    }
    info.data = data_start + static_cast<size_t>(begin);
    tensors_[name] = std::move(info);
  }
  files_.push_back(std::move(file));
}

const TensorInfo& SafetensorsCheckpoint::get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw std::runtime_error("checkpoint in " + dir_ + " has no tensor " + name);
  return it->second;
}

static std::string shape_text(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

WeightView SafetensorsCheckpoint::matrix(const std::string& name, std::vector<int64_t> shape) const {
  const TensorInfo& t = get(name);
  if (t.shape != shape) {
    throw std::runtime_error(dir_ + "/" + t.file + ": tensor " + name + " has shape " + shape_text(t.shape) +
                             " but config.json implies " + shape_text(shape));
  }
  WeightView w;
  w.data = t.data;
  w.dtype = t.dtype;
  w.rows = shape.size() == 2 ? shape[0] : 1;
  w.cols = shape.back();
  return w;
}

size_t SafetensorsCheckpoint::total_bytes() const {
  size_t n = 0;
  for (const auto& f : files_) n += f->size();
  return n;
}

}  // namespace sy
