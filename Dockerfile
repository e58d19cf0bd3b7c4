# syntax=docker/dockerfile:1
# The ocimirror container image: built from this source tree, run as an unprivileged user.
#
#   docker build -t ocimirror .
#   docker run -p 5000:5000 -v ocimirror-data:/var/lib/ocimirror ocimirror
#
# Without arguments it serves /etc/ocimirror/config.yaml (deploy/docker/config.yaml: a Docker Hub
# mirror on :5000 with its cache under /var/lib/ocimirror); mount your own config over that file,
# or pass other arguments (`docker run ocimirror config check /path`, `ocimirror keygen ...`).

ARG RUST_VERSION=1
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The release profile (Cargo.toml) is the server's: LTO, one codegen unit. The caches keep the
# registry and the dependencies' objects between builds of the same machine.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin ocimirror \
    && install -D -m 0755 target/release/ocimirror /out/ocimirror

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# CA certificates: the upstream registry, S3 and rediss:// are verified against the system roots.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ocimirror \
    && useradd --system --uid 10001 --gid ocimirror --no-create-home \
        --home-dir /var/lib/ocimirror --shell /usr/sbin/nologin ocimirror \
    && install -d -o ocimirror -g ocimirror -m 0750 /var/lib/ocimirror \
    && install -d -o ocimirror -g ocimirror -m 0750 /etc/ocimirror/keys
COPY --from=build /out/ocimirror /usr/local/bin/ocimirror
COPY deploy/docker/config.yaml /etc/ocimirror/config.yaml
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /var/lib/ocimirror
VOLUME ["/var/lib/ocimirror"]
EXPOSE 5000
# SIGTERM (the default stop signal) drains in-flight requests for server.shutdown_timeout (30 s).
ENTRYPOINT ["/usr/local/bin/ocimirror"]
CMD ["serve", "--config", "/etc/ocimirror/config.yaml"]
