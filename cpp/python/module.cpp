// headkv._core: the Python extension. Each concern binds itself in its own file.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_errors(py::module_& m);
void bind_quant(py::module_& m);
void bind_tokenizer(py::module_& m);
void bind_model(py::module_& m);
void bind_select(py::module_& m);
void bind_selection(py::module_& m);

PYBIND11_MODULE(_core, m) {
  m.doc() = "headkv native core";
  bind_errors(m);
  bind_quant(m);
  bind_tokenizer(m);
  bind_model(m);
  bind_select(m);
  bind_selection(m);
}
