// headkv._core.select_window_topk: the per-KV-head token selection (select/selection.h), for tests
// against the NumPy reference and for inspection.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common/error.h"
#include "select/selection.h"

namespace py = pybind11;
using namespace headkv;

void bind_selection(py::module_& m) {
  using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
  m.def(
      "select_window_topk",
      [](F32 q, F32 k, py::array_t<int32_t, py::array::c_style | py::array::forcecast> caps, int kernel,
         bool max_pool, int reach) {
        if (q.ndim() != 3 || k.ndim() != 3 || q.shape(2) != k.shape(2) || caps.ndim() != 1 || caps.shape(0) != k.shape(0))
          fail(ErrorKind::InvalidArgument, "expected q [window, n_head, d], k [n_head_kv, N, d], caps [n_head_kv]");
        SelectionParams p;
        p.window = (int32_t)q.shape(0);
        p.kernel = kernel;
        p.max_pool = max_pool;
        p.reach = reach;
        const int d = (int)q.shape(2), nkv = (int)k.shape(0);
        const int64_t N = k.shape(1);
        std::vector<float> scores;
        auto kept = select_window_topk(q.data(), (int)q.shape(1), nkv, d, k.data(), N * d, d, N, caps.data(), p, &scores);
        py::array_t<float> s({(int64_t)nkv, N - p.window});
        std::copy(scores.begin(), scores.end(), s.mutable_data());
        return py::make_tuple(kept, s);
      },
      py::arg("q"), py::arg("k"), py::arg("caps"), py::arg("kernel") = 7, py::arg("max_pool") = true, py::arg("reach") = 0,
      "(kept prefix positions per KV head, pooled scores [n_head_kv, N - window]); window = q.shape[0].");
}
