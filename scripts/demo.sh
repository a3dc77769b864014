#!/usr/bin/env bash
# The main job on this host, in one command: sets up prerequisites, builds tandem,
# starts two real Python HTTP services (a frontend that calls a backend for every
# request; integration-tests/testdata/trace_service.py), the loader (uid 65534 with
# exactly its five capabilities) and the processor (uid 65534, no capabilities,
# configured with OBI's YAML keys and variables), sends requests with curl, and prints
# the spans the processor made of them: curl → frontend → backend, one trace per
# request, linked without any header injected. Needs root (to install packages and to
# hand the loader its capabilities).
#
#   DEMO_RAW=1                           # also print the raw events the loader sent
#   OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317  # also export over OTLP
#
#   bash scripts/demo.sh                 # ~10 s demo, then everything stops
#   DEMO_SECONDS=0 bash scripts/demo.sh  # keep running until Ctrl-C; curl the port yourself
#   DEMO_PORT=18080                      # port of the frontend (the backend: +1)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "demo: run as root (it installs packages and gives the loader its capabilities)" >&2
  exit 1
fi

bash scripts/setup.sh
echo "demo: building tandem (release)" >&2
cargo build --release -q -p tandem-loader -p tandem-processor

PORT=${DEMO_PORT:-18080}
SECONDS_TO_RUN=${DEMO_SECONDS:-10}
RUN=$(mktemp -d /tmp/tandem-demo.XXXXXX)
chmod 0755 "$RUN"
install -d -o 65534 -g 65534 -m 0750 "$RUN/sock"
BIN=target/release
CAPS=bpf,perfmon,dac_read_search,sys_ptrace,checkpoint_restore
plus() { printf '+%s' "${1//,/,+}"; }

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT INT TERM

mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing

BACKEND=$((PORT + 1))
SERVICE=integration-tests/testdata/trace_service.py
echo "demo: services frontend :$PORT (calls the backend), backend :$BACKEND (python3 ThreadingHTTPServer)" >&2
/usr/bin/python3 "$SERVICE" "$BACKEND" >/dev/null 2>&1 &
pids+=($!)
/usr/bin/python3 "$SERVICE" "$PORT" --downstream "$BACKEND" >/dev/null 2>&1 &
pids+=($!)

echo "demo: loader   uid 65534, capabilities: $CAPS" >&2
setpriv --reuid=65534 --regid=65534 --clear-groups \
  --inh-caps="$(plus $CAPS)" --ambient-caps="$(plus $CAPS)" \
  --bounding-set="-all,$(plus $CAPS)" \
  "$BIN/tandem-loader" --socket "$RUN/sock/loader.sock" 2> "$RUN/loader.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "ebpf source ready" "$RUN/loader.log" && break; sleep 0.1; done
grep -q "ebpf source ready" "$RUN/loader.log" || { cat "$RUN/loader.log" >&2; exit 1; }

cat > "$RUN/obi-config.yml" <<YAML
trace_printer: text
routes:
  patterns:
    - /front/{id}
    - /data/{id}
YAML
chmod 0644 "$RUN/obi-config.yml"
echo "demo: processor uid 65534, no capabilities, OTEL_EBPF_OPEN_PORT=$PORT,$BACKEND, config: $RUN/obi-config.yml" >&2
setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all --bounding-set=-all \
  env OTEL_EBPF_OPEN_PORT="$PORT,$BACKEND" OTEL_EBPF_CONFIG_PATH="$RUN/obi-config.yml" \
  "$BIN/tandem-processor" --socket "$RUN/sock/loader.sock" \
  --print "$([ "${DEMO_RAW:-0}" = 1 ] && echo text || echo none)" \
  2> "$RUN/processor.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "connected to loader" "$RUN/processor.log" && break; sleep 0.1; done

echo "demo: requests curl http://127.0.0.1:$PORT/front/42 and /front/7; each gives one trace of four spans (curl → frontend → its call → backend) below" >&2
sleep 0.3
for id in 42 7; do
  curl -s -o /dev/null "http://127.0.0.1:$PORT/front/$id" || true
done
if [ "$SECONDS_TO_RUN" = 0 ]; then
  echo "demo: running; curl http://127.0.0.1:$PORT/ and watch; Ctrl-C stops" >&2
  wait
else
  sleep "$SECONDS_TO_RUN"
  kill -TERM "${pids[3]}"; wait "${pids[3]}" 2>/dev/null || true
  grep -A6 "processor stopped" "$RUN/processor.log" >&2 || true
fi
