#include "select/shipped_scores.h"

#include "common/error.h"

namespace headkv {

HeadScores resolve_head_scores(const std::string& path, const ModelInfo& model) {
  if (!path.empty()) return load_scores(path, &model);
  for (int i = 0; i < kNumShippedScoreFiles; ++i) {
    const ShippedScoreFile& f = kShippedScoreFiles[i];
    // A shipped file for another model fails its fingerprint check; those are skipped.
    HeadScores s;
    try {
      s = parse_scores(f.text, f.name, nullptr);
    } catch (const Error&) {
      continue;
    }
    if (s.format == "headkv-scores" && s.model.fingerprint == model.fingerprint) return parse_scores(f.text, f.name, &model);
  }
  fail(ErrorKind::InvalidArgument,
       "method 'headkv' needs head scores: no shipped score file matches this model (fingerprint " + model.fingerprint +
           "); compute one with `headkv-scores -m MODEL --method R2 -o scores.json` and pass it (scores=..., --scores)");
}

}  // namespace headkv
