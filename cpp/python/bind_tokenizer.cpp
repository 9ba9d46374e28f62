// headkv._core.Tokenizer (GGUF vocabulary, native encode/decode) and _core.render_chat.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>

#include "gguf/gguf.h"
#include "tokenize/chat.h"
#include "tokenize/tokenizer.h"

namespace py = pybind11;

namespace {

std::string text_arg(const py::object& text) {
  if (py::isinstance<py::bytes>(text)) return text.cast<std::string>();
  if (py::isinstance<py::str>(text)) return text.cast<std::string>();  // UTF-8
  throw py::type_error("text must be str or bytes");
}

}  // namespace

void bind_tokenizer(py::module_& m) {
  py::class_<headkv::Tokenizer, std::shared_ptr<headkv::Tokenizer>>(m, "Tokenizer")
      // pre: override tokenizer.ggml.pre (None: use the file's).
      .def(py::init([](const std::string& path, const py::object& pre) {
             auto f = headkv::GGUFFile::open(path);
             const std::string p = pre.is_none() ? std::string() : pre.cast<std::string>();
             return std::shared_ptr<headkv::Tokenizer>(headkv::Tokenizer::from_gguf(*f, p));
           }),
           py::arg("path"), py::arg("pre") = py::none())
      .def(
          "encode",
          [](const headkv::Tokenizer& t, const py::object& text, bool add_bos, bool special) {
            const std::string s = text_arg(text);
            py::gil_scoped_release nogil;
            return t.encode(s, add_bos, special);
          },
          py::arg("text"), py::arg("add_bos") = false, py::arg("special") = true)
      .def(
          "decode",
          [](const headkv::Tokenizer& t, const std::vector<int32_t>& ids) {
            return py::bytes(t.decode(ids));
          },
          py::arg("ids"))
      .def("token_to_piece",
           [](const headkv::Tokenizer& t, int32_t id) { return py::bytes(t.token_to_piece(id)); })
      .def("token_text", [](const headkv::Tokenizer& t, int32_t id) { return py::bytes(t.token_text(id)); })
      .def("is_eog", &headkv::Tokenizer::is_eog)
      .def_property_readonly("n_vocab", &headkv::Tokenizer::n_vocab)
      .def_property_readonly("bos", &headkv::Tokenizer::bos_id)
      .def_property_readonly("eos", &headkv::Tokenizer::eos_id)
      .def_property_readonly("add_bos", &headkv::Tokenizer::add_bos_default)
      .def_property_readonly("eog_ids", &headkv::Tokenizer::eog_ids)
      .def_property_readonly("model", &headkv::Tokenizer::model_name)
      .def_property_readonly("pre", &headkv::Tokenizer::pre_name);

  m.def(
      "render_chat",
      [](const std::string& tpl, const py::list& messages, bool add_generation_prompt) {
        std::vector<std::pair<std::string, std::string>> msgs;
        for (const py::handle& h : messages) {
          py::dict d = py::reinterpret_borrow<py::dict>(h);
          msgs.emplace_back(d["role"].cast<std::string>(), d["content"].cast<std::string>());
        }
        return headkv::render_chat(tpl, msgs, add_generation_prompt);
      },
      py::arg("template"), py::arg("messages"), py::arg("add_generation_prompt") = true);
}
