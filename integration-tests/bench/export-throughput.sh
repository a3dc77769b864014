#!/usr/bin/env bash
# Export throughput: how many spans per second the processor delivers to a real OTLP
# collector, loss-free, at given request rates.
#
#   bash integration-tests/bench/export-throughput.sh
#
# For each protocol (PROTOCOLS, default "grpc http/protobuf") and each rate (RATES,
# requests/s, default "50000 100000 150000"), the loader's synthetic source produces
# that many HTTP exchanges per second for DURATION seconds (default 10; one server
# span each), the processor turns them into spans and exports them over OTLP to a
# local rotel (PyPI's collector, blackhole exporter, loopback only). The processor's
# exit summary says how many spans were made, exported and dropped (queue full),
# failed or abandoned; one line per run, then a verdict against the target (>= 100k
# spans/s sustained with nothing lost). Needs no privileges (the synthetic source
# loads no eBPF). GZIP=1 compresses requests; PROCESSOR_ENV adds variables (e.g.
# "OTEL_EBPF_OTLP_TRACES_MAX_QUEUE_SIZE=16384"). About DURATION + 10 s per run.
set -euo pipefail
cd "$(dirname "$0")/../.."

PROTOCOLS=${PROTOCOLS:-"grpc http/protobuf"}
RATES=${RATES:-"50000 100000 150000"}
DURATION=${DURATION:-10}
GZIP=${GZIP:-0}
PROCESSOR_ENV=${PROCESSOR_ENV:-}
TARGET=${TARGET:-100000}

say() { printf 'export-bench: %s\n' "$*" >&2; }
die() { say "$*"; exit 2; }

if [ -z "${BIN:-}" ]; then
  say "building (release)"
  cargo build --release -q -p tandem-loader -p tandem-processor
  BIN=$PWD/target/release
fi
ROTEL=$(command -v rotel-agent || python3 -c "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))" 2>/dev/null) \
  || die "rotel is not installed (bash scripts/setup.sh, or pip install rotel)"
[ -x "$ROTEL" ] || die "no rotel-agent at $ROTEL"

WORK=$(mktemp -d /tmp/tandem-export-bench.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

GRPC_PORT=$(free_port); HTTP_PORT=$(free_port)
"$ROTEL" start --otlp-grpc-endpoint "127.0.0.1:$GRPC_PORT" --otlp-http-endpoint "127.0.0.1:$HTTP_PORT" \
  --exporter blackhole >"$WORK/rotel.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$GRPC_PORT") 2>/dev/null && break
  sleep 0.1
done

results=()
for protocol in $PROTOCOLS; do
  for rate in $RATES; do
    run="$WORK/run-${protocol//\//-}-$rate"
    mkdir -p "$run"
    requests=$((rate * DURATION))
    "$BIN/tandem-loader" --socket "$run/loader.sock" --source synthetic \
      --synthetic-requests "$requests" --rate "$rate" --queue-capacity 1000000 \
      >"$run/loader.log" 2>&1 &
    loader=$!; PIDS+=("$loader")
    case $protocol in
      grpc) endpoint="http://127.0.0.1:$GRPC_PORT" ;;
      *) endpoint="http://127.0.0.1:$HTTP_PORT" ;;
    esac
    compression=none; [ "$GZIP" = 1 ] && compression=gzip
    env OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="$endpoint$([ "$protocol" = grpc ] || echo /v1/traces)" \
      OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="$protocol" OTEL_EXPORTER_OTLP_COMPRESSION="$compression" \
      OTEL_TRACES_SAMPLER=always_on $PROCESSOR_ENV \
      "$BIN/tandem-processor" --socket "$run/loader.sock" --name export-bench --print none \
      --summary-interval 0 >"$run/processor.out" 2>"$run/processor.log" &
    processor=$!; PIDS+=("$processor")
    started=$(date +%s.%N)
    # The synthetic source says when it is done; then the queue drains.
    for _ in $(seq $((DURATION * 10 + 600))); do
      grep -q "synthetic traffic finished" "$run/loader.log" && break
      sleep 0.1
    done
    finished=$(date +%s.%N)
    sleep 3
    kill -TERM "$processor"; wait "$processor" || true
    kill -TERM "$loader"; wait "$loader" || true
    summary=$(sed -n '/processor stopped after/,/^  stitch/p' "$run/processor.log")
    [ -n "$summary" ] || die "no summary from the processor: $(tail -20 "$run/processor.log")"
    made=$(sed -n 's/^  made .*spans \([0-9]*\) sampled.*/\1/p' <<<"$summary")
    exported=$(sed -n 's/^  out .*exported \([0-9]*\),.*/\1/p' <<<"$summary")
    dropped=$(sed -n 's/^  out .*dropped \([0-9]*\) (queue full).*/\1/p' <<<"$summary")
    failed=$(sed -n 's/^  out .*failed \([0-9]*\), abandoned.*/\1/p' <<<"$summary")
    abandoned=$(sed -n 's/^  out .*abandoned \([0-9]*\);.*/\1/p' <<<"$summary")
    lost_events=$(sed -n 's/^  lost  *\([0-9]*\) events.*/\1/p' <<<"$summary")
    secs=$(awk -v a="$started" -v b="$finished" 'BEGIN { printf "%.2f", b - a }')
    say "$protocol at $rate requests/s: $(tr '\n' ' ' <<<"$summary")"
    results+=("$protocol $rate $secs ${made:-0} ${exported:-0} ${dropped:-0} ${failed:-0} ${abandoned:-0} ${lost_events:-0}")
  done
done

echo
echo "($(nproc) CPUs; synthetic HTTP server spans, OTLP to rotel (blackhole) on loopback; compression $([ "$GZIP" = 1 ] && echo gzip || echo none); $(date -u +%Y-%m-%d))"
printf '%-14s %10s %8s %10s %10s %10s %8s %10s %8s %12s\n' protocol "req/s" "secs" made exported dropped failed abandoned "ev lost" "exported/s"
printf '%s\n' "${results[@]}" | awk -v target="$TARGET" '
  { per = $5 / $3
    printf "%-14s %10d %8.2f %10d %10d %10d %8d %10d %8d %12.0f\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, per
    if (!($1 in best)) { best[$1] = 0; n++ }
    if ($6 + $7 + $8 + $9 == 0 && $4 == $5 && per > best[$1]) best[$1] = per }
  END {
    ok = (n > 0) ? 1 : 0
    for (p in best) printf "%s: %.0f spans/s exported with nothing lost (best loss-free run)\n", p, best[p]
    for (p in best) if (best[p] < target) ok = 0
    printf "%s the >= %d spans/s loss-free target\n", ok ? "meets" : "MISSES", target
  }'
