# syntax=docker/dockerfile:1
# tandem-processor image. Build from the repository root:
#   docker build -f deploy/docker/processor.Dockerfile -t tandem-processor:0.1.0 .
# Not built or published by this project's CI (no container engine there): see
# deploy/README.md.

ARG RUST_VERSION=1.95

# --- builder: stable Rust only; the processor has no eBPF code -----------------------
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked -p tandem-processor --bin tandem-processor

# --- runtime: glibc and CA certificates (OTLP over TLS), no shell --------------------
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /src/target/release/tandem-processor /usr/local/bin/tandem-processor
# Non-root, no capabilities needed: the same uid/gid as runAsUser/runAsGroup in
# deploy/kubernetes/daemonset.yaml.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tandem-processor"]
