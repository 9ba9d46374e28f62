// GGUF v2/v3 reader: mmap, metadata of every value type, tensor infos validated against the file.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "quant/types.h"

namespace headkv {

enum class GGUFType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};

const char* gguf_type_name(GGUFType t);

// One metadata value. Scalars are widened into i/u/f; strings into s; arrays keep their element
// type and a vector of element values (arrays of arrays are allowed by the format).
struct GGUFValue {
  GGUFType type = GGUFType::UINT8;
  int64_t i = 0;       // signed integer types and bool
  uint64_t u = 0;      // unsigned integer types (also mirrored into i when it fits)
  double f = 0.0;      // float types
  std::string s;       // STRING
  GGUFType elem_type = GGUFType::UINT8;  // ARRAY
  std::vector<GGUFValue> arr;            // ARRAY

  bool is_int() const;
  bool is_float() const { return type == GGUFType::FLOAT32 || type == GGUFType::FLOAT64; }
};

struct TensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // ne[0] is the contiguous (row) dimension, as in ggml
  GGMLType type = GGMLType::F32;
  uint64_t offset = 0;      // relative to the data section
  size_t nbytes = 0;
  const uint8_t* data = nullptr;  // into the mapping

  int64_t nelements() const;
  int64_t rows() const { return nelements() / (ne.empty() ? 1 : ne[0]); }
};

class GGUFFile {
 public:
  // Maps and parses `path`. Throws Error (Io / Format / Unsupported) with a message naming the
  // file and what is wrong. Nothing is left mapped on failure.
  static std::unique_ptr<GGUFFile> open(const std::string& path);
  // Parses a GGUF image already in memory (not copied: `data` must outlive the GGUFFile). `name`
  // stands for the path in messages. Same validation and errors as open(); used by the fuzzers.
  static std::unique_ptr<GGUFFile> from_memory(const void* data, size_t size, const std::string& name);
  ~GGUFFile();
  GGUFFile(const GGUFFile&) = delete;
  GGUFFile& operator=(const GGUFFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  size_t file_size() const { return size_; }
  size_t alignment() const { return alignment_; }
  size_t data_offset() const { return data_offset_; }

  const std::map<std::string, GGUFValue>& metadata() const { return kv_; }
  const GGUFValue* find(const std::string& key) const;
  bool has(const std::string& key) const { return find(key) != nullptr; }
  // Typed getters: the *_or forms return `def` when the key is absent; all throw Format when the
  // key exists with an incompatible type. get_* without default throw Format when missing.
  std::string get_str(const std::string& key) const;
  std::string get_str_or(const std::string& key, const std::string& def) const;
  int64_t get_int(const std::string& key) const;
  int64_t get_int_or(const std::string& key, int64_t def) const;
  double get_float_or(const std::string& key, double def) const;
  bool get_bool_or(const std::string& key, bool def) const;
  std::vector<std::string> get_str_array(const std::string& key) const;
  std::vector<float> get_f32_array(const std::string& key) const;
  std::vector<int32_t> get_i32_array(const std::string& key) const;

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* tensor(const std::string& name) const;  // nullptr when absent
  const uint8_t* base() const { return base_; }

 private:
  GGUFFile() = default;
  void parse();

  std::string path_;
  int fd_ = -1;
  const uint8_t* base_ = nullptr;
  bool mapped_ = false;  // base_ is our mmap (open), not a caller's buffer (from_memory)
  size_t size_ = 0;
  uint32_t version_ = 0;
  size_t alignment_ = 32;
  size_t data_offset_ = 0;
  std::map<std::string, GGUFValue> kv_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

}  // namespace headkv
