# syntax=docker/dockerfile:1
# milvus-backfill image: the operator (/usr/local/bin/milvus-backfill-operator) and the worker
# CLI (/usr/local/bin/milvus-backfill) in one image; the Helm chart (charts/milvus-backfill)
# runs the first and the operator's Jobs run the second.
#
#   docker build -t milvus-backfill:0.1.0 .
#
# Build stage: Debian 12 (bookworm), so the binaries link against the same glibc as the
# distroless runtime below. protoc comes from the protoc-bin-vendored crate and TLS is
# rustls, so no system packages are needed. Both binaries need only libc, libm and libgcc_s.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p milvus-backfill -p milvus-backfill-operator \
 && mkdir -p /out \
 && cp target/release/milvus-backfill target/release/milvus-backfill-operator /out/

# Runtime: distroless (glibc, libgcc, CA certificates, no shell), uid/gid 65532 "nonroot".
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/milvus-backfill /out/milvus-backfill-operator /usr/local/bin/
# Numeric, so that the kubelet can check runAsNonRoot (worker Pods set it by default).
USER 65532:65532
# Metrics and health (/metrics, /healthz, /readyz) of the operator.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/milvus-backfill-operator"]
CMD ["run"]
