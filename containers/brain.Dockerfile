# syntax=docker/dockerfile:1
# The brain: decision core, HTTP API, scheduler extender, agents' QUIC
# endpoint. Also the admission webhook's image (`vagus webhook`). Built
# from the repository root:
#   docker build -f containers/brain.Dockerfile -t vagus-brain .

FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY cluster cluster
COPY demo demo
COPY ebpf ebpf
COPY agent agent
COPY brain brain
COPY interposer interposer
COPY serve serve
COPY gateway gateway
COPY gpusim gpusim
COPY cli cli
COPY tests tests
COPY bench bench
# No clang here: the brain needs no eBPF probes (ebpf's build.rs builds
# without them).
RUN cargo build --release --locked -p vagus \
 && mkdir -p /out/data \
 && cp target/release/vagus /out/

# Distroless: libc and libgcc, no shell, runs as an unprivileged user.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/vagus /usr/local/bin/vagus
COPY --from=build --chown=65532:65532 /out/data /var/lib/vagus
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/vagus"]
CMD ["brain", "--help"]
