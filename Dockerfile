# syntax=docker/dockerfile:1
#
# agentgate container image: docs/operations.md, "Containers".
#
#   deploy/build-image.sh                      (or: docker build -t agentgate:dev .)
#   docker run --rm --init -p 127.0.0.1:8079:8079 --env-file agentgate.env \
#     -v "$PWD/agentgate.toml:/etc/agentgate/agentgate.toml:ro" agentgate:dev

# --- build: the release binary, exactly as locked ---------------------------------
ARG RUST_IMAGE=rust:1.95-bookworm
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
# The registry and target caches survive between builds (BuildKit); the binary is
# copied out of the cache mount so the next stage can take it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p agentgate \
 && install -m 0755 target/release/agentgate /usr/local/bin/agentgate

# --- runtime: Debian slim, CA certificates, an unprivileged user --------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 agentgate \
 && useradd --system --uid 10001 --gid agentgate --home-dir /var/lib/agentgate \
      --no-create-home --shell /usr/sbin/nologin agentgate \
 && install -d -o agentgate -g agentgate -m 0700 /var/lib/agentgate \
 && install -d -m 0755 /etc/agentgate
COPY --from=build /usr/local/bin/agentgate /usr/local/bin/agentgate
# A default configuration (production profile, 0.0.0.0:8079, the HMAC secret from
# AGENTGATE_JWT_SECRET). Mount your own file over it.
COPY deploy/agentgate.toml /etc/agentgate/agentgate.toml
ENV AGENTGATE_HOME=/var/lib/agentgate
WORKDIR /var/lib/agentgate
USER agentgate:agentgate
EXPOSE 8079
# SIGTERM: close every WebSocket with 1012 server_restart, wait up to
# server.shutdown_grace_s, exit 0. Give `docker stop` longer than that grace.
STOPSIGNAL SIGTERM
# Readiness without adding curl or wget: bash's /dev/tcp sends one plain HTTP request
# to /readyz and accepts a 200 status line. Set AGENTGATE_HEALTH_PORT if `listen` uses
# another port; when the container itself terminates TLS, run with --no-healthcheck
# and probe from outside.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${AGENTGATE_HEALTH_PORT:-8079} && printf 'GET /readyz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && IFS= read -r -t 4 status <&3 && [[ $status == *' 200 '* ]]"]
ENTRYPOINT ["/usr/local/bin/agentgate"]
CMD ["serve", "--config", "/etc/agentgate/agentgate.toml"]
