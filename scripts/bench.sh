#!/usr/bin/env bash
# bench.sh — run one load-generator mode against a fresh Warren stack on this machine, then tear it down.
#
# Why: benchmark numbers mean something only when the stack is known: release binaries, a database nobody else
# writes to, a queue prefix nobody else consumes, auth rate limits out of the way, quiet logs. This builds and
# starts exactly that (like scripts/run.sh, against the local RabbitMQ and PostgreSQL), runs `loadgen MODE ARGS…`
# with the pids of the stack's own processes (so the CPU and memory it reports are this stack's), and stops
# everything, whatever happens. docs/BENCHMARKS.md explains the modes and the results.
#
#   scripts/bench.sh dm --users 100 --rate 500 --duration 10
#   BENCH_API_REPLICAS=2 scripts/bench.sh group --users 100 --members 20 --rate 50 --duration 10
#   scripts/bench.sh history --messages 200000 --rate 200 --duration 10     # seeds the fresh database
#
# Environment:
#   BENCH_API_REPLICAS, BENCH_MESSAGE_SERVICE_REPLICAS, BENCH_USER_SERVICE_REPLICAS   default 1 each
#   BENCH_BASE_PORT     gateway i listens on BENCH_BASE_PORT + i - 1 (default 18080, away from `make run`)
#   BENCH_DB            reuse (and keep) this database instead of a fresh one that is dropped at the end; with
#                       `--dev-tokens` a rerun then skips every login, and `history` skips the seeding
#   BENCH_BUILD=0       skip `cargo build --release` (binaries already built)
#   BENCH_OUT           directory for the JSON reports and service logs (default .run/bench)
#   WARREN_AMQP_URL, WARREN_DATABASE_URL (its database part is replaced), and any WARREN_* setting: passed on
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="$PATH:/usr/sbin:/sbin"

log() { printf 'bench: %s\n' "$*" >&2; }
die() {
    printf 'bench: ERROR: %s\n' "$*" >&2
    exit 1
}

[[ $# -ge 1 ]] || die "usage: scripts/bench.sh MODE [loadgen options…] (modes: dm group idle storm history)"
MODE=$1
case $MODE in dm | group | idle | storm | history) ;; *) die "unknown mode $MODE" ;; esac

count() {
    local name=$1 value=${!1:-1}
    if ! [[ $value =~ ^[0-9]+$ ]] || ((value < 1 || value > 8)); then die "$name=$value: use 1 to 8"; fi
    printf '%s' "$value"
}
API_REPLICAS=$(count BENCH_API_REPLICAS)
MESSAGE_SERVICE_REPLICAS=$(count BENCH_MESSAGE_SERVICE_REPLICAS)
USER_SERVICE_REPLICAS=$(count BENCH_USER_SERVICE_REPLICAS)
BASE_PORT=${BENCH_BASE_PORT:-18080}
OUT=${BENCH_OUT:-$ROOT/.run/bench}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/warren/target}"
BIN_DIR="$CARGO_TARGET_DIR/release"

RUN_ID=$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
PREFIX="bench-$RUN_ID"
export WARREN_AMQP_URL="${WARREN_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
BASE_DB_URL="${WARREN_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/warren}"
SERVER_URL="${BASE_DB_URL%/*}"
if [[ -n ${BENCH_DB:-} ]]; then
    [[ $BENCH_DB =~ ^[a-z_][a-z0-9_]*$ ]] || die "BENCH_DB must be a plain lower-case name"
    DB=$BENCH_DB
    KEEP_DB=1
else
    DB="warren_bench_$RUN_ID"
    KEEP_DB=0
fi
DB_URL="$SERVER_URL/$DB"

# ---------------------------------------------------------------------------------------------------------------
# Teardown, whatever happens: services (TERM, then KILL after 10 s), their queues and exchanges, the database.
# ---------------------------------------------------------------------------------------------------------------
PIDS=()
declare -A NAME_OF=()
CREATED_DB=0
# shellcheck disable=SC2317 # runs from the EXIT trap
teardown() {
    local status=$? pid
    trap - EXIT INT TERM HUP
    if ((${#PIDS[@]} > 0)); then
        log "stopping ${#PIDS[@]} process(es)"
        for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
        local deadline=$((SECONDS + 10))
        for pid in "${PIDS[@]}"; do
            while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
            kill -KILL "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        done
    fi
    delete_topology || log "warning: could not delete the queues of $PREFIX"
    if ((CREATED_DB && !KEEP_DB)); then
        psql "$SERVER_URL/postgres" -w -X -q -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 ||
            log "warning: could not drop database $DB"
    fi
    exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Durable queues and exchanges named $PREFIX.* (exclusive ones went with their connections), through the
# management API when it answers, else rabbitmqctl (queues only: rabbitmqctl cannot delete exchanges).
# shellcheck disable=SC2317 # runs from the EXIT trap
delete_topology() {
    if curl -s -o /dev/null --max-time 2 -u guest:guest http://127.0.0.1:15672/api/overview; then
        PREFIX="$PREFIX" python3 - <<'PY'
import base64, json, os, urllib.parse, urllib.request
base, prefix = "http://127.0.0.1:15672", os.environ["PREFIX"] + "."
auth = {"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()}
def call(method, path):
    with urllib.request.urlopen(urllib.request.Request(base + path, method=method, headers=auth), timeout=10) as r:
        body = r.read()
    return json.loads(body) if body else None
for kind in ("queues", "exchanges"):
    for item in call("GET", f"/api/{kind}?columns=vhost,name"):
        if item["name"].startswith(prefix):
            q = lambda s: urllib.parse.quote(s, safe="")
            try:
                call("DELETE", f"/api/{kind}/{q(item['vhost'])}/{q(item['name'])}")
            except Exception:
                pass
PY
    elif command -v rabbitmqctl >/dev/null 2>&1; then
        rabbitmqctl -q list_queues name 2>/dev/null | grep "^$PREFIX\." | while read -r queue; do
            # rabbitmqctl reads stdin: without </dev/null the first call swallows the rest of the list.
            rabbitmqctl -q delete_queue -- "$queue" </dev/null >/dev/null 2>&1 || true
        done
    fi
}

# ---------------------------------------------------------------------------------------------------------------
# 1. Build, check the services, create the database
# ---------------------------------------------------------------------------------------------------------------
tcp_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }
tcp_open 127.0.0.1 5672 || die "RabbitMQ is not reachable on 127.0.0.1:5672 (scripts/ensure-services.sh starts it)"
tcp_open 127.0.0.1 5432 || die "PostgreSQL is not reachable on 127.0.0.1:5432 (scripts/ensure-services.sh starts it)"
# Without the management API the teardown can delete the run's queues but not its exchanges: say so now, not never.
tcp_open 127.0.0.1 15672 ||
    log "warning: RabbitMQ's management API (127.0.0.1:15672) is closed, so this run's exchanges $PREFIX.* will be" \
        "left behind (scripts/ensure-services.sh enables the plugin)"
for ((i = 0; i < API_REPLICAS; i++)); do
    ! tcp_open 127.0.0.1 $((BASE_PORT + i)) || die "port $((BASE_PORT + i)) is in use; set BENCH_BASE_PORT"
done

if [[ ${BENCH_BUILD:-1} != 0 ]]; then
    log "building release binaries into $CARGO_TARGET_DIR"
    cargo build --release --bins -p user-service -p message-service -p api -p loadgen >&2 || die "cargo build failed"
fi

if ! psql "$SERVER_URL/postgres" -w -X -tAq -c "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
    psql "$SERVER_URL/postgres" -w -X -q -c "CREATE DATABASE \"$DB\"" >/dev/null || die "cannot create database $DB"
    CREATED_DB=1
fi
# The server's settings that decide what a durable acknowledgement and a read cost, so that every run's output
# says what it ran on (synchronous_commit is not among them: the services set it on their own connections).
pg_settings=$(psql "$SERVER_URL/postgres" -w -X -tAq -F= -c "SELECT name, current_setting(name) FROM pg_settings
    WHERE name IN ('fsync', 'wal_sync_method', 'full_page_writes', 'autovacuum', 'shared_buffers') ORDER BY name" |
    paste -sd' ' -) || pg_settings="(cannot read them)"
log "PostgreSQL: $pg_settings; the services commit with synchronous_commit=on"
mkdir -p "$OUT/logs"
# Thousands of sockets need thousands of descriptors, in the gateways and in the load generator alike.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------------------------------------------------------------------------------------------------------------
# 2. Start the stack
# ---------------------------------------------------------------------------------------------------------------
export WARREN_ENV="${WARREN_ENV:-development}"
export WARREN_AMQP_PREFIX="$PREFIX"
export WARREN_DATABASE_URL="$DB_URL"
export WARREN_AUTH_RATE_PER_MINUTE="${WARREN_AUTH_RATE_PER_MINUTE:-1000000}"
export WARREN_AUTH_RATE_BURST="${WARREN_AUTH_RATE_BURST:-100000}"
export RUST_LOG="${BENCH_RUST_LOG:-warn}"

LOADGEN_PIDS=()
start() {
    local name=$1 binary=$2
    shift 2
    [[ -x $BIN_DIR/$binary ]] || die "$BIN_DIR/$binary was not built"
    env WARREN_INSTANCE_ID="$name" "$@" "$BIN_DIR/$binary" </dev/null >"$OUT/logs/$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    NAME_OF[$pid]=$name
}
for ((i = 1; i <= USER_SERVICE_REPLICAS; i++)); do
    start "user-service-$i" user-service
    LOADGEN_PIDS+=(--pid "user-service=${PIDS[-1]}")
done
for ((i = 1; i <= MESSAGE_SERVICE_REPLICAS; i++)); do
    start "message-service-$i" message-service
    LOADGEN_PIDS+=(--pid "message-service=${PIDS[-1]}")
done
GATEWAYS=()
for ((i = 1; i <= API_REPLICAS; i++)); do
    port=$((BASE_PORT + i - 1))
    start "api-$i" api "WARREN_HTTP_ADDR=127.0.0.1:$port"
    LOADGEN_PIDS+=(--pid "gateway=${PIDS[-1]}")
    GATEWAYS+=(--gateway "http://127.0.0.1:$port")
done

deadline=$((SECONDS + 60))
for ((i = 0; i < API_REPLICAS; i++)); do
    port=$((BASE_PORT + i))
    until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port/readyz" || true) == 200 ]]; do
        for pid in "${PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null || {
                tail -n 20 "$OUT/logs/${NAME_OF[$pid]}.log" >&2
                die "${NAME_OF[$pid]} exited during start-up"
            }
        done
        ((SECONDS < deadline)) || die "gateway on port $port not ready after 60 s (logs in $OUT/logs)"
        sleep 0.3
    done
done
log "stack up: $API_REPLICAS gateway(s), $USER_SERVICE_REPLICAS user-service(s), $MESSAGE_SERVICE_REPLICAS message-service(s); prefix $PREFIX, database $DB"

# ---------------------------------------------------------------------------------------------------------------
# 3. Run the load generator (bounded by its own limits, and by `timeout` as a backstop)
# ---------------------------------------------------------------------------------------------------------------
EXTRA=()
if [[ $MODE == history ]] && [[ " $* " != *" --database-url "* ]]; then EXTRA+=(--database-url "$DB_URL"); fi
REPORT="$OUT/$MODE-$(date +%Y%m%dT%H%M%S)-$RUN_ID.json"
status=0
timeout --signal=TERM --kill-after=10 "${BENCH_TIMEOUT_SECS:-1800}" \
    "$BIN_DIR/loadgen" "$@" "${EXTRA[@]}" "${GATEWAYS[@]}" "${LOADGEN_PIDS[@]}" \
    --pg-database "$DB" --json "$REPORT" || status=$?
for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || log "warning: ${NAME_OF[$pid]} died during the run (see $OUT/logs/${NAME_OF[$pid]}.log)"
done
[[ -f $REPORT ]] && log "report: $REPORT"
exit "$status"
