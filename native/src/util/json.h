// A small JSON reader for config.json, generation_config.json, the safetensors header and the
// shard index. Numbers are kept as doubles (safetensors offsets stay below 2^53).
#pragma once
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace sy {

class Json {
 public:
  enum class Kind { Null, Bool, Number, String, Array, Object };

  static Json parse(const std::string& text);  // throws std::runtime_error with the offset

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::Null; }
  bool is_number() const { return kind_ == Kind::Number; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_array() const { return kind_ == Kind::Array; }
  bool is_object() const { return kind_ == Kind::Object; }
  bool is_bool() const { return kind_ == Kind::Bool; }

  double number() const;
  bool boolean() const;
  const std::string& string() const;
  const std::vector<Json>& array() const;
  const std::map<std::string, Json>& object() const;
  /** Member of an object, or nullptr when absent (or when this is not an object). */
  const Json* find(const std::string& key) const;

 private:
  friend class JsonParser;
  Kind kind_ = Kind::Null;
  bool bool_ = false;
  double number_ = 0;
  std::string string_;
  std::vector<Json> array_;
  std::map<std::string, Json> object_;
};

}  // namespace sy
