# syntax=docker/dockerfile:1
#
# Images of the livepush binaries, built once and shipped in two small,
# non-root runtime images; pick one with --target:
#
#   docker build --target poller -t livepush-poller .
#   docker build --target edge   -t livepush-edge .
#
# The build needs no protoc (build.rs compiles proto/ with protox). BuildKit
# cache mounts keep the crates.io downloads and target/ between builds, so a
# source change recompiles only the livepush crates.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY . .
# Strip debug info from the shipped binaries (about 40 MB to 8 MB each) but
# keep symbols, so panic backtraces still name functions.
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p poller -p edge \
    && mkdir -p /out \
    && cp target/release/poller target/release/edge /out/

# distroless/cc: glibc and libgcc only (TLS is rustls, no OpenSSL), no shell,
# user 65532. The builder is bookworm too, so the glibc versions match.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
USER 65532:65532

FROM runtime AS poller
COPY --from=builder /out/poller /usr/local/bin/poller
# Inside a container, listen on every interface (the binary defaults to
# loopback). Set POLLER_MEDIA_URL (or pass --media-url) to the media service.
ENV POLLER_LISTEN=0.0.0.0:50051
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/poller"]

FROM runtime AS edge
COPY --from=builder /out/edge /usr/local/bin/edge
# Set EDGE_POLLER (or pass --poller) to the poller's address.
ENV EDGE_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/edge"]
