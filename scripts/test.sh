#!/usr/bin/env bash
# Sets up and runs every test: formatting, clippy, unit tests, and the end-to-end
# tests (real processes, real sockets, real eBPF). Run as root to include the
# privileged tests; as root they are required to run (a skip fails the run).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then
  bash scripts/setup.sh
  export TANDEM_REQUIRE_PRIVILEGED_TESTS=1
  mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
else
  echo "test: not root: privileged tests (eBPF capture) will be skipped, each saying why" >&2
  echo "test: prerequisites are installed by: sudo bash scripts/setup.sh" >&2
fi

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
# The eBPF crate is its own workspace (built for bpfel-unknown-none by the loader).
(cd ebpf/tandem-ebpf && cargo fmt -- --check)
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo clippy: the loader image's build (no replay/synthetic/record code)" >&2
cargo clippy -p tandem-loader --no-default-features --all-targets -- -D warnings
echo "== cargo clippy: the eBPF programs (bpfel-unknown-none, nightly)" >&2
if cargo +nightly --version >/dev/null 2>&1 &&
  rustup component list --toolchain nightly --installed 2>/dev/null | grep '^rust-src' >/dev/null; then
  EBPF_TARGET_DIR="$(realpath -m "${CARGO_TARGET_DIR:-target}")/ebpf-clippy"
  (cd ebpf/tandem-ebpf && CARGO_TARGET_DIR="$EBPF_TARGET_DIR" cargo +nightly clippy \
    --target bpfel-unknown-none -Z build-std=core --release -- -D warnings)
elif [ "$(id -u)" = 0 ]; then
  echo "test: the nightly toolchain with rust-src is missing after setup.sh" >&2
  exit 1
else
  echo "test: SKIP eBPF clippy: no nightly toolchain with rust-src (sudo bash scripts/setup.sh installs it)" >&2
fi
echo "== cargo build" >&2
cargo build --workspace --bins
echo "== cargo test" >&2
cargo test --workspace --no-fail-fast
if [ "$(id -u)" = 0 ]; then
  # Processor kills, a loader restart, a collector outage and process churn under
  # load, briefly (docs/benchmarks.md has the full run): exits 1 on unreported loss
  # or RSS growth.
  echo "== fault benchmark, short (SHORT=1 integration-tests/bench/faults.sh)" >&2
  SHORT=1 BIN="$(realpath -m "${CARGO_TARGET_DIR:-target}")/debug" bash integration-tests/bench/faults.sh
else
  echo "test: SKIP the fault benchmark: it needs root (eBPF); sudo bash scripts/test.sh runs it" >&2
fi
echo "== fuzz (every target briefly; docs/fuzzing.md)" >&2
bash scripts/fuzz.sh 5
