# syntax=docker/dockerfile:1
# The ocimirror container image: built from this source tree, run as an unprivileged user.
#
#   docker build -t registry.example.com/ocimirror:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#   docker run -p 5000:5000 -v ocimirror-data:/var/lib/ocimirror registry.example.com/ocimirror:0.1.0
#
# Without arguments it serves /etc/ocimirror/config.yaml (deploy/docker/config.yaml: a Docker Hub
# mirror on :5000 with its cache under /var/lib/ocimirror); mount your own config over that file,
# or pass other arguments (`docker run … config check /path`, `… keygen …`, `… healthcheck`).
#
# Base images are pinned by digest (the tag is kept for readers and for Dependabot or Renovate,
# which propose new digests), so a rebuilt image changes only when this file does. To update a
# pin by hand, resolve the tag's current digest and paste it after the `@`:
#
#   docker buildx imagetools inspect docker.io/library/rust:1-bookworm --format '{{json .Manifest.Digest}}'
#   docker buildx imagetools inspect docker.io/library/debian:bookworm-slim --format '{{json .Manifest.Digest}}'
#
# (or `crane digest <image>:<tag>`, `skopeo inspect --format '{{.Digest}}' docker://<image>:<tag>`).
# Both stages are Debian bookworm: the binary links against the glibc it was built with.

FROM docker.io/library/rust:1-bookworm@sha256:82150a52ec202c1b14d7817e14516c392bb7f5cfebd88f1ed531cb37ebd39922 AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The release profile (Cargo.toml) is the server's: LTO, one codegen unit; the image's binary is
# also stripped of symbols (smaller; panics still print their message). The caches keep the
# registry and the dependencies' objects between builds of the same machine.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release --locked --bin ocimirror \
    && install -D -m 0755 target/release/ocimirror /out/ocimirror

FROM docker.io/library/debian:bookworm-slim@sha256:88200866dfff7ea7f5cbcb6ec7c8a701889efe6fe859fe64d6990e4b07ea4171 AS runtime
# What the image is (OCI annotations, https://github.com/opencontainers/image-spec/blob/main/annotations.md);
# VERSION, REVISION and SOURCE are set by whoever builds it.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="ocimirror" \
      org.opencontainers.image.description="A pull-through caching mirror for OCI container registries, with a token service" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"
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
# The image's own check, with no curl in it: GET /healthz on the default listen port. A config
# that listens elsewhere or serves TLS needs `healthcheck --url https://127.0.0.1:<port>/healthz
# --insecure` (compose: the service's healthcheck; Kubernetes ignores this and uses its probes).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/ocimirror", "healthcheck", "--url", "http://127.0.0.1:5000/healthz", "--timeout", "4s"]
# SIGTERM (the default stop signal) drains in-flight requests for server.shutdown_timeout (30 s).
ENTRYPOINT ["/usr/local/bin/ocimirror"]
CMD ["serve", "--config", "/etc/ocimirror/config.yaml"]
