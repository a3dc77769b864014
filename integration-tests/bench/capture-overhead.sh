#!/usr/bin/env bash
# Capture overhead: nginx's throughput under wrk without tandem, then with the loader
# (eBPF capture selecting this nginx) and a processor (--print none) attached.
#
#   sudo bash integration-tests/bench/capture-overhead.sh
#
# Prints requests/s without and with tandem and their ratio (target: >= 95%), the
# events/s the loader sustained, and what was lost (the processor's final
# summary at exit, "processor stopped after ...:" and its lines, and the loader's
# "loader stopped ingested=... lost_at_source=..." line). Runs ROUNDS rounds, each
# one baseline run then one run with tandem, and reports every run and the means.
# About 25 s per round plus the release build. BIN=/path compares another build's
# binaries (e.g. before a change) side by side.
#
# CPU placement (PIN, default 1): the server gets a CPU budget of its own, as it would
# on a node where tandem's daemons have theirs. nginx's workers are pinned to the last
# SERVER_CPUS CPUs (default 1), wrk, the loader and the processor to the others, so
# the ratio measures what tandem costs the server itself (the probes run in the
# server's syscalls) and not how busy the load generator's CPU is. The server's CPU
# per request (user + system time of its workers / requests) is printed with and
# without tandem. PIN=0 lets everything share every CPU.
#
# CPU limit (SERVER_CPU_LIMIT, default 0.5): nginx runs in a cgroup allowed that
# many CPUs (cgroup v2 cpu.max or v1 cfs quota, period 10 ms), as a Kubernetes pod
# with `resources.limits.cpu: 500m` does. The server is then the bottleneck of
# both runs, and the requests/s ratio is what the server itself keeps: the probes
# run inside its syscalls and are charged to its quota, while the loader and the
# processor run outside it (their own CPU budget, as tandem's DaemonSet has). With
# SERVER_CPU_LIMIT=0 nginx may use its whole CPU; on a 2-CPU machine wrk then needs
# ~85% of the other CPU, which it shares with the loader and the processor, and the
# ratio measures that competition instead (see docs/benchmarks.md).
#
# The kernel side is measured too (STATS=1, default): after the first run with tandem, a
# shorter run (STATS_DURATION, 5s) with kernel.bpf_stats_enabled on prints each eBPF
# program's runs and nanoseconds per run (bpftool, installed by scripts/setup.sh),
# and their sum per request. bpf_stats adds two clock reads per program run, so
# that run is not used for the throughput figures.
#
# Environment (defaults): ROUNDS (6), DURATION (10s), THREADS (1 pinned, 2 otherwise),
# CONNECTIONS (50), WORKERS (nginx worker_processes: SERVER_CPUS pinned, 2 otherwise),
# BODY_BYTES (size of the static file, 612),
# SENDFILE (off: bodies go through writev, which tandem captures; on: sendfile, whose
# bytes tandem counts without capturing them), ACCESS_LOG (off; on: nginx's default,
# one log line written per request), CAPTURE_BYTES (loader --capture-bytes, 1024),
# LOADER_ARGS (more loader options, e.g. "--ring-buffer-kib 1024"), STRICT (1: exit
# 1 when the ratio is below 95%).
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-10s}
PIN=${PIN:-1}
NCPU=$(nproc)
SERVER_CPUS=${SERVER_CPUS:-1}
if [ "$PIN" = 1 ]; then
  [ "$NCPU" -gt "$SERVER_CPUS" ] || { echo "bench: PIN=1 needs more than SERVER_CPUS=$SERVER_CPUS CPUs" >&2; exit 2; }
  SERVER_SET="$((NCPU - SERVER_CPUS))-$((NCPU - 1))"
  OTHER_SET="0-$((NCPU - SERVER_CPUS - 1))"
  THREADS=${THREADS:-1}
  WORKERS=${WORKERS:-$SERVER_CPUS}
  ON_SERVER=(taskset -c "$SERVER_SET")
  ON_OTHER=(taskset -c "$OTHER_SET")
else
  THREADS=${THREADS:-2}
  WORKERS=${WORKERS:-2}
  ON_SERVER=()
  ON_OTHER=()
fi
CONNECTIONS=${CONNECTIONS:-50}
BODY_BYTES=${BODY_BYTES:-612}
SENDFILE=${SENDFILE:-off}
CAPTURE_BYTES=${CAPTURE_BYTES:-1024}
STRICT=${STRICT:-0}
SERVER_CPU_LIMIT=${SERVER_CPU_LIMIT:-0.5}
STATS=${STATS:-1}
ACCESS_LOG=${ACCESS_LOG:-off}
LOADER_ARGS=${LOADER_ARGS:-}
STATS_DURATION=${STATS_DURATION:-5s}

say() { echo "bench: $*" >&2; }
die() { say "$*"; exit 2; }

[ "$(id -u)" = 0 ] || die "run as root (the loader loads eBPF programs): sudo bash $0"
for tool in wrk nginx curl taskset bpftool; do
  command -v "$tool" >/dev/null || die "$tool is missing (bash scripts/setup.sh installs it)"
done
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing

# BIN: where tandem-loader and tandem-processor are (default: built here, release);
# another build's binaries can be compared side by side (BIN=/path/to/old/build).
if [ -z "${BIN:-}" ]; then
  say "building (release)"
  cargo build --release -q -p tandem-loader -p tandem-processor
  BIN=$PWD/target/release
fi

WORK=$(mktemp -d /tmp/tandem-bench.XXXXXX)
NGINX_PID= LOADER_PID= PROCESSOR_PID= CGROUP=
cleanup() {
  for pid in $PROCESSOR_PID $LOADER_PID; do kill "$pid" 2>/dev/null || true; done
  # nginx runs in its own process group: master and workers.
  [ -n "$NGINX_PID" ] && kill -KILL -- "-$NGINX_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  [ -n "$CGROUP" ] && rmdir "$CGROUP" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# A port below the ephemeral range that nothing listens on.
port_free() { ! grep -qi ":$(printf '%04X' "$1") .* 0A " /proc/net/tcp /proc/net/tcp6; }
PORT=${PORT:-}
if [ -z "$PORT" ]; then
  for _ in $(seq 100); do
    PORT=$((20000 + RANDOM % 12000))
    port_free "$PORT" && break
  done
fi

case "$ACCESS_LOG" in
  off) ACCESS_LOG_DIRECTIVE=off ;;
  on) ACCESS_LOG_DIRECTIVE="$WORK/logs/access.log" ;;
  *) die "ACCESS_LOG=$ACCESS_LOG: use on or off" ;;
esac

# nginx of its own: a copy of the binary (so the executable selection matches this
# instance only), config, pid, logs and temp paths in $WORK.
mkdir -p "$WORK"/{bin,www,logs,temp,run}
cp "$(command -v nginx)" "$WORK/bin/nginx"
head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x' >"$WORK/www/index.html"
cat >"$WORK/nginx.conf" <<EOF
user root root;
worker_processes $WORKERS;
pid $WORK/nginx.pid;
error_log $WORK/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log $ACCESS_LOG_DIRECTIVE;
    default_type text/html;
    sendfile $SENDFILE;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/temp/client;
    proxy_temp_path $WORK/temp/proxy;
    fastcgi_temp_path $WORK/temp/fastcgi;
    uwsgi_temp_path $WORK/temp/uwsgi;
    scgi_temp_path $WORK/temp/scgi;
    server {
        listen 127.0.0.1:$PORT;
        root $WORK/www;
    }
}
EOF
setsid "${ON_SERVER[@]}" "$WORK/bin/nginx" -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/logs/error.log" \
  -g 'daemon off;' &
NGINX_PID=$!
for _ in $(seq 100); do port_free "$PORT" || break; sleep 0.05; done
port_free "$PORT" && die "nginx did not listen on $PORT: $(cat "$WORK/logs/error.log")"
URL=http://127.0.0.1:$PORT/index.html
curl -fsS -o /dev/null "$URL" || die "nginx does not answer $URL"

# limit_server: moves nginx's processes into a cgroup allowed SERVER_CPU_LIMIT CPUs.
limit_server() {
  local period=10000 quota
  quota=$(awk -v l="$SERVER_CPU_LIMIT" -v p=$period 'BEGIN { printf "%d", l * p }')
  [ "$quota" -ge 1000 ] || die "SERVER_CPU_LIMIT=$SERVER_CPU_LIMIT: give at least 0.1 (CPUs), or 0 for no limit"
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control ||
      echo +cpu >/sys/fs/cgroup/cgroup.subtree_control ||
      die "cannot enable the cgroup v2 cpu controller (run with SERVER_CPU_LIMIT=0 for no limit)"
    CGROUP=/sys/fs/cgroup/tandem-bench-$$
    mkdir "$CGROUP"
    echo "$quota $period" >"$CGROUP/cpu.max"
  elif [ -d /sys/fs/cgroup/cpu ]; then
    CGROUP=/sys/fs/cgroup/cpu/tandem-bench-$$
    mkdir "$CGROUP"
    echo "$period" >"$CGROUP/cpu.cfs_period_us"
    echo "$quota" >"$CGROUP/cpu.cfs_quota_us"
  else
    die "no cgroup cpu controller under /sys/fs/cgroup (run with SERVER_CPU_LIMIT=0 for no limit)"
  fi
  local p
  for p in $(pgrep -g "$NGINX_PID"); do echo "$p" >"$CGROUP/cgroup.procs"; done
}
if [ "$SERVER_CPU_LIMIT" != 0 ]; then
  limit_server
  say "nginx limited to $SERVER_CPU_LIMIT CPU ($CGROUP)"
fi

# wait_log FILE TEXT: waits (20 s) until FILE contains TEXT.
wait_log() {
  for _ in $(seq 400); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  die "timed out waiting for \"$2\" in $1: $(cat "$1")"
}

# cpu_ticks PID: user + system CPU time of PID so far, in clock ticks.
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

# nginx_ticks: user + system CPU time of nginx's workers (and master) so far.
nginx_ticks() {
  local t=0 p
  for p in $(pgrep -g "$NGINX_PID"); do t=$((t + $(cpu_ticks "$p" 2>/dev/null || echo 0))); done
  echo "$t"
}

# prog_stats: "id name run_cnt run_time_ns" of the loader's eBPF programs, by id.
prog_stats() {
  local fd f id
  for fd in /proc/"$LOADER_PID"/fd/*; do
    [[ "$(readlink "$fd" 2>/dev/null)" == *bpf-prog* ]] || continue
    f=/proc/$LOADER_PID/fdinfo/${fd##*/}
    id=$(awk '/^prog_id:/ {print $2}' "$f")
    echo "$id $(bpftool prog show id "$id" 2>/dev/null | awk 'NR == 1 { for (i = 1; i < NF; i++) if ($i == "name") print $(i + 1) }') \
$(awk '/^run_cnt:/ {c = $2} /^run_time_ns:/ {t = $2} END {print c + 0, t + 0}' "$f")"
  done | sort -k1,1
}

# run_wrk LABEL: prints requests/s and nginx's CPU time per request (microseconds).
run_wrk() {
  local out n0 n1 rps
  n0=$(nginx_ticks)
  out=$("${ON_OTHER[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" "$URL")
  n1=$(nginx_ticks)
  echo "$out" >"$WORK/wrk-$1.txt"
  grep -q "Non-2xx\|Socket errors" <<<"$out" && say "wrk $1: $(grep 'Non-2xx\|Socket errors' <<<"$out")"
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  echo "$rps $(awk -v t=$((n1 - n0)) -v hz="$HZ" -v r="$rps" -v s="${DURATION%s}" 'BEGIN { printf "%.2f", t / hz * 1e6 / (r * s) }')"
}

# bpf_stats off for the throughput runs (it adds two clock reads to every eBPF
# program run); the value found is restored at the end.
BPF_STATS_WAS=$(sysctl -n kernel.bpf_stats_enabled)
trap 'sysctl -qw kernel.bpf_stats_enabled="$BPF_STATS_WAS"; cleanup' EXIT
sysctl -qw kernel.bpf_stats_enabled=0

export TANDEM_LOG_FORMAT=text NO_COLOR=1
say "nginx on 127.0.0.1:$PORT ($WORKERS workers, sendfile $SENDFILE, ${BODY_BYTES}-byte file); wrk -t$THREADS -c$CONNECTIONS -d$DURATION"
say "warm-up"
"${ON_OTHER[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$URL" >/dev/null

secs=${DURATION%s}
nproc=$(nproc)
results=()
for round in $(seq "$ROUNDS"); do
  read -r base base_us <<<"$(run_wrk "base-$round")"
  say "round $round: without tandem: $base requests/s, nginx CPU $base_us us/request"

  rm -f "$WORK/run/loader.sock"
  "${ON_OTHER[@]}" "$BIN/tandem-loader" --socket "$WORK/run/loader.sock" --capture-bytes "$CAPTURE_BYTES" $LOADER_ARGS \
    2>"$WORK/loader-$round.log" &
  LOADER_PID=$!
  wait_log "$WORK/loader-$round.log" "ebpf source ready"
  "${ON_OTHER[@]}" "$BIN/tandem-processor" --socket "$WORK/run/loader.sock" --name bench --print none \
    --exe "$WORK/bin/nginx" 2>"$WORK/processor-$round.log" &
  PROCESSOR_PID=$!
  wait_log "$WORK/processor-$round.log" "connected to loader; subscribed"
  wait_log "$WORK/loader-$round.log" "ebpf: instrumenting"
  sleep 0.5

  l0=$(cpu_ticks "$LOADER_PID"); p0=$(cpu_ticks "$PROCESSOR_PID")
  read -r with with_us <<<"$(run_wrk "tandem-$round")"
  l1=$(cpu_ticks "$LOADER_PID"); p1=$(cpu_ticks "$PROCESSOR_PID")
  # CPU used during the run, in % of one core.
  loader_cpu=$(( (l1 - l0) * 100 / HZ / secs ))
  processor_cpu=$(( (p1 - p0) * 100 / HZ / secs ))
  stats_rps=0
  if [ "$STATS" = 1 ] && [ "$round" = 1 ]; then
    sysctl -qw kernel.bpf_stats_enabled=1
    prog_stats >"$WORK/progs0-$round.txt"
    read -r stats_rps _ <<<"$(DURATION=$STATS_DURATION run_wrk "stats-$round")"
    prog_stats >"$WORK/progs1-$round.txt"
    sysctl -qw kernel.bpf_stats_enabled=0
    requests=$(awk -v r="$stats_rps" -v s="${STATS_DURATION%s}" 'BEGIN { printf "%d", r * s }')
    say "round $round: kernel programs during a ${STATS_DURATION} run with bpf_stats on ($stats_rps requests/s; runs, ns/run, ns per request):"
    join "$WORK/progs0-$round.txt" "$WORK/progs1-$round.txt" | awk -v req="$requests" '
      { runs = $6 - $3; ns = $7 - $4; if (runs > 0) { printf "bench:   %-28s %10d %8.0f %8.1f\n", $2, runs, ns / runs, ns / req; tot += ns } }
      END { printf "bench:   %-28s %10s %8s %8.1f\n", "all programs", "", "", tot / req }' >&2
  fi
  kill -TERM "$PROCESSOR_PID"; wait "$PROCESSOR_PID" || true; PROCESSOR_PID=
  kill -TERM "$LOADER_PID"; wait "$LOADER_PID" || true; LOADER_PID=
  # The exit summary: "processor stopped after ...:" then "  in ...", "  made ...",
  # "  out ...", "  lost ...", "  stitch ..." lines.
  stats=$(sed -n '/processor stopped after/,/^  stitch/p' "$WORK/processor-$round.log" || true)
  loader_stats=$(grep -o "loader stopped.*" "$WORK/loader-$round.log" || true)
  received=$(sed -n 's/^  in  *\([0-9]*\) events.*/\1/p' <<<"$stats")
  data=$(sed -n 's/^  in .*[(, ]data \([0-9]*\).*/\1/p' <<<"$stats")
  lost=$(sed -n 's/^  lost  *\([0-9]*\) events.*/\1/p' <<<"$stats")
  if [ -z "$received" ]; then
    # Builds before the readable summary: "processor stopped: received N events
    # ... data=D ...; lost M".
    stats=$(grep -o "processor stopped: .*" "$WORK/processor-$round.log" || true)
    received=$(sed -n 's/.*received \([0-9]*\) events.*/\1/p' <<<"$stats")
    data=$(sed -n 's/.* data=\([0-9]*\).*/\1/p' <<<"$stats")
    lost=$(sed -n 's/.*; lost \([0-9]*\).*/\1/p' <<<"$stats")
  fi
  [ -n "$received" ] || die "no final stats from the processor: $(cat "$WORK/processor-$round.log")"
  say "round $round: with tandem:    $with requests/s, nginx CPU $with_us us/request; $stats"
  say "round $round: $loader_stats; CPU during the run: loader $loader_cpu%, processor $processor_cpu% of one core"
  # Requests served while the processor counted events (the stats run included):
  # events/s and data records per request are computed over all of them.
  served=$(awk -v r="$with" -v s="$secs" -v sr="${stats_rps:-0}" -v ss="${STATS_DURATION%s}" -v st="$STATS" \
    'BEGIN { printf "%d", r * s + (st == 1 ? sr * ss : 0) }')
  # CPU per request of the loader and the processor during the tandem run, in us.
  run_requests=$(awk -v r="$with" -v s="$secs" 'BEGIN { printf "%d", r * s }')
  loader_us=$(awk -v t="$((l1 - l0))" -v hz="$HZ" -v n="$run_requests" 'BEGIN { printf "%.2f", (n > 0 ? t / hz * 1e6 / n : 0) }')
  processor_us=$(awk -v t="$((p1 - p0))" -v hz="$HZ" -v n="$run_requests" 'BEGIN { printf "%.2f", (n > 0 ? t / hz * 1e6 / n : 0) }')
  say "round $round: CPU per request: loader $loader_us us, processor $processor_us us"
  results+=("$base $with ${received:-0} ${data:-0} ${lost:-0} $loader_cpu $processor_cpu $base_us $with_us $served $loader_us $processor_us")
done

echo
if [ "$PIN" = 1 ]; then
  placement="nginx on CPU $SERVER_SET; wrk, loader and processor on CPU $OTHER_SET"
else
  placement="no pinning: everything shares the $nproc CPUs"
fi
if [ "$SERVER_CPU_LIMIT" != 0 ]; then
  placement="$placement; nginx limited to $SERVER_CPU_LIMIT CPU"
fi
echo "($nproc CPUs, $placement; loader/processor CPU in % of one core, during the run with tandem; nginx us/req: its CPU time per request; loader/proc us: their CPU time per request served with tandem)"
printf '%-6s %14s %14s %8s %10s %8s %6s %8s %9s %10s %10s %10s %10s\n' round "req/s without" "req/s with" ratio "events/s" "data/req" lost "loader" processor "us/req w/o" "us/req with" "loader us" "proc us"
printf '%s\n' "${results[@]}" | awk -v secs="$secs" -v strict="$STRICT" '
  { n++; b += $1; w += $2; eps = $3 / $10 * $2; ev += eps; lost += $5; lc += $6; pc += $7; bu += $8; wu += $9; lu += $11; pu += $12
    printf "%-6d %14.0f %14.0f %7.1f%% %10.0f %8.2f %6d %7d%% %8d%% %10.2f %10.2f %10.2f %10.2f\n", n, $1, $2, 100 * $2 / $1, eps, $4 / $10, $5, $6, $7, $8, $9, $11, $12 }
  END {
    ratio = 100 * w / b
    printf "%-6s %14.0f %14.0f %7.1f%% %10.0f %8s %6d %7d%% %8d%% %10.2f %10.2f %10.2f %10.2f\n", "mean", b / n, w / n, ratio, ev / n, "", lost, lc / n, pc / n, bu / n, wu / n, lu / n, pu / n
    verdict = ratio >= 95 ? "meets" : "MISSES"
    printf "\nthroughput with tandem: %.1f%% of without; %s the >= 95%% target\n", ratio, verdict
    printf "nginx CPU per request: %.2f us without, %.2f us with tandem (%+.1f%%)\n", bu / n, wu / n, 100 * (wu - bu) / bu
    printf "CPU per captured request: loader %.2f us, processor %.2f us\n", lu / n, pu / n
    if (strict == 1 && ratio < 95) exit 1
  }'
