#!/usr/bin/env bash
# The bounded fuzz run that CI makes after the tests (issue 15, item 10):
# builds every cargo-fuzz target, then runs each for FUZZ_SECONDS (30)
# from its seed corpus in corpus/TARGET, two targets at a time (one per
# core). A crash, an out-of-memory or a timeout fails the run; the input
# that did it is printed in hex and kept under fuzz/artifacts/TARGET/.
#
# New inputs the run finds go to a scratch directory, so the committed
# seed corpora stay as they are.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-30}
targets=(h1_head chunked config_toml labels)
# One codegen unit (cargo fuzz's default) makes the cold build of the proxy
# crate's dependency tree take twice as long; 16 costs little speed.
build=(--codegen-units 16)

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain (cargo fuzz needs one for -Zsanitizer)" >&2
  exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
cargo +nightly fuzz --version

start=$(date +%s)
cargo +nightly fuzz build "${build[@]}"
built=$(date +%s)
echo "fuzz: targets built in $((built - start)) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

run() {
  local t=$1
  local dict=()
  [ -f "dict/$t.dict" ] && dict=("-dict=dict/$t.dict")
  mkdir -p "$scratch/$t"
  cargo +nightly fuzz run "${build[@]}" "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -seed="${FUZZ_SEED:-1}" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 "${dict[@]}" >"$scratch/$t.log" 2>&1
}

report() {
  local t=$1 status=$2
  local runs rate
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$t.log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$scratch/$t.log")
  if [ "$status" -eq 0 ]; then
    echo "fuzz: $t: ${runs:-?} runs in ${seconds} s (${rate:-?} exec/s), no crash"
    return 0
  fi
  echo "fuzz: $t FAILED (exit $status); the end of its log:" >&2
  tail -n 80 "$scratch/$t.log" >&2
  for a in artifacts/"$t"/*; do
    [ -f "$a" ] || continue
    echo "fuzz: $t: input $a (hex):" >&2
    od -An -tx1 -v "$a" | head -n 64 >&2
  done
  return 1
}

passed=0 failed=0
for ((i = 0; i < ${#targets[@]}; i += 2)); do
  pair=("${targets[@]:i:2}")
  pids=()
  for t in "${pair[@]}"; do
    run "$t" &
    pids+=($!)
  done
  for j in "${!pair[@]}"; do
    status=0
    wait "${pids[$j]}" || status=$?
    if report "${pair[$j]}" "$status"; then
      passed=$((passed + 1))
    else
      failed=$((failed + 1))
    fi
  done
done
echo "fuzz: done in $(($(date +%s) - start)) s (build $((built - start)) s)"
# A plain closing line: the targets that ran their time without a crash.
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
