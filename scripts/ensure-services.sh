#!/usr/bin/env bash
# ensure-services.sh — make sure the RabbitMQ and PostgreSQL that Warren's tests and `make run` need are installed,
# running and reachable on 127.0.0.1.
#
# Why: the test suite talks to the real broker and database (no mocks), and CI runs on a machine where they were
# started before the session but may since have stopped. This script is idempotent: when both already run it is a
# fast no-op (well under 2 s); on a fresh Debian 12 machine (as root) it installs, starts and configures them.
#
#   PostgreSQL: 127.0.0.1:5432, user `postgres` without password (trust on loopback), database `warren`.
#   RabbitMQ:   127.0.0.1:5672 (guest/guest), management UI on 127.0.0.1:15672 when the plugin can be enabled.
#
# No systemd here: services are started directly (pg_ctlcluster, rabbitmq-server -detached).
# Environment: WARREN_SERVICES_WAIT_SECS (default 60) bounds every wait.
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"
WAIT_SECS="${WARREN_SERVICES_WAIT_SECS:-60}"

TAG=ensure-services
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# True when something accepts TCP connections on host $1, port $2 (bash's /dev/tcp, bounded by `timeout`).
tcp_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

# Runs "$@" until it succeeds, for at most $2 seconds; $1 names what we wait for, $3 says where to look on failure.
wait_for() {
    local what=$1 secs=$2 hint=$3
    shift 3
    local deadline=$((SECONDS + secs))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            die "$what is not reachable after ${secs}s. $hint"
        fi
        sleep 0.5
    done
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "cannot install $* : apt-get is missing; install it yourself"
    if ((APT_UPDATED == 0)); then
        log "apt-get update"
        as_root apt-get update -q >/dev/null || die "apt-get update failed"
        APT_UPDATED=1
    fi
    log "installing $*"
    local output
    if ! output=$(as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" 2>&1); then
        printf '%s\n' "$output" >&2
        die "apt-get install $* failed"
    fi
}

# ---------------------------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------------------------
PG=(-h 127.0.0.1 -p 5432 -U postgres -w)
pg_ready() { pg_isready -q -h 127.0.0.1 -p 5432; }
pg_query() { psql "${PG[@]}" -d postgres -X -A -t -q -v ON_ERROR_STOP=1 -c "$1"; }

pg_cluster_version() {
    # The first configured cluster; Debian 12 ships PostgreSQL 15.
    local version
    # shellcheck disable=SC2012  # version directories are plain numbers
    version=$(ls /etc/postgresql 2>/dev/null | head -1 || true)
    if [[ -z $version ]]; then
        # shellcheck disable=SC2012
        version=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -1 || true)
        [[ -n $version ]] || die "PostgreSQL is installed but no server version is under /usr/lib/postgresql"
        log "creating PostgreSQL $version cluster 'main'" >&2
        as_root pg_createcluster "$version" main >&2
    fi
    printf '%s\n' "$version"
}

ensure_postgres() {
    if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || ! command -v pg_ctlcluster >/dev/null ||
        ! command -v psql >/dev/null; then
        apt_install postgresql postgresql-client
    fi

    local version
    if ! pg_ready; then
        version=$(pg_cluster_version)
        log "starting PostgreSQL $version/main"
        # "already running" (still starting up) is fine: the wait below decides.
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start ||
            log "pg_ctlcluster start returned an error; waiting for the server anyway"
        wait_for "PostgreSQL on 127.0.0.1:5432" "$WAIT_SECS" \
            "Check /var/log/postgresql/postgresql-$version-main.log, and that pg_lsclusters shows port 5432." pg_ready
    fi

    local err
    if ! err=$(pg_query 'select 1' 2>&1 >/dev/null); then
        if [[ $err == *authentication* || $err == *password* || $err == *pg_hba.conf* ]]; then
            trust_loopback "$err"
        else
            die "cannot query PostgreSQL as postgres@127.0.0.1: $err"
        fi
    fi

    if [[ -z $(pg_query "select 1 from pg_database where datname = 'warren'") ]]; then
        log "creating database warren"
        # A concurrent creator may win the race; only fail if the database is still missing afterwards.
        createdb "${PG[@]}" warren 2>/dev/null ||
            [[ -n $(pg_query "select 1 from pg_database where datname = 'warren'") ]] ||
            die "could not create database warren"
    fi
    log "PostgreSQL ready: postgres://postgres@127.0.0.1:5432/warren"
}

# A fresh apt install authenticates TCP clients with scram (and local ones with peer). Warren's development and CI
# defaults connect as `postgres` over 127.0.0.1 without a password, so trust loopback connections. This is for a
# local development or CI machine only: never do this on a server reachable by others.
trust_loopback() {
    local version hba marker='# warren: trust loopback for local development/CI (scripts/ensure-services.sh)'
    version=$(pg_cluster_version)
    hba="/etc/postgresql/$version/main/pg_hba.conf"
    [[ -f $hba ]] || die "PostgreSQL refused postgres@127.0.0.1 ($1) and $hba does not exist"
    if grep -qF "$marker" "$hba"; then
        die "PostgreSQL refuses postgres@127.0.0.1 although $hba already trusts loopback: $1"
    fi
    log "PostgreSQL asks for a password on 127.0.0.1; trusting loopback connections in $hba (local dev/CI only)"
    # pg_hba.conf is first-match, so the trust lines go at the top.
    local tmp
    tmp=$(mktemp)
    {
        printf '%s\n' "$marker"
        printf 'host    all    all    127.0.0.1/32    trust\n'
        printf 'host    all    all    ::1/128         trust\n'
        cat "$hba"
    } >"$tmp"
    as_root cp "$tmp" "$hba"
    rm -f "$tmp"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
    local deadline=$((SECONDS + 10))
    until pg_query 'select 1' >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "PostgreSQL still refuses postgres@127.0.0.1 after trusting loopback in $hba"
        sleep 0.3
    done
}

# ---------------------------------------------------------------------------------------------------------------
# RabbitMQ
# ---------------------------------------------------------------------------------------------------------------
amqp_open() { tcp_open 127.0.0.1 5672; }
management_open() { tcp_open 127.0.0.1 15672; }

ensure_rabbitmq() {
    if ! command -v rabbitmq-server >/dev/null || ! command -v rabbitmqctl >/dev/null; then
        apt_install rabbitmq-server
    fi

    if ! amqp_open; then
        # The node may be booting already (its listener opens last); only start it when it does not answer.
        if ! as_root rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
            log "starting RabbitMQ"
            as_root rabbitmq-server -detached || log "rabbitmq-server -detached returned an error; waiting anyway"
        fi
        wait_for "RabbitMQ on 127.0.0.1:5672" "$WAIT_SECS" "Check /var/log/rabbitmq/ (rabbit@*.log)" amqp_open
    fi

    if management_open; then
        log "RabbitMQ ready: amqp://guest:guest@127.0.0.1:5672 (management UI http://127.0.0.1:15672)"
        return
    fi
    # Operators and developers watch queues in the management UI; the sweep of test leftovers uses its HTTP API.
    # Enabling is best effort: without it everything else still works. The UI listens on loopback only, for this
    # node now (application env) and for later starts (rabbitmq.conf), unless rabbitmq.conf already says otherwise.
    local conf=/etc/rabbitmq/rabbitmq.conf loopback_conf=0
    if [[ -d /etc/rabbitmq ]] && ! grep -qs '^management\.tcp\.' "$conf"; then
        loopback_conf=1
        as_root rabbitmqctl -q eval \
            'application:set_env(rabbitmq_management, tcp_config, [{ip, "127.0.0.1"}, {port, 15672}]).' \
            </dev/null >/dev/null 2>&1 || true
    fi
    if command -v rabbitmq-plugins >/dev/null && as_root rabbitmq-plugins -q enable rabbitmq_management >/dev/null 2>&1; then
        # Only once the plugin is enabled: RabbitMQ refuses to boot with a setting of a plugin it does not load.
        if ((loopback_conf)); then
            printf '# warren (scripts/ensure-services.sh): management UI on loopback only\nmanagement.tcp.ip = 127.0.0.1\n' |
                as_root tee -a "$conf" >/dev/null || true
        fi
        local deadline=$((SECONDS + 30))
        until management_open; do
            if ((SECONDS >= deadline)); then
                log "warning: rabbitmq_management is enabled but 127.0.0.1:15672 does not answer yet"
                break
            fi
            sleep 0.5
        done
    else
        log "warning: could not enable rabbitmq_management (no management UI; the test sweep falls back to rabbitmqctl)"
    fi
    if management_open; then
        log "RabbitMQ ready: amqp://guest:guest@127.0.0.1:5672 (management UI http://127.0.0.1:15672)"
    else
        log "RabbitMQ ready: amqp://guest:guest@127.0.0.1:5672 (no management UI)"
    fi
}

ensure_postgres
ensure_rabbitmq
