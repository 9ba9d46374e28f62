// Python bindings of the weight kernels (cpp/src/quant): dequantize, vec_dot, matmul, type_info.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "common/cpu.h"
#include "common/error.h"
#include "common/threadpool.h"
#include "quant/quant.h"

namespace py = pybind11;
using headkv::ErrorKind;
using headkv::GGMLType;

namespace {

using U8Array = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;
using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;

// bytes / bytearray / anything convertible to a contiguous uint8 array.
struct Bytes {
  U8Array arr;
  const uint8_t* ptr = nullptr;
  size_t size = 0;
  explicit Bytes(const py::object& o) {
    if (py::isinstance<py::bytes>(o)) {
      char* p; Py_ssize_t n;
      PyBytes_AsStringAndSize(o.ptr(), &p, &n);
      ptr = (const uint8_t*)p;
      size = (size_t)n;
      keep = o;
      return;
    }
    arr = U8Array::ensure(o);
    if (!arr) throw py::error_already_set();
    ptr = arr.data();
    size = (size_t)arr.size();
  }
  py::object keep;
};

GGMLType checked_type(int type) {
  if (type < 0) headkv::fail(ErrorKind::InvalidArgument, "negative type id " + std::to_string(type));
  const GGMLType t = (GGMLType)(uint32_t)type;
  if (!headkv::type_traits(t).supported)
    headkv::fail(ErrorKind::Unsupported, "unsupported tensor type " + headkv::type_name(t));
  return t;
}

size_t checked_row_size(GGMLType t, int64_t n) {
  if (n < 0) headkv::fail(ErrorKind::InvalidArgument, "negative element count");
  const int64_t bs = headkv::type_traits(t).block_size;
  if (n % bs != 0)
    headkv::fail(ErrorKind::InvalidArgument, std::to_string(n) + " elements is not a multiple of the " +
                                                 headkv::type_name(t) + " block size " + std::to_string(bs));
  return headkv::row_size(t, n);
}

}  // namespace

void bind_quant(py::module_& m) {
  m.def("cpu_level", [] { return std::string(headkv::cpu_level_name(headkv::cpu_kernels().level)); },
        "CPU kernel level in use (baseline, avx2, avx512): HEADKV_CPU or the best this CPU runs.");
  m.def("cpu_levels", [] {
    std::vector<std::string> out;
    for (headkv::CpuLevel l : headkv::cpu_levels()) out.emplace_back(headkv::cpu_level_name(l));
    return out;
  }, "CPU kernel levels this build has and this CPU runs, lowest first.");
  m.def("set_cpu_level", &headkv::set_cpu_level, py::arg("level"),
        "Switch the CPU kernels to a level by name, or 'auto' for the best (not while a model runs).");

  m.def("type_info", [](int type) {
    const auto tr = headkv::type_traits((GGMLType)(uint32_t)type);
    py::dict d;
    d["name"] = tr.block_size ? std::string(tr.name) : headkv::type_name((GGMLType)(uint32_t)type);
    d["block_size"] = tr.block_size;
    d["type_size"] = tr.type_size;
    d["supported"] = tr.supported;
    return d;
  }, py::arg("type"), "Traits of a ggml type id: name, block_size, type_size, supported.");

  m.def("dequantize", [](int type, const py::object& data, int64_t n) {
    const GGMLType t = checked_type(type);
    const size_t need = checked_row_size(t, n);
    Bytes b(data);
    if (b.size != need)
      headkv::fail(ErrorKind::InvalidArgument, "dequantize: " + std::to_string(n) + " " + headkv::type_name(t) +
                                                   " elements need " + std::to_string(need) + " bytes, got " +
                                                   std::to_string(b.size));
    py::array_t<float> out(n);
    {
      py::gil_scoped_release nogil;
      headkv::dequantize_row(t, b.ptr, out.mutable_data(), n);
    }
    return out;
  }, py::arg("type"), py::arg("data"), py::arg("n"), "Dequantize n elements of ggml blocks to float32.");

  m.def("vec_dot", [](int type, const py::object& w, F32Array x) {
    const GGMLType t = checked_type(type);
    if (x.ndim() != 1) headkv::fail(ErrorKind::InvalidArgument, "vec_dot: x must be 1-D");
    const int64_t n = x.shape(0);
    const size_t need = checked_row_size(t, n);
    Bytes b(w);
    if (b.size != need)
      headkv::fail(ErrorKind::InvalidArgument, "vec_dot: weight row needs " + std::to_string(need) + " bytes, got " +
                                                   std::to_string(b.size));
    py::gil_scoped_release nogil;
    return headkv::vec_dot(t, b.ptr, x.data(), n);
  }, py::arg("type"), py::arg("w"), py::arg("x"), "Dot product of one quantized weight row with float32 x.");

  m.def("matmul", [](int type, const py::object& w, int64_t rows, int64_t K, F32Array x, int n_threads) {
    const GGMLType t = checked_type(type);
    if (rows < 0 || K < 0) headkv::fail(ErrorKind::InvalidArgument, "matmul: negative dimensions");
    if (n_threads < 1 || n_threads > 256) headkv::fail(ErrorKind::InvalidArgument, "matmul: bad n_threads");
    const size_t rs = checked_row_size(t, K);
    Bytes b(w);
    if (b.size != rs * (size_t)rows)
      headkv::fail(ErrorKind::InvalidArgument, "matmul: weights need rows*row_size = " +
                                                   std::to_string(rs * (size_t)rows) + " bytes, got " +
                                                   std::to_string(b.size));
    if (x.ndim() != 2 || x.shape(1) != K)
      headkv::fail(ErrorKind::InvalidArgument, "matmul: x must have shape (n_tok, " + std::to_string(K) + ")");
    const int64_t n_tok = x.shape(0);
    py::array_t<float> y({n_tok, rows});
    {
      py::gil_scoped_release nogil;
      headkv::ThreadPool pool(n_threads);
      headkv::matmul(t, b.ptr, rows, K, x.data(), n_tok, y.mutable_data(), rows, pool);
    }
    return y;
  }, py::arg("type"), py::arg("w"), py::arg("rows"), py::arg("K"), py::arg("x"), py::arg("n_threads") = 2,
     "Y = X @ W.T for quantized W (rows x K) and float32 X (n_tok x K).");
}
