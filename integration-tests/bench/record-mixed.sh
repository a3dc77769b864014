#!/usr/bin/env bash
# A capture of REAL mixed-protocol traffic for the processor's throughput benchmark
# (processor/benches/throughput.rs): HTTP/1, HTTP/2 (h2c), gRPC, PostgreSQL, MySQL
# (MariaDB) and Redis, recorded with the eBPF source.
#
#   sudo bash integration-tests/bench/record-mixed.sh      # writes /tmp/mixed.tcap
#   cargo bench -p tandem-processor --bench throughput -- /tmp/mixed.tcap
#
# What it does, all on 127.0.0.1 and on spare ports (nothing leaves loopback):
#  1. builds tandem-loader, tandem-grpc-server and tandem-capture-stats (release);
#  2. starts its own servers: nginx (HTTP/1), tandem-grpc-server (gRPC, and h2c on
#     a second port), PostgreSQL 15 (initdb + postgres, as nobody), MariaDB
#     (mariadb-install-db + mariadbd) and redis-server, each with its data in a
#     temp dir, and prepares their data (pgbench -i, a MariaDB table);
#  3. runs `tandem-loader record --source ebpf --open-port <the six ports>` and,
#     one after the other, the load generators: h2load --h1 on nginx, h2load (h2c)
#     on the h2c server, tandem-grpc-server call (OK, NOT_FOUND and INTERNAL calls),
#     pgbench -S (simple protocol) and -S -M extended, mariadb-slap,
#     redis-benchmark (SET, GET, INCR, LPUSH, LPOP);
#  4. stops the recorder (SIGTERM) and prints its summary line (events, lost) and,
#     per protocol, the data events and connections of its port
#     (tandem-capture-stats); fails if a protocol has no data event.
# Both ends of every connection are captured (the servers and the load generators
# use the selected ports). Everything it started is stopped on exit, also on
# failure or Ctrl-C; the capture is written to $OUT.partial and renamed at the end.
#
# Takes about 30-60 s here once built (a cold release build adds several minutes).
# With the defaults the capture holds ~200k events, ~30 MB.
#
# Environment (defaults):
#   OUT (/tmp/mixed.tcap)  the capture file
#   SCALE (8000)           requests per load generator run (grpc: SCALE calls in
#                          all; pgbench: SCALE transactions per mode); the events
#                          grow linearly with it
#   CONNECTIONS (4)        client connections of h2load, pgbench, mariadb-slap and
#                          redis-benchmark
#   CAPTURE_BYTES (1024)   loader --capture-bytes
#   LOAD_TIMEOUT (60)      seconds each load generator may run before it is killed
#   MAX_SECS (300)         loader --duration-secs: a hard bound on the recording
#   MAX_EVENTS (2000000)   loader --max-events: a hard bound on the file
#   LOADER_ARGS            more loader options, e.g. "--ring-buffer-kib 1024"
#   CARGO_TARGET_DIR       where the binaries are built (default: ./target)
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=${OUT:-/tmp/mixed.tcap}
SCALE=${SCALE:-8000}
CONNECTIONS=${CONNECTIONS:-4}
CAPTURE_BYTES=${CAPTURE_BYTES:-1024}
LOAD_TIMEOUT=${LOAD_TIMEOUT:-60}
MAX_SECS=${MAX_SECS:-300}
MAX_EVENTS=${MAX_EVENTS:-2000000}
LOADER_ARGS=${LOADER_ARGS:-}

say() { echo "record-mixed: $*" >&2; }
die() { say "$*"; exit 2; }

[ "$(id -u)" = 0 ] || die "run as root (the loader loads eBPF programs): sudo bash $0"
PG_DIR=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$PG_DIR" ] || die "PostgreSQL is missing (bash scripts/setup.sh installs postgresql-15)"
for tool in nginx h2load mariadb mariadbd mariadb-install-db mariadb-slap redis-server \
  redis-benchmark redis-cli setpriv setsid timeout cargo; do
  command -v "$tool" >/dev/null || die "$tool is missing (bash scripts/setup.sh installs it)"
done
for tool in initdb postgres pgbench psql; do
  [ -x "$PG_DIR/$tool" ] || die "$PG_DIR/$tool is missing (postgresql-15, postgresql-client-15)"
done
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing

say "building (release)"
cargo build --release -q -p tandem-loader -p tandem-integration-tests --bin tandem-loader \
  --bin tandem-grpc-server --bin tandem-capture-stats
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
[ -x "$BIN/tandem-loader" ] || die "no $BIN/tandem-loader after the build"

WORK=$(mktemp -d /tmp/tandem-mixed.XXXXXX)
chmod 0755 "$WORK" # postgres and mariadbd run as nobody
GROUPS_STARTED=()  # process groups of the servers (setsid)
LOADER_PID=
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  # timeout runs in a process group of its own, with the load generator.
  [ -n "$LOAD_PID" ] && kill -TERM -- "-$LOAD_PID" 2>/dev/null || true
  if [ -n "$LOADER_PID" ]; then
    kill -TERM "$LOADER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$LOADER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$LOADER_PID" 2>/dev/null || true
  fi
  # SIGTERM first (every server shuts down on it; no client is left), then SIGKILL
  # for whatever of a group is still there after 5 s.
  for pgid in "${GROUPS_STARTED[@]}"; do kill -TERM -- "-$pgid" 2>/dev/null || true; done
  for pgid in "${GROUPS_STARTED[@]}"; do
    for _ in $(seq 50); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pgid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ "$status" != 0 ]; then
    say "failed (status $status); the end of each log:"
    tail -n 5 "$WORK"/*.log >&2 2>/dev/null || true
  fi
  rm -rf "$WORK" "$OUT.partial"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Spare ports below the ephemeral range (clients connect from there).
port_free() { ! grep -qi ":$(printf '%04X' "$1") .* 0A " /proc/net/tcp /proc/net/tcp6; }
TAKEN=" "
PORT=
spare_port() { # sets PORT (no subshell: TAKEN must persist)
  for _ in $(seq 200); do
    PORT=$((20000 + RANDOM % 12000))
    if port_free "$PORT" && [[ "$TAKEN" != *" $PORT "* ]]; then
      TAKEN="$TAKEN$PORT "
      return
    fi
  done
  die "no free port found"
}
spare_port; HTTP_PORT=$PORT
spare_port; H2C_PORT=$PORT
spare_port; GRPC_PORT=$PORT
spare_port; PG_PORT=$PORT
spare_port; MY_PORT=$PORT
spare_port; REDIS_PORT=$PORT

# Starts "$@" in a process group of its own, output to $WORK/$name.log.
start() {
  local name=$1
  shift
  setsid "$@" >"$WORK/$name.log" 2>&1 &
  GROUPS_STARTED+=("$!")
}
wait_port() {
  local name=$1 port=$2
  for _ in $(seq 300); do
    port_free "$port" || return 0
    sleep 0.1
  done
  die "$name is not listening on $port after 30 s (see its log above)"
}
# Runs a load generator, bounded in time; its output goes to $WORK/$name.log. In the
# background, so that a signal to this script is handled at once (bash runs traps
# only after a foreground command ends, but interrupts `wait`).
LOAD_PID=
load() {
  local name=$1 status=0
  shift
  say "load: $name"
  timeout --kill-after=5 "$LOAD_TIMEOUT" "$@" >>"$WORK/$name.log" 2>&1 &
  LOAD_PID=$!
  wait "$LOAD_PID" || status=$?
  LOAD_PID=
  [ "$status" = 0 ] ||
    die "$name failed or ran longer than ${LOAD_TIMEOUT}s: $(tail -n 3 "$WORK/$name.log")"
}

say "starting nginx :$HTTP_PORT, tandem-grpc-server :$GRPC_PORT (h2c :$H2C_PORT), postgres :$PG_PORT, mariadbd :$MY_PORT, redis-server :$REDIS_PORT"

# nginx of its own: config, pid, logs and temp paths in $WORK.
mkdir -p "$WORK"/nginx/{www,logs,temp}
head -c 612 /dev/zero | tr '\0' 'x' >"$WORK/nginx/www/index.html"
echo '{"items":[1,2,3]}' >"$WORK/nginx/www/items.json"
cat >"$WORK/nginx/nginx.conf" <<EOF
user root root;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    default_type text/html;
    sendfile off;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/nginx/temp/client;
    proxy_temp_path $WORK/nginx/temp/proxy;
    fastcgi_temp_path $WORK/nginx/temp/fastcgi;
    uwsgi_temp_path $WORK/nginx/temp/uwsgi;
    scgi_temp_path $WORK/nginx/temp/scgi;
    server {
        listen 127.0.0.1:$HTTP_PORT;
        root $WORK/nginx/www;
    }
}
EOF
start nginx nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/logs/error.log" \
  -g 'daemon off;'

start grpc-server "$BIN/tandem-grpc-server" serve --grpc "127.0.0.1:$GRPC_PORT" \
  --h2c "127.0.0.1:$H2C_PORT"

# PostgreSQL as nobody (initdb and postgres refuse root), trust auth, no fsync.
NOBODY=(setpriv --reuid=65534 --regid=65534 --clear-groups)
mkdir -p "$WORK/pg"
chown 65534:65534 "$WORK/pg"
LC_ALL=C "${NOBODY[@]}" "$PG_DIR/initdb" -A trust -U postgres -E UTF8 --no-sync \
  -D "$WORK/pg/data" >"$WORK/initdb.log" 2>&1 || die "initdb failed: $(tail -n 3 "$WORK/initdb.log")"
start postgres "${NOBODY[@]}" "$PG_DIR/postgres" -D "$WORK/pg/data" -p "$PG_PORT" \
  -c listen_addresses=127.0.0.1 -c fsync=off -c ssl=off -k "$WORK/pg"

# MariaDB without grant tables (any client is root), as nobody.
mkdir -p "$WORK/mysql"
chown 65534:65534 "$WORK/mysql"
mariadb-install-db --no-defaults --user=nobody --skip-test-db --datadir="$WORK/mysql/data" \
  >"$WORK/mariadb-install-db.log" 2>&1 ||
  die "mariadb-install-db failed: $(tail -n 3 "$WORK/mariadb-install-db.log")"
start mariadbd mariadbd --no-defaults --datadir="$WORK/mysql/data" --port="$MY_PORT" \
  --bind-address=127.0.0.1 --socket="$WORK/mysql/mysql.sock" --pid-file="$WORK/mysql/mariadbd.pid" \
  --user=nobody --skip-grant-tables --skip-log-bin

mkdir -p "$WORK/redis"
start redis-server redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
  --appendonly no --dir "$WORK/redis"

wait_port nginx "$HTTP_PORT"
wait_port tandem-grpc-server "$GRPC_PORT"
wait_port tandem-grpc-server "$H2C_PORT"
wait_port postgres "$PG_PORT"
wait_port mariadbd "$MY_PORT"
wait_port redis-server "$REDIS_PORT"

# Data the loads read, prepared before the recording starts.
"$PG_DIR/pgbench" -i -q -s 1 -h 127.0.0.1 -p "$PG_PORT" -U postgres postgres \
  >"$WORK/pgbench-init.log" 2>&1 || die "pgbench -i failed: $(tail -n 3 "$WORK/pgbench-init.log")"
mariadb -h 127.0.0.1 -P "$MY_PORT" -u root -e "CREATE DATABASE shop;
  CREATE TABLE shop.items (id INT PRIMARY KEY, name VARCHAR(40), price INT);
  INSERT INTO shop.items VALUES (1, 'apple', 3), (2, 'pear', 4), (3, 'plum', 2);" \
  >"$WORK/mariadb-init.log" 2>&1 || die "MariaDB setup failed: $(tail -n 3 "$WORK/mariadb-init.log")"

PORTS="$HTTP_PORT,$H2C_PORT,$GRPC_PORT,$PG_PORT,$MY_PORT,$REDIS_PORT"
say "recording ports $PORTS to $OUT"
# shellcheck disable=SC2086 # LOADER_ARGS is a list of options
"$BIN/tandem-loader" record --source ebpf --open-port "$PORTS" --capture-bytes "$CAPTURE_BYTES" \
  --duration-secs "$MAX_SECS" --max-events "$MAX_EVENTS" $LOADER_ARGS -o "$OUT.partial" \
  >"$WORK/loader.log" 2>&1 &
LOADER_PID=$!
for _ in $(seq 300); do
  grep -q "ebpf source ready" "$WORK/loader.log" && break
  kill -0 "$LOADER_PID" 2>/dev/null || die "the loader exited: $(tail -n 5 "$WORK/loader.log")"
  sleep 0.1
done
grep -q "ebpf source ready" "$WORK/loader.log" || die "the loader is not ready after 30 s"
STARTED=$SECONDS

C=$CONNECTIONS
H=http://127.0.0.1
load http1 h2load --h1 -n "$SCALE" -c "$C" "$H:$HTTP_PORT/" "$H:$HTTP_PORT/items.json" \
  "$H:$HTTP_PORT/missing"
load http2 h2load -n "$SCALE" -c "$C" -m 4 "$H:$H2C_PORT/hello/1" "$H:$H2C_PORT/orders/7" \
  "$H:$H2C_PORT/missing"
load grpc "$BIN/tandem-grpc-server" call --connect "127.0.0.1:$GRPC_PORT" --name world \
  --name missing --name boom --count $((SCALE / 3))
PGBENCH=("$PG_DIR/pgbench" -n -S -c "$C" -t $((SCALE / C)) -h 127.0.0.1 -p "$PG_PORT" -U postgres)
load postgresql-simple "${PGBENCH[@]}" -M simple postgres
load postgresql-extended "${PGBENCH[@]}" -M extended postgres
load mysql mariadb-slap -h 127.0.0.1 -P "$MY_PORT" -u root --create-schema=shop --no-drop \
  --iterations=1 --concurrency="$C" --number-of-queries="$SCALE" \
  --query="SELECT name, price FROM shop.items WHERE id = 2"
# mariadb-slap exits 0 even when it cannot connect.
! grep -qi "error" "$WORK/mysql.log" || die "mariadb-slap: $(grep -i error "$WORK/mysql.log" | head -n 3)"
load redis redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c "$C" -n $((SCALE / 5)) \
  -t set,get,incr,lpush,lpop -q

# The last records are drained within a poll interval (10 ms); then stop.
sleep 1
ELAPSED=$((SECONDS - STARTED))
kill -TERM "$LOADER_PID" 2>/dev/null || true # gone already if --max-events was reached
wait "$LOADER_PID" || die "the loader failed: $(tail -n 5 "$WORK/loader.log")"
LOADER_PID=
grep "capture written" "$WORK/loader.log" >&2 || die "no summary line: $(tail -n 5 "$WORK/loader.log")"
grep "events were lost" "$WORK/loader.log" >&2 || true
mv "$OUT.partial" "$OUT"
say "loads took ${ELAPSED}s; per protocol (both ends of each connection):"
"$BIN/tandem-capture-stats" "$OUT" http1="$HTTP_PORT" http2="$H2C_PORT" grpc="$GRPC_PORT" \
  postgresql="$PG_PORT" mysql="$MY_PORT" redis="$REDIS_PORT" ||
  die "a protocol has no data event in $OUT"
