# syntax=docker/dockerfile:1
# The node agent, with the shim it preloads into GPU pods and its eBPF
# probes (compiled into the vagus binary). Built from the repository root:
#   docker build -f containers/agent.Dockerfile -t vagus-agent .
# The build stage makes vmlinux.h from the build host's BTF
# (/sys/kernel/btf/vmlinux); a builder without it gives an agent without
# probes, which then runs as --no-bpf would (the agent says so).

FROM rust:1.95.0-slim-bookworm AS build
# Debian 12's versions as of 2026-12: bump them when its security archive
# supersedes one (apt then no longer has it).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      clang-19=1:19.1.7-3~deb12u1 llvm-19=1:19.1.7-3~deb12u1 \
      libbpf-dev=1:1.1.2-0+deb12u1 bpftool=7.1.0+6.1.192-3 \
 && rm -rf /var/lib/apt/lists/*
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
RUN cargo build --release --locked -p vagus -p vagus-shim \
 && mkdir -p /out \
 && cp target/release/vagus target/release/libvagus_shim.so /out/

# The agent runs as root with CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE
# (the DaemonSet grants them); its init container copies the shim onto the
# node (cp, hence a base with a shell rather than distroless).
FROM debian:12.12-slim
COPY --from=build /out/vagus /usr/local/bin/vagus
COPY --from=build /out/libvagus_shim.so /opt/vagus/lib/libvagus_shim.so
ENTRYPOINT ["/usr/local/bin/vagus"]
CMD ["agent"]
