// Maps headkv::Error kinds to the Python exception classes defined in headkv/errors.py.
#include <pybind11/pybind11.h>

#include "common/error.h"

namespace py = pybind11;

void bind_errors(py::module_& m) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const headkv::Error& e) {
      static const char* names[] = {"Error", "IOError_", "FormatError", "UnsupportedError",
                                    "InvalidArgumentError", "OutOfMemoryError", "ContextFullError",
                                    "InternalError"};
      int k = (int)e.kind();
      if (k < 0 || k > 7) k = 0;
      py::object errors = py::module_::import("headkv.errors");
      py::object cls = errors.attr(names[k]);
      PyErr_SetString(cls.ptr(), e.what());
    }
  });
}
