// Typed errors thrown inside the engine; mapped to hk_status in the C API and to
// headkv.Error subclasses in Python.
#pragma once
#include <stdexcept>
#include <string>

namespace headkv {

enum class ErrorKind {
  Io = 1,           // missing file, unreadable, mmap failure
  Format = 2,       // not a GGUF, truncated, bad offsets, inconsistent metadata
  Unsupported = 3,  // architecture / tensor type / tokenizer we do not implement
  InvalidArgument = 4,
  OutOfMemory = 5,  // request larger than what can be allocated
  ContextFull = 6,  // prompt or generation does not fit n_ctx
  Internal = 7,
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& msg) : std::runtime_error(msg), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

[[noreturn]] inline void fail(ErrorKind kind, const std::string& msg) { throw Error(kind, msg); }

}  // namespace headkv
