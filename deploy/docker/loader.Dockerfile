# syntax=docker/dockerfile:1
# tandem-loader image. Build from the repository root:
#   docker build -f deploy/docker/loader.Dockerfile -t tandem-loader:0.1.0 .
# Not built or published by this project's CI (no container engine there): see
# deploy/README.md.

ARG RUST_VERSION=1.95

# --- builder: the toolchain scripts/setup.sh installs for the eBPF programs ----------
FROM rust:${RUST_VERSION}-bookworm AS builder
# bpf-linker links against LLVM 22 (Debian bookworm-security ships llvm-22-dev).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends llvm-22-dev \
 && rm -rf /var/lib/apt/lists/*
# The kernel programs build with nightly and -Z build-std=core (aya-build).
RUN rustup toolchain install nightly --profile minimal --component rust-src
# Without LLVM_PREFIX bpf-linker picks another LLVM and fails at link time.
RUN LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version 0.13.0 --locked \
      --no-default-features --features llvm-22
WORKDIR /src
COPY . .
# Without the dev-sources feature: no replay/synthetic source, no `record` command
# in the privileged binary (they are development tools).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked -p tandem-loader --bin tandem-loader --no-default-features

# --- runtime: glibc and nothing else (no shell, no package manager) -----------------
FROM gcr.io/distroless/cc-debian12 AS runtime
COPY --from=builder /src/target/release/tandem-loader /usr/local/bin/tandem-loader
# uid 0 on purpose: container runtimes give added capabilities to uid 0 only (no
# ambient capabilities through Kubernetes). Run it with every capability dropped and
# the five of deploy/kubernetes/daemonset.yaml added, never privileged:
#   docker run --cap-drop ALL --cap-add BPF --cap-add PERFMON --cap-add SYS_PTRACE \
#     --cap-add CHECKPOINT_RESTORE --cap-add DAC_READ_SEARCH --pid host ...
USER 0:0
ENTRYPOINT ["/usr/local/bin/tandem-loader"]
