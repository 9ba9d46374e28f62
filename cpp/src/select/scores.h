// Per-attention-head importance scores for HeadKV budget allocation: loading, validation and the
// model fingerprint that ties a score file to one GGUF.
//
// Two file formats are read (both JSON, parsed by common/json.h):
//
// 1. The official HeadKV release (FYYFU/HeadKV, Important_Head/head_score/*.json):
//        {"0-0": [s, s, ...], "0-1": [...], ..., "{L-1}-{H-1}": [...]}
//    one key "layer-head" per *query* head, the value the head's score on every accepted probe
//    example; the head's score is the mean of its list. Every (layer, head) of the L x H grid must
//    be present; an empty list, a NaN / infinite / negative value is an error that names the head.
//
// 2. headkv's own format (written by python/headkv/scores.py; documented in docs/score_format.md):
//        {"format": "headkv-scores", "version": 1,
//         "model": {"architecture": "llama", "n_layer": 30, "n_head": 9, "n_head_kv": 3,
//                   "fingerprint": "<16 hex digits, model_fingerprint()>",
//                   "local_layers": [0, 1, 2, 3, 4, 6, ...]},  // optional: sliding-window layers
//         "method": "R" | "R2",           // retrieval (R) or retrieval-reasoning (R2) heads
//         "settings": {...},              // free-form: how the scores were measured
//         "scores": [[s per query head] per layer]}   // n_layer x n_head, finite, >= 0
//    Unknown top-level keys are ignored (forward compatible); a larger "version" is Unsupported.
//
// When the caller passes the model it is going to run, the file must match it: n_layer and
// n_head for both formats, and architecture, n_head_kv, the fingerprint and (when the file lists
// them) the sliding-window layers for headkv's format. Those layers' rows are scores like any
// other, but the budget planner reads only the global layers' rows (a local layer keeps its window).
// A mismatch is InvalidArgument naming what was expected and what the file holds.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace headkv {

class GGUFFile;

// Identity of a model as far as score files are concerned.
struct ModelInfo {
  std::string architecture;  // general.architecture
  int32_t n_layer = 0;
  int32_t n_head = 0;        // query heads
  int32_t n_head_kv = 0;
  std::string fingerprint;   // model_fingerprint()
  std::vector<int32_t> local_layers;  // sliding-window layers (they keep their window; budgets go to
                                      // the other layers), from the architecture table and metadata
};

// Stable 64-bit FNV-1a hash, as 16 lower-case hex digits, of a canonical serialization of:
// general.architecture; every metadata key under "<architecture>." (sorted, with its type and
// value; floats by their exact bits); every tensor (sorted by name) with its type and shape.
// Tokenizer, file layout, alignment and general.* metadata other than the architecture do not enter
// it, so renaming or re-writing a file keeps it; re-quantizing (tensor types change) does not.
std::string model_fingerprint(const GGUFFile& f);

// Architecture, head counts and fingerprint read from the GGUF metadata (no weights touched).
ModelInfo model_info(const GGUFFile& f);

struct HeadScores {
  int32_t n_layer = 0;
  int32_t n_head = 0;          // query heads
  std::vector<double> score;   // [n_layer * n_head], row-major by layer; finite, >= 0
  std::string format;          // "official" or "headkv-scores"
  std::string method;          // "R" / "R2" (headkv format); empty for the official format
  ModelInfo model;             // as recorded in the file (headkv format only)
  bool lists_local_layers = false;  // the file has model.local_layers (then in model.local_layers)

  double at(int layer, int head) const { return score[(size_t)layer * n_head + head]; }
};

// Loads either format (detected from the content). `expect`, when not null, is the model the scores
// will be used with (see above). Errors: Io (cannot read), Format (malformed JSON, wrong layout,
// bad values), Unsupported (newer version), InvalidArgument (model mismatch).
HeadScores load_scores(const std::string& path, const ModelInfo* expect = nullptr);
// Same, from the file's text already in memory; `source` names it in messages (used by the fuzzer).
HeadScores parse_scores(const std::string& text, const std::string& source, const ModelInfo* expect = nullptr);

// Checks that `s` is usable for a model with this shape: n_layer x n_head scores, all finite and
// >= 0. Throws InvalidArgument naming expected vs got.
void check_scores(const HeadScores& s, int n_layer, int n_head);

}  // namespace headkv
