#!/usr/bin/env bash
# Builds the processor's fuzz targets (processor/fuzz, cargo-fuzz + libFuzzer on the
# nightly toolchain) and runs each for a given time; fails when one crashes (a panic,
# an overflow, a bound assertion, a timeout, running out of memory).
#
#   bash scripts/fuzz.sh [seconds-per-target] [target...]    # default: 60 s, every target
#
# Prints per target the runs, executions per second, corpus size (inputs/bytes) and
# the result; a crashing input is kept under $TANDEM_FUZZ_TARGET_DIR/artifacts/<target>/
# and is reproduced by running the target's binary on that file. docs/fuzzing.md
# describes the targets and records the long runs.
#
# Environment:
#   TANDEM_FUZZ_TARGET_DIR  build and working directory (default target/fuzz): the
#                           binaries, the corpora grown by the runs (corpus/<target>;
#                           the committed seeds in processor/fuzz/corpus are only read)
#                           and the artifacts
#   TANDEM_FUZZ_SANITIZER   cargo-fuzz sanitizer (default none: the processor is
#                           `forbid(unsafe_code)`, so AddressSanitizer would mostly
#                           slow every execution); `address` for the dependencies'
#                           unsafe code
#   TANDEM_FUZZ_MAX_LEN     largest input tried (default 16384 bytes)
#   TANDEM_FUZZ_JOBS        targets run at once (default 1)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

seconds=${1:-60}
shift || true
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
  echo "usage: bash scripts/fuzz.sh [seconds-per-target] [target...]" >&2
  exit 2
fi

fuzz_dir=processor/fuzz
all_targets=()
for f in "$fuzz_dir"/fuzz_targets/*.rs; do
  all_targets+=("$(basename "$f" .rs)")
done
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
  if [ ! -f "$fuzz_dir/fuzz_targets/$t.rs" ]; then
    echo "fuzz: no target '$t' (targets: ${all_targets[*]})" >&2
    exit 2
  fi
done

out=${TANDEM_FUZZ_TARGET_DIR:-$root/target/fuzz}
mkdir -p "$out"
out=$(cd "$out" && pwd)
sanitizer=${TANDEM_FUZZ_SANITIZER:-none}
max_len=${TANDEM_FUZZ_MAX_LEN:-16384}
jobs=${TANDEM_FUZZ_JOBS:-1}

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz: rustup toolchain install nightly --profile minimal" >&2
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: cargo install cargo-fuzz 0.13.2 (as scripts/setup.sh does)" >&2
  cargo install cargo-fuzz --version 0.13.2 --locked
fi

echo "fuzz: building the fuzz targets (sanitizer $sanitizer) into $out" >&2
start=$(date +%s)
# -O: release with debug assertions and overflow checks (-a); 16 codegen units build
# the processor and its dependencies faster at a small cost in speed.
(cd "$fuzz_dir" && cargo +nightly fuzz build -O -a -s "$sanitizer" --codegen-units 16 \
  --target-dir "$out")
echo "fuzz: built in $(($(date +%s) - start)) s" >&2
bin="$out/x86_64-unknown-linux-gnu/release"

# Runs one target; writes its log to $out/logs/<target>.log and its summary line to
# $out/logs/<target>.result.
run_one() {
  local t=$1 corpus="$out/corpus/$1" artifacts="$out/artifacts/$1/" log="$out/logs/$1.log"
  mkdir -p "$corpus" "$artifacts" "$out/logs"
  local status=0
  # The first corpus directory receives the new inputs; the seeds are only read.
  "$bin/$t" "$corpus" "$root/$fuzz_dir/corpus/$t" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len="$max_len" \
    -artifact_prefix="$artifacts" -print_final_stats=1 >"$log" 2>&1 || status=$?
  local runs execs corp result
  # The final statistics; after a crash, the last status line's figures.
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  [ -n "$runs" ] || runs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
  execs=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  [ -n "$execs" ] || execs=$(grep -o 'exec/s: [0-9]*' "$log" | tail -1 | sed 's/exec\/s: //')
  corp=$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' "$log" | tail -1 | sed 's/corp: //')
  if [ "$status" = 0 ]; then
    result=ok
  else
    local artifact
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    result="CRASH (exit $status${artifact:+, input $artifact}; log $log)"
  fi
  printf '%-9s runs %-10s exec/s %-7s corpus %-12s %s\n' \
    "$t" "${runs:-?}" "${execs:-?}" "${corp:-?}" "$result" >"$out/logs/$t.result"
  cat "$out/logs/$t.result"
  [ "$status" = 0 ]
}

echo "fuzz: ${seconds} s per target: ${targets[*]}" >&2
failed=0
pids=()
for t in "${targets[@]}"; do
  run_one "$t" &
  pids+=($!)
  if [ ${#pids[@]} -ge "$jobs" ]; then
    wait "${pids[0]}" || failed=1
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do
  wait "$p" || failed=1
done

echo "== fuzz summary ($(date -u +%Y-%m-%dT%H:%MZ), ${seconds} s per target)"
for t in "${targets[@]}"; do
  cat "$out/logs/$t.result"
done
if [ "$failed" != 0 ]; then
  echo "fuzz: a target crashed; reproduce with: $bin/<target> <input>" >&2
  exit 1
fi
echo "fuzz: no crash"
