# syntax=docker/dockerfile:1
#
# One image recipe for Warren's three Rust services. Pick the service with a build target:
#
#   docker build --target user-service    -t warren/user-service .
#   docker build --target message-service -t warren/message-service .
#   docker build --target api             -t warren/api .        (the default: the last stage)
#
# docker-compose.yml builds all three from here. Dependencies are compiled in their own cached layer (cargo-chef),
# so a change to Warren's own code rebuilds only Warren's crates. The web app has its own frontend/Dockerfile.
# rust-toolchain.toml is left out of the build context (.dockerignore): RUST_VERSION below pins the same toolchain.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---- tools ------------------------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS chef
ARG CARGO_CHEF_VERSION=0.1.78
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

# ---- the dependency list: Cargo.toml files and Cargo.lock only -----------------------------------------------------
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# ---- build: dependencies first (cached while recipe.json is unchanged), then Warren itself -------------------------
FROM chef AS build
# sqlx's compile-time checked queries read the committed .sqlx/ metadata instead of a live database.
ENV SQLX_OFFLINE=true CARGO_TERM_COLOR=never
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --workspace --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bins -p user-service -p message-service -p api

# ---- runtime: a small Debian with a non-root user -----------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10001 warren; \
    useradd --system --uid 10001 --gid warren --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin warren
USER 10001:10001
ENV WARREN_ENV=production \
    WARREN_LOG_FORMAT=json \
    RUST_LOG=info
# Every service drains on SIGTERM (docker stop); give it the time it needs with stop_grace_period.
STOPSIGNAL SIGTERM

FROM runtime AS user-service
COPY --from=build /src/target/release/user-service /usr/local/bin/user-service
ENTRYPOINT ["/usr/local/bin/user-service"]

FROM runtime AS message-service
COPY --from=build /src/target/release/message-service /usr/local/bin/message-service
ENTRYPOINT ["/usr/local/bin/message-service"]

FROM runtime AS api
COPY --from=build /src/target/release/api /usr/local/bin/api
ENV WARREN_HTTP_ADDR=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/api"]
