#!/usr/bin/env bash
# Builds the libFuzzer targets (clang-14, ASan+UBSan) in their own build
# directory, seeds corpora with small real files made by Debian's torch, and
# runs every target for SECONDS (default 60). Exits non-zero when any target
# finds a crash, leak, sanitizer report, timeout or out-of-memory; the input
# lands in $BUILD/artifacts/.
#
# Amplification is a finding, not only a crash: every run (the `make test`
# smoke included) uses the same limits, -rss_limit_mb=$WG_FUZZ_RSS_MB (1024),
# -malloc_limit_mb=$WG_FUZZ_MALLOC_MB (256: one allocation larger than that
# is a finding) and -timeout=$WG_FUZZ_TIMEOUT (10 s per input), and the
# targets check that what the reader built fits the budget it counted.
# Seeds include one file per attack class of make_hostile_fixtures.py.
#
#   tests/fuzz/run.sh [SECONDS]
#
# Environment: WG_FUZZ_BUILD_DIR (default <repo>/build-fuzz), WG_FUZZ_JOBS
# (build parallelism, default nproc), WG_FUZZ_TARGETS (default: all).
# Exit 77 (ctest: skipped) when clang-14 or libFuzzer is not installed.
set -euo pipefail

SECONDS_PER_TARGET="${1:-60}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="${WG_FUZZ_BUILD_DIR:-$ROOT/build-fuzz}"
JOBS="${WG_FUZZ_JOBS:-$(nproc)}"
TARGETS="${WG_FUZZ_TARGETS:-zip_fuzzer safetensors_fuzzer json_fuzzer pickle_fuzzer reader_fuzzer set_bundle_fuzzer}"

if ! command -v clang++-14 >/dev/null || ! ls /usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  echo "fuzz: clang-14 / libfuzzer-14-dev not installed (scripts/install-deps.sh build fuzz); skipping"
  exit 77
fi

max_len() {
  case "$1" in
    json_fuzzer|safetensors_fuzzer|pickle_fuzzer|set_bundle_fuzzer) echo 16384 ;;
    *) echo 65536 ;;
  esac
}

seed_dir() {
  case "$1" in
    zip_fuzzer) echo zip ;;
    safetensors_fuzzer) echo safetensors ;;
    json_fuzzer) echo json ;;
    pickle_fuzzer) echo pickle ;;
    set_bundle_fuzzer) echo set_bundle ;;
    *) echo reader ;;
  esac
}

mkdir -p "$BUILD"
# Configured every time (cheap when nothing changed): a new *_fuzzer.cc
# becomes a target.
if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
  CC=clang-14 CXX=clang++-14 cmake -S "$ROOT" -B "$BUILD" -DWEIGHTGATE_FUZZ=ON \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$BUILD/configure.log" 2>&1 || {
    cat "$BUILD/configure.log"; exit 1; }
else
  cmake "$BUILD" >"$BUILD/configure.log" 2>&1 || { cat "$BUILD/configure.log"; exit 1; }
fi
# shellcheck disable=SC2086
cmake --build "$BUILD" -j "$JOBS" --target $TARGETS >"$BUILD/build.log" 2>&1 || {
  tail -50 "$BUILD/build.log"; exit 1; }

# Seeds are regenerated when the generator changes.
SEEDS="$BUILD/seeds"
if [[ ! -f "$SEEDS/.stamp" || "$ROOT/tests/fuzz/make_seeds.py" -nt "$SEEDS/.stamp" ||
      "$ROOT/tests/fixtures/make_hostile_fixtures.py" -nt "$SEEDS/.stamp" ]]; then
  rm -rf "$SEEDS"
  /usr/bin/python3 "$ROOT/tests/fuzz/make_seeds.py" "$SEEDS"
  touch "$SEEDS/.stamp"
fi

mkdir -p "$BUILD/artifacts" "$BUILD/logs"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

failed=0
summary=""
for target in $TARGETS; do
  corpus="$BUILD/corpus/$target"
  mkdir -p "$corpus"
  log="$BUILD/logs/$target.log"
  status=0
  dict=()
  dict_file="$ROOT/tests/fuzz/${target%_fuzzer}.dict"
  [[ -f "$dict_file" ]] && dict=(-dict="$dict_file")
  "$BUILD/bin/$target" "$corpus" "$SEEDS/$(seed_dir "$target")" "${dict[@]}" \
    -max_total_time="$SECONDS_PER_TARGET" -max_len="$(max_len "$target")" \
    -timeout="${WG_FUZZ_TIMEOUT:-10}" -rss_limit_mb="${WG_FUZZ_RSS_MB:-1024}" \
    -malloc_limit_mb="${WG_FUZZ_MALLOC_MB:-256}" -print_final_stats=1 \
    -artifact_prefix="$BUILD/artifacts/$target-" >"$log" 2>&1 || status=$?
  runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)"
  corpus_size="$(find "$corpus" -type f | wc -l)"
  if [[ $status -ne 0 ]]; then
    failed=1
    echo "fuzz: $target FAILED (exit $status); log $log"
    grep -E 'ERROR|runtime error|invariant failed|Test unit written|SUMMARY' "$log" | head -20 || true
    summary+="$target: FAILED after ${runs:-?} runs"$'\n'
  else
    summary+="$target: ${runs:-?} runs, corpus $corpus_size, no crash"$'\n'
  fi
done

printf '%s' "$summary" | tee "$BUILD/fuzz-summary.txt"
exit $failed
