#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan+UBSan) and fuzzes each for a bounded time.
#
#   tools/fuzz.sh [SECONDS_PER_TARGET=120] [JOBS=nproc]
#
# FUZZ_SECONDS_<target> (e.g. FUZZ_SECONDS_scores=300) overrides the time of one target.
# Env: FUZZ_DIR (work dir, default .dev/fuzz: seeds/, corpus/<target>/, crashes/<target>/, logs/),
#      FUZZ_BUILD (build dir, default .dev/build-fuzz), FUZZ_NO_BUILD=1 (use an existing build),
#      FUZZ_TARGETS (default "gguf scores"), CXX (default clang++ / clang++-14).
# Prints per-target executions and crashes and writes them to $FUZZ_DIR/summary.txt; exits 1
# when any target produced a crash/leak/timeout/oom artifact. Crashers belong in
# tests/fuzz/regressions/<target>/ (replayed by tests/test_hardening.py).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-120}
JOBS=${2:-$(nproc)}
FUZZ_DIR=${FUZZ_DIR:-.dev/fuzz}
FUZZ_BUILD=${FUZZ_BUILD:-.dev/build-fuzz}
TARGETS=${FUZZ_TARGETS:-gguf scores}
if [ -z "${CXX:-}" ]; then CXX=$(command -v clang++ || command -v clang++-14 || true); fi

if [ "${FUZZ_NO_BUILD:-0}" != 1 ]; then
  [ -n "$CXX" ] || { echo "fuzz.sh: clang++ not found (apt-get install clang libfuzzer-14-dev)"; exit 2; }
  gen=(); command -v ninja > /dev/null && gen=(-G Ninja)
  cmake -S tests/fuzz -B "$FUZZ_BUILD" "${gen[@]}" -DCMAKE_CXX_COMPILER="$CXX" -DFUZZ_ENGINE=libfuzzer > /dev/null
  cmake --build "$FUZZ_BUILD" -j "$JOBS" > /dev/null
fi
[ -d "$FUZZ_DIR/seeds" ] || python3 tests/fuzz/make_seeds.py "$FUZZ_DIR/seeds"

# The engine's memory checks must refuse before libFuzzer's 2 GiB malloc limit would fire.
export HEADKV_MEMORY_LIMIT=${HEADKV_MEMORY_LIMIT:-1073741824}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
declare -A MAXLEN=([gguf]=131072 [scores]=16384)
status=0
: > "$FUZZ_DIR/summary.txt"
for t in $TARGETS; do
  corpus="$FUZZ_DIR/corpus/$t" crashes="$FUZZ_DIR/crashes/$t" logs="$FUZZ_DIR/logs/$t"
  mkdir -p "$corpus" "$crashes" "$logs"
  rm -f "$logs"/*.log
  var="FUZZ_SECONDS_$t"
  secs=${!var:-$SECS}
  regress=(); [ -d "tests/fuzz/regressions/$t" ] && regress=("tests/fuzz/regressions/$t")
  for j in $(seq 1 "$JOBS"); do
    "$FUZZ_BUILD/fuzz_$t" -max_total_time="$secs" -max_len="${MAXLEN[$t]}" -timeout=20 -rss_limit_mb=4096 \
      -dict="tests/fuzz/$t.dict" -print_final_stats=1 -seed="$j" -artifact_prefix="$crashes/" \
      "$corpus" "$FUZZ_DIR/seeds/$t" "${regress[@]}" > "$logs/job$j.log" 2>&1 &
  done
  wait || true
  execs=$(grep -h "stat::number_of_executed_units" "$logs"/*.log | awk '{s += $2} END {print s + 0}')
  found=$(find "$crashes" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
  cov=$(grep -h "DONE\|cov:" "$logs"/*.log | grep -o "cov: [0-9]*" | awk '{print $2}' | sort -n | tail -1)
  line="fuzz_$t: ${execs} executions in ${secs}s x ${JOBS} jobs, coverage ${cov:-?} edges, corpus $(ls "$corpus" | wc -l) files, crash artifacts ${found}"
  echo "$line" | tee -a "$FUZZ_DIR/summary.txt"
  [ "$found" = 0 ] || status=1
done
exit $status
