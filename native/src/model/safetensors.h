// Memory-maps a Hugging Face checkpoint: model.safetensors, or the shards listed in
// model.safetensors.index.json. Errors name the file and the tensor.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/tensor.h"

namespace sy {

struct TensorInfo {
  std::string name;
  std::string file;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;
};

class MappedFile {
 public:
  explicit MappedFile(const std::string& path);  // throws with the path and errno text
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

class SafetensorsCheckpoint {
 public:
  /** Opens every safetensors file of the model folder `dir`. */
  explicit SafetensorsCheckpoint(const std::string& dir);

  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  const TensorInfo& get(const std::string& name) const;  // throws naming the tensor
  /** A weight whose shape must be exactly `shape` (1-D or 2-D); throws naming file and tensor. */
  WeightView matrix(const std::string& name, std::vector<int64_t> shape) const;
  size_t total_bytes() const;

 private:
  void open_file(const std::string& path, const std::string& display);
  std::string dir_;
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::map<std::string, TensorInfo> tensors_;
};

}  // namespace sy
