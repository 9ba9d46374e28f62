#include "gguf/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "common/alloc.h"
#include "common/error.h"

namespace headkv {

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
constexpr uint64_t kMaxStringLen = 1ull << 30;
constexpr uint64_t kMaxArrayDepth = 4;

// Bounds-checked little-endian cursor over the mapping.
class Cursor {
 public:
  Cursor(const uint8_t* p, size_t n, const std::string& path) : p_(p), n_(n), path_(path) {}
  size_t pos() const { return pos_; }
  void need(uint64_t k, const char* what) const {
    if (k > n_ - pos_)
      fail(ErrorKind::Format, path_ + ": truncated GGUF file while reading " + what + " at offset " +
                                  std::to_string(pos_) + " (file size " + std::to_string(n_) + ")");
  }
  template <class T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string str(const char* what) {
    const uint64_t len = read<uint64_t>(what);
    if (len > kMaxStringLen)
      fail(ErrorKind::Format, path_ + ": string of " + std::to_string(len) + " bytes in " + what);
    need(len, what);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), (size_t)len);
    pos_ += (size_t)len;
    return s;
  }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
  const std::string& path_;
};

uint64_t mul_or_fail(uint64_t a, uint64_t b, const std::string& what) {
  if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a) fail(ErrorKind::Format, what + ": size overflow");
  return a * b;
}

// Fewest file bytes one metadata value of type t takes (arrays: type + length).
uint64_t min_value_bytes(GGUFType t) {
  switch (t) {
    case GGUFType::UINT8: case GGUFType::INT8: case GGUFType::BOOL: return 1;
    case GGUFType::UINT16: case GGUFType::INT16: return 2;
    case GGUFType::UINT32: case GGUFType::INT32: case GGUFType::FLOAT32: return 4;
    case GGUFType::STRING: case GGUFType::UINT64: case GGUFType::INT64: case GGUFType::FLOAT64: return 8;
    case GGUFType::ARRAY: return 12;
  }
  return 1;
}

// Metadata is expanded into GGUFValue objects (~100 bytes each, whatever the file's element size):
// the running total is checked against the memory available before each array is reserved, so a
// file of a billion one-byte array elements fails with OutOfMemory instead of exhausting memory.
struct MetaBudget {
  uint64_t bytes = 0;
  void add(uint64_t n, uint64_t each, const std::string& what) {
    bytes = checked_add(bytes, checked_mul(n, each, what), what);
    check_alloc(bytes, what);
  }
};

GGUFValue read_value(Cursor& c, GGUFType t, const std::string& key, int depth, MetaBudget& mem) {
  GGUFValue v;
  v.type = t;
  const char* w = "metadata value";
  switch (t) {
    case GGUFType::UINT8: v.u = c.read<uint8_t>(w); v.i = (int64_t)v.u; break;
    case GGUFType::INT8: v.i = c.read<int8_t>(w); break;
    case GGUFType::UINT16: v.u = c.read<uint16_t>(w); v.i = (int64_t)v.u; break;
    case GGUFType::INT16: v.i = c.read<int16_t>(w); break;
    case GGUFType::UINT32: v.u = c.read<uint32_t>(w); v.i = (int64_t)v.u; break;
    case GGUFType::INT32: v.i = c.read<int32_t>(w); break;
    case GGUFType::UINT64: v.u = c.read<uint64_t>(w); v.i = (int64_t)v.u; break;
    case GGUFType::INT64: v.i = c.read<int64_t>(w); break;
    case GGUFType::FLOAT32: v.f = c.read<float>(w); break;
    case GGUFType::FLOAT64: v.f = c.read<double>(w); break;
    case GGUFType::BOOL: {
      const uint8_t b = c.read<uint8_t>(w);
      if (b > 1) fail(ErrorKind::Format, "metadata key '" + key + "': bool value " + std::to_string(b));
      v.i = b;
      break;
    }
    case GGUFType::STRING: v.s = c.str(w); break;
    case GGUFType::ARRAY: {
      if (depth >= (int)kMaxArrayDepth) fail(ErrorKind::Format, "metadata key '" + key + "': arrays nested too deep");
      const uint32_t et = c.read<uint32_t>("array type");
      if (et > (uint32_t)GGUFType::FLOAT64)
        fail(ErrorKind::Format, "metadata key '" + key + "': unknown array element type " + std::to_string(et));
      const uint64_t n = c.read<uint64_t>("array length");
      // Reject lengths the rest of the file cannot hold, then memory we cannot spare.
      v.elem_type = (GGUFType)et;
      c.need(mul_or_fail(n, min_value_bytes(v.elem_type), "metadata key '" + key + "'"), "array elements");
      mem.add(n, sizeof(GGUFValue), "metadata array '" + key + "'");
      v.arr.reserve((size_t)n);
      for (uint64_t k = 0; k < n; ++k) v.arr.push_back(read_value(c, v.elem_type, key, depth + 1, mem));
      break;
    }
    default:
      fail(ErrorKind::Format, "metadata key '" + key + "': unknown value type " + std::to_string((uint32_t)t));
  }
  return v;
}

}  // namespace

const char* gguf_type_name(GGUFType t) {
  static const char* names[] = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
                                "bool", "string", "array", "uint64", "int64", "float64"};
  const uint32_t k = (uint32_t)t;
  return k < 13 ? names[k] : "unknown";
}

bool GGUFValue::is_int() const {
  switch (type) {
    case GGUFType::UINT8: case GGUFType::INT8: case GGUFType::UINT16: case GGUFType::INT16:
    case GGUFType::UINT32: case GGUFType::INT32: case GGUFType::UINT64: case GGUFType::INT64:
      return true;
    default:
      return false;
  }
}

int64_t TensorInfo::nelements() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

std::unique_ptr<GGUFFile> GGUFFile::open(const std::string& path) {
  std::unique_ptr<GGUFFile> f(new GGUFFile());
  f->path_ = path;
  f->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f->fd_ < 0) fail(ErrorKind::Io, "cannot open '" + path + "': " + std::strerror(errno));
  struct stat st;
  if (fstat(f->fd_, &st) != 0) fail(ErrorKind::Io, "cannot stat '" + path + "': " + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) fail(ErrorKind::Io, "'" + path + "' is a directory, not a GGUF file");
  f->size_ = (size_t)st.st_size;
  if (f->size_ < 8) fail(ErrorKind::Format, "'" + path + "' is not a GGUF file (only " + std::to_string(f->size_) + " bytes)");
  void* p = mmap(nullptr, f->size_, PROT_READ, MAP_SHARED, f->fd_, 0);
  if (p == MAP_FAILED) fail(ErrorKind::Io, "cannot mmap '" + path + "': " + std::strerror(errno));
  f->base_ = static_cast<const uint8_t*>(p);
  f->mapped_ = true;
  f->parse();
  return f;
}

std::unique_ptr<GGUFFile> GGUFFile::from_memory(const void* data, size_t size, const std::string& name) {
  std::unique_ptr<GGUFFile> f(new GGUFFile());
  f->path_ = name;
  if (!data || size < 8) fail(ErrorKind::Format, "'" + name + "' is not a GGUF file (only " + std::to_string(size) + " bytes)");
  f->base_ = static_cast<const uint8_t*>(data);
  f->size_ = size;
  f->parse();
  return f;
}

GGUFFile::~GGUFFile() {
  if (base_ && mapped_) munmap(const_cast<uint8_t*>(base_), size_);
  if (fd_ >= 0) ::close(fd_);
}

void GGUFFile::parse() {
  Cursor c(base_, size_, path_);
  const uint32_t magic = c.read<uint32_t>("magic");
  if (magic != kMagic) fail(ErrorKind::Format, "'" + path_ + "' is not a GGUF file (bad magic)");
  version_ = c.read<uint32_t>("version");
  if (version_ == 1) fail(ErrorKind::Unsupported, path_ + ": GGUF version 1 is not supported (convert it to v3)");
  if (version_ != 2 && version_ != 3)
    fail(ErrorKind::Format, path_ + ": unknown GGUF version " + std::to_string(version_));
  const uint64_t n_tensors = c.read<uint64_t>("tensor count");
  const uint64_t n_kv = c.read<uint64_t>("metadata count");
  // Each kv needs >= 12 bytes, each tensor info >= 24: reject counts the file cannot hold.
  c.need(mul_or_fail(n_kv, 12, path_), "metadata");
  c.need(mul_or_fail(n_tensors, 24, path_), "tensor infos");
  MetaBudget mem;
  mem.add(n_tensors, sizeof(TensorInfo) + 64, path_ + ": tensor infos");

  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = c.str("metadata key");
    const uint32_t t = c.read<uint32_t>("metadata type");
    if (t > (uint32_t)GGUFType::FLOAT64)
      fail(ErrorKind::Format, path_ + ": metadata key '" + key + "' has unknown type " + std::to_string(t));
    GGUFValue v = read_value(c, (GGUFType)t, key, 0, mem);
    if (kv_.count(key)) fail(ErrorKind::Format, path_ + ": duplicate metadata key '" + key + "'");
    kv_.emplace(std::move(key), std::move(v));
  }

  if (const GGUFValue* a = find("general.alignment")) {
    if (!a->is_int() || a->i <= 0 || (a->i & (a->i - 1)) != 0 || a->i > (1 << 20))
      fail(ErrorKind::Format, path_ + ": general.alignment must be a power of two");
    alignment_ = (size_t)a->i;
  }

  tensors_.reserve((size_t)n_tensors);
  for (uint64_t k = 0; k < n_tensors; ++k) {
    TensorInfo ti;
    ti.name = c.str("tensor name");
    const uint32_t n_dims = c.read<uint32_t>("tensor dims");
    if (n_dims == 0 || n_dims > 4)
      fail(ErrorKind::Format, path_ + ": tensor '" + ti.name + "' has " + std::to_string(n_dims) + " dimensions");
    uint64_t nel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t n = c.read<uint64_t>("tensor shape");
      if (n == 0 || n > (1ull << 40)) fail(ErrorKind::Format, path_ + ": tensor '" + ti.name + "' has bad dimension " + std::to_string(n));
      nel = mul_or_fail(nel, n, path_ + ": tensor '" + ti.name + "'");
      if (nel > (1ull << 50)) fail(ErrorKind::Format, path_ + ": tensor '" + ti.name + "' is impossibly large");
      ti.ne.push_back((int64_t)n);
    }
    ti.type = (GGMLType)c.read<uint32_t>("tensor type");
    ti.offset = c.read<uint64_t>("tensor offset");
    const TypeTraits tr = type_traits(ti.type);
    if (tr.block_size == 0)
      fail(ErrorKind::Unsupported, path_ + ": tensor '" + ti.name + "' has unknown type id " + std::to_string((uint32_t)ti.type));
    if (ti.ne[0] % tr.block_size != 0)
      fail(ErrorKind::Format, path_ + ": tensor '" + ti.name + "' row length " + std::to_string(ti.ne[0]) +
                                  " is not a multiple of the " + tr.name + " block size");
    ti.nbytes = (size_t)mul_or_fail(nel / (uint64_t)tr.block_size, tr.type_size, path_);
    if (tensor_index_.count(ti.name)) fail(ErrorKind::Format, path_ + ": duplicate tensor '" + ti.name + "'");
    tensor_index_[ti.name] = tensors_.size();
    tensors_.push_back(std::move(ti));
  }

  data_offset_ = (c.pos() + alignment_ - 1) / alignment_ * alignment_;
  if (n_tensors > 0 && data_offset_ > size_) fail(ErrorKind::Format, path_ + ": truncated before the tensor data section");
  for (TensorInfo& ti : tensors_) {
    if (ti.offset % alignment_ != 0)
      fail(ErrorKind::Format, path_ + ": tensor '" + ti.name + "' offset " + std::to_string(ti.offset) + " is not aligned to " + std::to_string(alignment_));
    const uint64_t avail = size_ - data_offset_;
    if (ti.offset > avail || ti.nbytes > avail - ti.offset)
      fail(ErrorKind::Format, path_ + ": tensor '" + ti.name + "' (offset " + std::to_string(ti.offset) + ", " +
                                  std::to_string(ti.nbytes) + " bytes) lies outside the file (data section is " +
                                  std::to_string(avail) + " bytes); the file is truncated or corrupt");
    ti.data = base_ + data_offset_ + ti.offset;
  }
  // No two tensors may share bytes (ggml's reader requires them back to back). A file whose tensors
  // alias would be read differently by a backend that uploads or converts each tensor once.
  std::vector<const TensorInfo*> by_off;
  by_off.reserve(tensors_.size());
  for (const TensorInfo& ti : tensors_) by_off.push_back(&ti);
  std::sort(by_off.begin(), by_off.end(), [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_off.size(); ++i) {
    const TensorInfo& a = *by_off[i - 1];
    const TensorInfo& b = *by_off[i];
    if (b.offset < a.offset + a.nbytes)  // no overflow: a lies inside the file
      fail(ErrorKind::Format, path_ + ": tensors '" + a.name + "' (offset " + std::to_string(a.offset) + ", " +
                                  std::to_string(a.nbytes) + " bytes) and '" + b.name + "' (offset " +
                                  std::to_string(b.offset) + ") overlap in the file");
  }
}

const GGUFValue* GGUFFile::find(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

const TensorInfo* GGUFFile::tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {
[[noreturn]] void bad_type(const std::string& path, const std::string& key, const GGUFValue& v, const char* want) {
  fail(ErrorKind::Format, path + ": metadata key '" + key + "' is " + gguf_type_name(v.type) + ", expected " + want);
}
}  // namespace

std::string GGUFFile::get_str(const std::string& key) const {
  const GGUFValue* v = find(key);
  if (!v) fail(ErrorKind::Format, path_ + ": missing metadata key '" + key + "'");
  if (v->type != GGUFType::STRING) bad_type(path_, key, *v, "string");
  return v->s;
}

std::string GGUFFile::get_str_or(const std::string& key, const std::string& def) const {
  return has(key) ? get_str(key) : def;
}

int64_t GGUFFile::get_int(const std::string& key) const {
  const GGUFValue* v = find(key);
  if (!v) fail(ErrorKind::Format, path_ + ": missing metadata key '" + key + "'");
  if (!v->is_int() && v->type != GGUFType::BOOL) bad_type(path_, key, *v, "an integer");
  if (v->type == GGUFType::UINT64 && v->u > (uint64_t)std::numeric_limits<int64_t>::max())
    fail(ErrorKind::Format, path_ + ": metadata key '" + key + "' is out of range");
  return v->i;
}

int64_t GGUFFile::get_int_or(const std::string& key, int64_t def) const { return has(key) ? get_int(key) : def; }

double GGUFFile::get_float_or(const std::string& key, double def) const {
  const GGUFValue* v = find(key);
  if (!v) return def;
  if (v->is_float()) return v->f;
  if (v->is_int()) return (double)v->i;
  bad_type(path_, key, *v, "a number");
}

bool GGUFFile::get_bool_or(const std::string& key, bool def) const {
  const GGUFValue* v = find(key);
  if (!v) return def;
  if (v->type != GGUFType::BOOL && !v->is_int()) bad_type(path_, key, *v, "bool");
  return v->i != 0;
}

std::vector<std::string> GGUFFile::get_str_array(const std::string& key) const {
  const GGUFValue* v = find(key);
  if (!v) return {};
  if (v->type != GGUFType::ARRAY || v->elem_type != GGUFType::STRING) bad_type(path_, key, *v, "array of strings");
  std::vector<std::string> out;
  out.reserve(v->arr.size());
  for (const GGUFValue& e : v->arr) out.push_back(e.s);
  return out;
}

std::vector<float> GGUFFile::get_f32_array(const std::string& key) const {
  const GGUFValue* v = find(key);
  if (!v) return {};
  if (v->type != GGUFType::ARRAY || !(v->elem_type == GGUFType::FLOAT32 || v->elem_type == GGUFType::FLOAT64))
    bad_type(path_, key, *v, "array of floats");
  std::vector<float> out;
  out.reserve(v->arr.size());
  for (const GGUFValue& e : v->arr) out.push_back((float)e.f);
  return out;
}

std::vector<int32_t> GGUFFile::get_i32_array(const std::string& key) const {
  const GGUFValue* v = find(key);
  if (!v) return {};
  if (v->type != GGUFType::ARRAY || (!v->arr.empty() && !v->arr[0].is_int())) bad_type(path_, key, *v, "array of integers");
  std::vector<int32_t> out;
  out.reserve(v->arr.size());
  for (const GGUFValue& e : v->arr) out.push_back((int32_t)e.i);
  return out;
}

}  // namespace headkv
