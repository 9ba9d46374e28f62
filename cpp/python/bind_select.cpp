// headkv._core: head score files, model fingerprints and KV budget allocation (select/).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#if defined(__GLIBC__) || defined(__linux__)
#include <malloc.h>
#endif

#include <memory>
#include <optional>
#include <string>

#include "common/error.h"
#include "gguf/gguf.h"
#include "select/budget.h"
#include "select/kv_arena.h"
#include "select/scores.h"

namespace py = pybind11;
using namespace headkv;

namespace {

py::dict model_info_dict(const ModelInfo& m) {
  py::dict d;
  d["architecture"] = m.architecture;
  d["n_layer"] = m.n_layer;
  d["n_head"] = m.n_head;
  d["n_head_kv"] = m.n_head_kv;
  d["fingerprint"] = m.fingerprint;
  d["local_layers"] = m.local_layers;
  return d;
}

HeadScores scores_from_array(const py::object& obj) {
  auto a = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(obj);
  if (!a) fail(ErrorKind::InvalidArgument, "scores must be a 2-D array of numbers [n_layer, n_head]");
  if (a.ndim() != 2) fail(ErrorKind::InvalidArgument, "scores must be 2-D [n_layer, n_head], got " +
                                                          std::to_string(a.ndim()) + "-D");
  HeadScores s;
  s.n_layer = (int32_t)a.shape(0);
  s.n_head = (int32_t)a.shape(1);
  s.score.assign(a.data(), a.data() + a.size());
  return s;
}

}  // namespace

void bind_select(py::module_& m) {
  m.def(
      "heap_in_use",
      []() -> py::object {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
        const struct mallinfo2 mi = mallinfo2();
        return py::int_((unsigned long long)(mi.uordblks + mi.hblkhd));  // small + mmap'd chunks
#else
        return py::none();
#endif
      },
      "Bytes the C allocator has handed out and not freed (glibc mallinfo2), or None: lets tests "
      "measure what the KV cache really holds.");
  m.def(
      "kv_store_row",
      [](const std::string& type, py::array_t<float, py::array::c_style | py::array::forcecast> x) {
        const KVType t = parse_kv_type(type, "KV cache type");
        if (x.ndim() != 1) fail(ErrorKind::InvalidArgument, "kv_store_row: x must be one-dimensional");
        check_kv_row(t, (int)x.size(), "KV cache type");
        std::string out(kv_row_bytes(t, x.size()), '\0');
        store_kv_row(t, x.data(), x.size(), out.data());
        return py::bytes(out);
      },
      py::arg("type"), py::arg("x"),
      "One KV row as the CPU cache stores it (f32, f16, q8_0, q4_0 bytes); q8_0/q4_0 need len(x) % 32 == 0.");
  m.def(
      "kv_load_row",
      [](const std::string& type, const py::bytes& data, int64_t n) {
        const KVType t = parse_kv_type(type, "KV cache type");
        if (n < 0) fail(ErrorKind::InvalidArgument, "kv_load_row: n must be >= 0");
        check_kv_row(t, (int)n, "KV cache type");
        const std::string b = data;
        if (b.size() != kv_row_bytes(t, n))
          fail(ErrorKind::InvalidArgument, "kv_load_row: " + std::to_string(n) + " " + kv_type_name(t) + " values need " +
                                               std::to_string(kv_row_bytes(t, n)) + " bytes, got " + std::to_string(b.size()));
        py::array_t<float> y(n);
        load_kv_row(t, b.data(), n, y.mutable_data());
        return y;
      },
      py::arg("type"), py::arg("data"), py::arg("n"), "A stored KV row read back as float32 values.");
  m.def(
      "model_fingerprint",
      [](const std::string& path) {
        std::unique_ptr<GGUFFile> f;
        {
          py::gil_scoped_release nogil;
          f = GGUFFile::open(path);
        }
        return model_fingerprint(*f);
      },
      py::arg("gguf_path"), "Stable hash (16 hex digits) of a GGUF's architecture, hparams and tensor layout.");

  m.def(
      "model_info",
      [](const std::string& path) { return model_info_dict(model_info(*GGUFFile::open(path))); },
      py::arg("gguf_path"), "architecture, n_layer, n_head, n_head_kv, fingerprint and local_layers (sliding-window layers) of a GGUF.");

  m.def(
      "load_scores",
      [](const std::string& path, std::optional<std::string> model_path) {
        HeadScores s;
        if (model_path) {
          const ModelInfo mi = model_info(*GGUFFile::open(*model_path));
          s = load_scores(path, &mi);
        } else {
          s = load_scores(path, nullptr);
        }
        py::array_t<double> a({(py::ssize_t)s.n_layer, (py::ssize_t)s.n_head});
        std::copy(s.score.begin(), s.score.end(), a.mutable_data());
        py::object method = s.method.empty() ? py::object(py::none()) : py::object(py::str(s.method));
        return py::make_tuple(a, method);
      },
      py::arg("path"), py::arg("model_path") = py::none(),
      "Reads an official HeadKV or headkv-scores JSON file -> (scores [n_layer, n_head] float64, method or None).\n"
      "With model_path, the file must match that GGUF (shape; for headkv-scores also n_head_kv, architecture "
      "and fingerprint).");

  m.def(
      "plan_budget",
      [](const std::string& method, const py::object& scores, int n_layer, int n_head, int n_head_kv, int budget,
         int window, double beta, double temp, int64_t prompt_len, int pyramid_beta, bool group_mean,
         bool return_info, double cap_ceiling) -> py::object {
        BudgetParams p;
        p.method = parse_budget_method(method);
        p.budget = budget;
        p.window = window;
        p.beta = beta;
        p.temp = temp;
        p.pyramid_beta = pyramid_beta;
        p.group_mean = group_mean;
        p.cap_ceiling = cap_ceiling;
        std::optional<HeadScores> hs;
        if (!scores.is_none()) hs = scores_from_array(scores);
        const BudgetPlan plan = plan_budget(p, hs ? &*hs : nullptr, n_layer, n_head, n_head_kv, prompt_len);
        py::array_t<int32_t> a({(py::ssize_t)plan.n_layer, (py::ssize_t)plan.n_head_kv});
        std::copy(plan.cap.begin(), plan.cap.end(), a.mutable_data());
        if (!return_info) return a;
        py::dict info;
        info["window"] = plan.window;
        info["compressed"] = plan.compressed;
        info["layer_pooled"] = plan.layer_pooled;
        info["total"] = plan.total();
        return py::make_tuple(a, info);
      },
      py::arg("method"), py::arg("scores"), py::arg("n_layer"), py::arg("n_head"), py::arg("n_head_kv"),
      py::arg("budget"), py::arg("window") = 8, py::arg("beta") = 1.2, py::arg("temp") = 1.0,
      py::arg("prompt_len") = 0, py::kw_only(), py::arg("pyramid_beta") = 20, py::arg("group_mean") = false,
      py::arg("return_info") = false, py::arg("cap_ceiling") = 0.0,
      "Prefix tokens kept per KV head (window excluded) -> int32 [n_layer, n_head_kv];\n"
      "with return_info=True -> (caps, {window, compressed, layer_pooled, total}). See select/budget.h.");

  m.def("default_beta", &default_beta, py::arg("budget"),
        "headkv's HeadKV beta at a budget when none is given (beta 0): 4 at budgets <= 64, else 2.");
}
