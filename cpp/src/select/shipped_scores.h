// Head-score files shipped with headkv (python/headkv/data/*.R2.json, compiled in by
// cmake/shipped_scores.cmake): the default scores of method headkv for the models they match.
#pragma once
#include <string>

#include "select/scores.h"

namespace headkv {

struct ShippedScoreFile {
  const char* name;  // file name in python/headkv/data
  const char* text;  // its JSON
};
extern const ShippedScoreFile kShippedScoreFiles[];  // terminated by {nullptr, nullptr}
extern const int kNumShippedScoreFiles;

// The scores method headkv uses: the file at `path` (checked against the model), or, when `path` is
// empty, the shipped R2 file whose fingerprint matches the model. Throws InvalidArgument naming the
// fingerprint and the headkv-scores command when no shipped file matches.
HeadScores resolve_head_scores(const std::string& path, const ModelInfo& model);

}  // namespace headkv
