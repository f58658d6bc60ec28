#!/usr/bin/env bash
# run.sh — run the whole Warren system on a developer machine: `make run`.
#
# Why: one command a developer can trust to build everything, start every service (with replicas, to see load
# balancing and failover), say where to point the browser, and leave nothing behind on Ctrl-C. Production runs
# through docker-compose.yml instead; this runs the same binaries against the local RabbitMQ and PostgreSQL.
#
#   USER_SERVICE_REPLICAS=1 MESSAGE_SERVICE_REPLICAS=1 API_REPLICAS=1 scripts/run.sh
#
# Gateway i listens on 127.0.0.1:$((WARREN_BASE_PORT + i - 1)) (WARREN_BASE_PORT defaults to 8080). Every process
# gets WARREN_INSTANCE_ID=<service>-<i> and logs to .run/logs/<service>-<i>.log; RUN_TAIL_LOGS=0 keeps those logs out
# of the terminal. Kill a single replica by its pid (printed at start) to watch the others take over; the rest keep
# running until Ctrl-C.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="$PATH:/usr/sbin:/sbin"

if [[ -t 1 ]]; then BOLD=$'\033[1m' RED=$'\033[1;31m' PLAIN=$'\033[0m'; else BOLD="" RED="" PLAIN=""; fi
log() { printf '%srun:%s %s\n' "$BOLD" "$PLAIN" "$*"; }
error() { printf '%srun: ERROR:%s %s\n' "$RED" "$PLAIN" "$*" >&2; }
die() {
    error "$*"
    exit 1
}

# ---------------------------------------------------------------------------------------------------------------
# Settings (development defaults; anything already in the environment wins)
# ---------------------------------------------------------------------------------------------------------------
replicas() {
    local name=$1 value=${!1:-1}
    if ! [[ $value =~ ^[0-9]+$ ]] || ((value < 1 || value > 16)); then
        die "$name=$value: use a number from 1 to 16"
    fi
    printf '%s' "$value"
}
USER_SERVICE_REPLICAS=$(replicas USER_SERVICE_REPLICAS)
MESSAGE_SERVICE_REPLICAS=$(replicas MESSAGE_SERVICE_REPLICAS)
API_REPLICAS=$(replicas API_REPLICAS)
BASE_PORT=${WARREN_BASE_PORT:-8080}
READY_TIMEOUT_SECS=${RUN_READY_TIMEOUT_SECS:-60}
STOP_TIMEOUT_SECS=10

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/warren/target}"
export WARREN_ENV="${WARREN_ENV:-development}"
export WARREN_AMQP_URL="${WARREN_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export WARREN_DATABASE_URL="${WARREN_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/warren}"
export WARREN_LOG_FORMAT="${WARREN_LOG_FORMAT:-text}"
export RUST_LOG="${RUST_LOG:-info}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
if [[ -z ${WARREN_ALLOWED_ORIGINS:-} ]]; then
    # Every local gateway, plus the Vite dev server (5173) for front-end work with hot reload.
    origins=()
    for ((i = 0; i < API_REPLICAS; i++)); do
        origins+=("http://127.0.0.1:$((BASE_PORT + i))" "http://localhost:$((BASE_PORT + i))")
    done
    origins+=("http://127.0.0.1:5173" "http://localhost:5173")
    WARREN_ALLOWED_ORIGINS=$(IFS=,; printf '%s' "${origins[*]}")
fi
export WARREN_ALLOWED_ORIGINS

LOG_DIR="$ROOT/.run/logs"
BIN_DIR="$CARGO_TARGET_DIR/release"

# ---------------------------------------------------------------------------------------------------------------
# Children: each started with `setsid` in its own session and process group (pgid = pid), so that stopping one
# stops everything it started (cargo's rustc processes included), and a Ctrl-C in the terminal reaches this script,
# which stops the children in order, rather than hitting them all at once. SIGTERM, then SIGKILL after
# STOP_TIMEOUT_SECS.
# ---------------------------------------------------------------------------------------------------------------
declare -A NAME_OF=()   # pid -> name of every service process still tracked
SERVICE_PIDS=()         # services in start order (gateways last), for the table printed at start
HELPER_PIDS=()          # cargo / npm while they run, and the log tails

alive() { kill -0 "$1" 2>/dev/null; }

# terminate SECONDS PID…: SIGTERM to each pid's process group, SIGKILL to what is still alive after SECONDS.
terminate() {
    local secs=$1 pid left
    shift
    for pid in "$@"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
    local deadline=$((SECONDS + secs))
    while :; do
        left=()
        for pid in "$@"; do alive "$pid" && left+=("$pid"); done
        ((${#left[@]} > 0)) || break
        if ((SECONDS >= deadline)); then
            for pid in "${left[@]}"; do
                log "${NAME_OF[$pid]:-pid $pid} did not stop within ${secs}s: SIGKILL"
                kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            done
            break
        fi
        sleep 0.2
    done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

stop_all() {
    local services=() helpers=() pid i
    # Gateways first in the list (they close their WebSockets), then the services. Only children not yet waited
    # for: a reaped child's pid may belong to someone else by now.
    for ((i = ${#SERVICE_PIDS[@]} - 1; i >= 0; i--)); do
        pid=${SERVICE_PIDS[i]}
        [[ -n ${NAME_OF[$pid]:-} ]] && alive "$pid" && services+=("$pid")
    done
    for pid in "${HELPER_PIDS[@]}"; do alive "$pid" && helpers+=("$pid"); done
    ((${#services[@]} + ${#helpers[@]} > 0)) || return 0

    if ((${#services[@]} > 0)); then
        log "stopping ${#services[@]} replica(s)…"
        terminate "$STOP_TIMEOUT_SECS" "${services[@]}"
    fi
    # cargo or npm when interrupted mid-build; the log tails, which have printed the replicas' last lines by now.
    sleep 0.3
    if ((${#helpers[@]} > 0)); then terminate 2 "${helpers[@]}"; fi
    log "all stopped"
}

on_exit() {
    local status=$?
    trap - EXIT INT TERM HUP
    stop_all
    exit "$status"
}
on_signal() {
    trap - INT TERM HUP
    printf '\n'
    log "received SIG$1"
    exit 0 # runs on_exit
}
trap on_exit EXIT
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
trap 'on_signal HUP' HUP

# Runs a build step as a tracked child, so Ctrl-C or SIGTERM during a long build stops it too.
run_step() {
    setsid "$@" &
    local pid=$!
    HELPER_PIDS+=("$pid")
    local status=0
    wait "$pid" || status=$?
    local kept=() p
    for p in "${HELPER_PIDS[@]}"; do [[ $p == "$pid" ]] || kept+=("$p"); done
    HELPER_PIDS=("${kept[@]}")
    return "$status"
}

# ---------------------------------------------------------------------------------------------------------------
# 1. RabbitMQ and PostgreSQL must be reachable
# ---------------------------------------------------------------------------------------------------------------
# host and port of a URL such as scheme://user:pass@host:port/path (IPv6 hosts in brackets).
url_host_port() {
    local url=$1 default_port=$2 rest host port
    rest=${url#*://}
    rest=${rest%%/*}
    rest=${rest%%\?*}
    rest=${rest##*@}
    if [[ $rest =~ ^\[([^]]+)\](:([0-9]+))?$ ]]; then
        host=${BASH_REMATCH[1]} port=${BASH_REMATCH[3]}
    else
        host=${rest%%:*}
        port=${rest#"$host"}
        port=${port#:}
    fi
    printf '%s %s\n' "${host:-127.0.0.1}" "${port:-$default_port}"
}
tcp_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

services_help() {
    cat >&2 <<EOF

  To start them on this machine (Debian; installs them when missing, as root):
      scripts/ensure-services.sh
  or start them yourself:
      pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql | head -1) main start
      rabbitmq-server -detached
  or point Warren elsewhere with WARREN_AMQP_URL / WARREN_DATABASE_URL.
EOF
}

read -r amqp_host amqp_port < <(url_host_port "$WARREN_AMQP_URL" 5672)
read -r pg_host pg_port < <(url_host_port "$WARREN_DATABASE_URL" 5432)
missing=()
tcp_open "$amqp_host" "$amqp_port" || missing+=("RabbitMQ at $amqp_host:$amqp_port (WARREN_AMQP_URL)")
tcp_open "$pg_host" "$pg_port" || missing+=("PostgreSQL at $pg_host:$pg_port (WARREN_DATABASE_URL)")
if ((${#missing[@]} > 0)); then
    for what in "${missing[@]}"; do error "not reachable: $what"; done
    services_help
    exit 1
fi
if command -v psql >/dev/null 2>&1 && ! err=$(psql "$WARREN_DATABASE_URL" -w -X -q -c 'select 1' 2>&1 >/dev/null); then
    error "PostgreSQL answers but refuses WARREN_DATABASE_URL: $err"
    echo "  scripts/ensure-services.sh creates the database 'warren' and trusts local connections." >&2
    exit 1
fi
# The management UI shows exchanges, queues and rates. Best effort: it needs root (or the Erlang cookie).
if [[ $amqp_host == 127.0.0.1 || $amqp_host == localhost ]] && ! tcp_open 127.0.0.1 15672 &&
    command -v rabbitmq-plugins >/dev/null 2>&1; then
    rabbitmq-plugins -q enable rabbitmq_management </dev/null >/dev/null 2>&1 || true
fi
log "RabbitMQ $amqp_host:$amqp_port and PostgreSQL $pg_host:$pg_port are reachable"

for ((i = 0; i < API_REPLICAS; i++)); do
    port=$((BASE_PORT + i))
    ! tcp_open 127.0.0.1 "$port" || die "port $port is already in use (another \`make run\`?); set WARREN_BASE_PORT"
done

# ---------------------------------------------------------------------------------------------------------------
# 2. Build
# ---------------------------------------------------------------------------------------------------------------
log "building the services (release) into $CARGO_TARGET_DIR"
run_step cargo build --release --bins -p user-service -p message-service -p api || die "cargo build failed"

WEB_DIR=""
if [[ -f frontend/package.json ]]; then
    if ! command -v npm >/dev/null 2>&1; then
        log "note: npm not found; skipping the web app (install Node.js and npm to build it)"
    else
        log "building the web app (frontend/)"
        if [[ ! -d frontend/node_modules ]]; then
            if [[ -f frontend/package-lock.json ]]; then
                run_step npm --prefix frontend ci || die "npm ci failed"
            else
                run_step npm --prefix frontend install || die "npm install failed"
            fi
        fi
        run_step npm --prefix frontend run build || die "npm run build failed"
    fi
else
    log "note: no frontend/package.json yet; skipping the web app (the API runs alone)"
fi
[[ -d frontend/dist ]] && WEB_DIR="$ROOT/frontend/dist"

# ---------------------------------------------------------------------------------------------------------------
# 3. Start every replica
# ---------------------------------------------------------------------------------------------------------------
mkdir -p "$LOG_DIR"

# start NAME BINARY [VAR=value…]: the binary runs with the extra environment, its output in .run/logs/NAME.log.
start() {
    local name=$1 binary=$2
    shift 2
    [[ -x $BIN_DIR/$binary ]] || die "$BIN_DIR/$binary was not built"
    : >"$LOG_DIR/$name.log"
    setsid env WARREN_INSTANCE_ID="$name" "$@" "$BIN_DIR/$binary" </dev/null >>"$LOG_DIR/$name.log" 2>&1 &
    local pid=$!
    NAME_OF[$pid]=$name
    SERVICE_PIDS+=("$pid")
    if [[ ${RUN_TAIL_LOGS:-1} != 0 ]]; then
        # The log in the terminal, each line prefixed with its replica's name; ends when the replica does.
        # shellcheck disable=SC2016 # expanded by the inner bash
        setsid bash -c 'tail -n +1 -F --pid="$1" "$2" 2>/dev/null | sed -u "s/^/[$3] /"' tail-log \
            "$pid" "$LOG_DIR/$name.log" "$name" &
        HELPER_PIDS+=("$!")
    fi
}

for ((i = 1; i <= USER_SERVICE_REPLICAS; i++)); do start "user-service-$i" user-service; done
for ((i = 1; i <= MESSAGE_SERVICE_REPLICAS; i++)); do start "message-service-$i" message-service; done
for ((i = 1; i <= API_REPLICAS; i++)); do
    start "api-$i" api "WARREN_HTTP_ADDR=127.0.0.1:$((BASE_PORT + i - 1))" ${WEB_DIR:+"WARREN_WEB_DIR=$WEB_DIR"}
done

# ---------------------------------------------------------------------------------------------------------------
# 4. Wait until every gateway is ready
# ---------------------------------------------------------------------------------------------------------------
http_status() {
    if command -v curl >/dev/null 2>&1; then
        curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$1$2" || true
    else
        timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 && printf 'GET $2 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 &&
            head -1 <&3 | cut -d' ' -f2" 2>/dev/null || true
    fi
}

check_children() {
    local pid
    for pid in "${SERVICE_PIDS[@]}"; do
        if ! alive "$pid"; then
            local name=${NAME_OF[$pid]}
            error "$name exited during start-up; the end of .run/logs/$name.log:"
            tail -n 20 "$LOG_DIR/$name.log" >&2 || true
            exit 1
        fi
    done
}

deadline=$((SECONDS + READY_TIMEOUT_SECS))
for ((i = 0; i < API_REPLICAS; i++)); do
    port=$((BASE_PORT + i))
    until [[ $(http_status "$port" /readyz) == 200 ]]; do
        check_children
        ((SECONDS < deadline)) ||
            die "api-$((i + 1)) is not ready after ${READY_TIMEOUT_SECS}s (GET http://127.0.0.1:$port/readyz); see .run/logs/"
        sleep 0.3
    done
done

printf '\n'
log "Warren is running:"
for pid in "${SERVICE_PIDS[@]}"; do printf '      %-20s pid %-8s .run/logs/%s.log\n' "${NAME_OF[$pid]}" "$pid" "${NAME_OF[$pid]}"; done
for ((i = 0; i < API_REPLICAS; i++)); do
    if [[ -n $WEB_DIR ]]; then
        log "app:            http://127.0.0.1:$((BASE_PORT + i))/"
    else
        log "API:            http://127.0.0.1:$((BASE_PORT + i))/  (no web app built yet)"
    fi
done
if tcp_open "$amqp_host" 15672; then
    log "RabbitMQ UI:    http://$amqp_host:15672  (guest / guest)"
else
    log "RabbitMQ UI:    not enabled (rabbitmq-plugins enable rabbitmq_management, as root)"
fi
log "Ctrl-C stops everything."
printf '\n'

# ---------------------------------------------------------------------------------------------------------------
# 5. Run until Ctrl-C / SIGTERM, or until every replica has exited. A replica that exits is reported, and the others
#    keep running: killing one on purpose is how failover is tried out.
# ---------------------------------------------------------------------------------------------------------------
while ((${#NAME_OF[@]} > 0)); do
    exited=""
    status=0
    wait -n -p exited "${!NAME_OF[@]}" || status=$?
    [[ -n $exited ]] || continue
    log "${NAME_OF[$exited]} (pid $exited) exited with status $status; see .run/logs/${NAME_OF[$exited]}.log"
    unset "NAME_OF[$exited]"
done
log "every replica has exited"
