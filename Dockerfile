# syntax=docker/dockerfile:1
#
# skyrules container image.
#
#   docker build -t skyrules:latest .
#   docker run --rm -e SKYLIGHT_API_KEY=... \
#     -v "$PWD/skyrules.toml:/etc/skyrules/skyrules.toml:ro" \
#     -v "$PWD/rules:/etc/skyrules/rules:ro" skyrules:latest
#
# No secret is baked in: the API key (SKYLIGHT_API_KEY or api.api_key_file),
# the state URL (SKYRULES_STATE_URL or engine.state_url_file) and the HTTP
# token (http.token_file) are given at run time. Kubernetes manifests are in
# deploy/kubernetes/.

# Any stable toolchain >= Cargo.toml's rust-version (1.89); pin it for
# reproducible builds, e.g. --build-arg RUST_VERSION=1.95.
ARG RUST_VERSION=1

# ---------------------------------------------------------------------------
# Build: only the Rust toolchain is needed. The image's gcc and make build
# the bundled SQLite (rusqlite), ring and jemalloc; TLS is rustls, so no
# OpenSSL.
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /build

# Dependencies first, against stub sources, so that this layer is rebuilt
# only when Cargo.toml or Cargo.lock change. The manifest declares a
# [[bench]] `engine` without a path, so benches/engine.rs must exist for
# cargo to read it at all; tests/tests.rs ([[test]] with an explicit path)
# need not.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/engine.rs \
 && cargo build --release --locked --bin skyrules \
 && rm -rf src benches

# The real sources. rules/ is needed at build time: src/tools/embedded_rules.rs
# include_str!s the shipped rules (for `skyrules demo`).
COPY src ./src
COPY benches ./benches
COPY rules ./rules
# COPY keeps the files' modification times, which may be older than the stub
# build above; touch the crate roots so cargo rebuilds the crate itself.
RUN touch src/lib.rs src/main.rs \
 && cargo build --release --locked --bin skyrules \
 && install -D -m 0755 target/release/skyrules /out/skyrules \
 && /out/skyrules --version

# ---------------------------------------------------------------------------
# Runtime: the same Debian release as the builder (glibc).
FROM debian:bookworm-slim

# ca-certificates: for HTTPS (reqwest also carries its own webpki roots).
# curl: for the Kubernetes readiness probe, which must send the bearer token
# of [http] token_file (/readyz requires it; only /healthz does not).
# Unpinned on purpose: bookworm's security updates replace pinned versions.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

# A fixed numeric UID/GID, so that `runAsNonRoot` can verify it.
RUN groupadd --system --gid 10001 skyrules \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/skyrules \
      --no-create-home --shell /usr/sbin/nologin skyrules \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/skyrules \
 && install -d -m 0755 /etc/skyrules /etc/skyrules/rules

COPY --from=builder /out/skyrules /usr/local/bin/skyrules

# The working directory holds the SQLite state (engine.state_path,
# default skyrules.db) when no PostgreSQL URL is set: single replica only.
WORKDIR /var/lib/skyrules
USER 10001:10001

# /metrics, /healthz, /readyz and the status page, when [http] listen (or
# --listen / SKYRULES_LISTEN) is set, e.g. 0.0.0.0:9187 (which requires
# [http] token_file).
EXPOSE 9187

# SIGTERM: stop polling, hand the leases over, let in-flight actions finish
# (up to ~10 s), exit 0. Allow 30 s before SIGKILL.
STOPSIGNAL SIGTERM

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="skyrules" \
      org.opencontainers.image.description="Automation and escalation engine for SkyLight Chat's Web Chat" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"

ENTRYPOINT ["skyrules"]
CMD ["run", "--config", "/etc/skyrules/skyrules.toml"]
