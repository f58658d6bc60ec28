#!/usr/bin/env bash
# e2e.sh — the web app end to end: real headless Chromium and Firefox against the real gateway, services, RabbitMQ
# and PostgreSQL (`make test-e2e`).
#
#   1. builds the web app (npm ci when needed, npm run build) and the Rust binaries (debug);
#   2. creates a fresh database warren_test_e2e_<random> and picks a fresh AMQP prefix test-e2e-<random> and a
#      free port;
#   3. runs frontend/e2e/ with node's test runner, one file after the other: the Chromium scenarios
#      (chat.e2e.test.mjs), then the Firefox smoke run (firefox.e2e.test.mjs). The tests start the user-service,
#      the message-service and the gateway themselves (frontend/e2e/stack.mjs), so they can SIGKILL the gateway and
#      start it again on the same port mid-test;
#   4. always tears down, whatever happened: stops every process the run started, drops the database, deletes the
#      prefix's queues and exchanges.
#
# Needs RabbitMQ and PostgreSQL (scripts/ensure-services.sh), Node.js and npm, Chromium (scripts/ensure-browser.sh),
# and Firefox with geckodriver (scripts/ensure-firefox.sh). Processes log to .run/e2e/<run>/; screenshots go to
# frontend/e2e/screenshots/.
#
# Environment:
#   WARREN_E2E_CHROMIUM       the browser (default /usr/bin/chromium)
#   WARREN_E2E_FIREFOX        Firefox (default /usr/bin/firefox-esr)
#   WARREN_E2E_GECKODRIVER    its WebDriver (default ~/.cache/warren/bin/geckodriver)
#   WARREN_E2E_TIMEOUT_MS     the wait for each expectation in the tests (default 20000)
#   WARREN_E2E_KEEP_LOGS=1    keep .run/e2e/<run>/ after a successful run (a failed run always keeps it)
#   WARREN_E2E_SKIP_BUILD=1   use the existing builds (frontend/dist and the debug binaries)
#   WARREN_AMQP_URL, WARREN_E2E_PG_URL (admin connection, default postgres://postgres@127.0.0.1:5432/postgres),
#   WARREN_RABBITMQ_MANAGEMENT_URL (default http://127.0.0.1:15672), RABBITMQ_MANAGEMENT_USER / _PASS
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="$PATH:/usr/sbin:/sbin"

if [[ -t 1 ]]; then BOLD=$'\033[1m' RED=$'\033[1;31m' PLAIN=$'\033[0m'; else BOLD="" RED="" PLAIN=""; fi
log() { printf '%se2e:%s %s\n' "$BOLD" "$PLAIN" "$*"; }
warn() { printf '%se2e: warning:%s %s\n' "$RED" "$PLAIN" "$*" >&2; }
die() {
    printf '%se2e: ERROR:%s %s\n' "$RED" "$PLAIN" "$*" >&2
    exit 1
}

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/warren/target}"
export WARREN_AMQP_URL="${WARREN_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
PG_ADMIN_URL="${WARREN_E2E_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
MGMT_URL="${WARREN_RABBITMQ_MANAGEMENT_URL:-http://127.0.0.1:15672}"
MGMT_USER="${RABBITMQ_MANAGEMENT_USER:-guest}"
MGMT_PASS="${RABBITMQ_MANAGEMENT_PASS:-guest}"
CHROMIUM="${WARREN_E2E_CHROMIUM:-/usr/bin/chromium}"
FIREFOX="${WARREN_E2E_FIREFOX:-/usr/bin/firefox-esr}"
GECKODRIVER="${WARREN_E2E_GECKODRIVER:-$HOME/.cache/warren/bin/geckodriver}"
STARTED=$SECONDS

# ---------------------------------------------------------------------------------------------------------------
# 0. What the run needs
# ---------------------------------------------------------------------------------------------------------------
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    die "node and npm are required (Node.js ^20.19 or >= 22.12): install them first"
fi
command -v psql >/dev/null 2>&1 || die "psql is required to create the test database (Debian: postgresql-client)"
command -v cargo >/dev/null 2>&1 || die "cargo is required to build the services (https://rustup.rs)"
[[ -x $CHROMIUM ]] || die "no Chromium at $CHROMIUM: run scripts/ensure-browser.sh (or set WARREN_E2E_CHROMIUM)"
[[ -x $FIREFOX ]] || die "no Firefox at $FIREFOX: run scripts/ensure-firefox.sh (or set WARREN_E2E_FIREFOX)"
[[ -x $GECKODRIVER ]] ||
    die "no geckodriver at $GECKODRIVER: run scripts/ensure-firefox.sh (or set WARREN_E2E_GECKODRIVER)"
tcp_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }
tcp_open 127.0.0.1 5672 || [[ $WARREN_AMQP_URL != *127.0.0.1:5672* ]] ||
    die "RabbitMQ is not reachable on 127.0.0.1:5672: run scripts/ensure-services.sh"
psql "$PG_ADMIN_URL" -w -X -q -c 'SELECT 1' >/dev/null 2>&1 ||
    die "PostgreSQL refuses $PG_ADMIN_URL: run scripts/ensure-services.sh (or set WARREN_E2E_PG_URL)"

# ---------------------------------------------------------------------------------------------------------------
# 1. Build (skipped with WARREN_E2E_SKIP_BUILD=1)
# ---------------------------------------------------------------------------------------------------------------
if [[ ${WARREN_E2E_SKIP_BUILD:-0} != 1 ]]; then
    scripts/frontend-deps.sh
    log "building the web app"
    (cd frontend && npm run build --silent >/dev/null) || die "npm run build failed (run it in frontend/ to see why)"
    log "building the services (debug) into $CARGO_TARGET_DIR"
    cargo build --quiet --bins -p user-service -p message-service -p api || die "cargo build failed"
else
    [[ -d frontend/node_modules/playwright-core && -d frontend/node_modules/selenium-webdriver ]] ||
        die "frontend/node_modules is not installed (unset WARREN_E2E_SKIP_BUILD)"
fi
BIN_DIR="$CARGO_TARGET_DIR/debug"
for binary in user-service message-service api; do
    [[ -x $BIN_DIR/$binary ]] || die "$BIN_DIR/$binary is missing (unset WARREN_E2E_SKIP_BUILD)"
done
[[ -f frontend/dist/index.html ]] || die "frontend/dist is missing (unset WARREN_E2E_SKIP_BUILD)"
log "built in $((SECONDS - STARTED))s"

# ---------------------------------------------------------------------------------------------------------------
# 2. A fresh database, AMQP prefix and port; teardown registered before anything is created
# ---------------------------------------------------------------------------------------------------------------
RUN_ID=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
DB="warren_test_e2e_$RUN_ID"
PREFIX="test-e2e-$RUN_ID"
RUN_DIR="$ROOT/.run/e2e/$RUN_ID"
TEST_PID=""
DB_CREATED=0

# The teardown's helpers run from the EXIT trap, which shellcheck cannot follow.
# shellcheck disable=SC2317
# Every queue and exchange named <prefix>.* (through the management API; rabbitmqctl can delete only queues).
delete_amqp_prefix() {
    if command -v python3 >/dev/null 2>&1 && command -v curl >/dev/null 2>&1 &&
        curl -fsS -o /dev/null --max-time 3 -u "$MGMT_USER:$MGMT_PASS" "$MGMT_URL/api/overview" 2>/dev/null; then
        PREFIX="$PREFIX" MGMT_URL="$MGMT_URL" MGMT_USER="$MGMT_USER" MGMT_PASS="$MGMT_PASS" python3 - <<'PY'
import base64, json, os, sys, urllib.error, urllib.parse, urllib.request

base = os.environ["MGMT_URL"].rstrip("/")
prefix = os.environ["PREFIX"] + "."
token = base64.b64encode(f'{os.environ["MGMT_USER"]}:{os.environ["MGMT_PASS"]}'.encode()).decode()


def call(method, path):
    request = urllib.request.Request(base + path, method=method, headers={"Authorization": "Basic " + token})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else None


deleted, failed = 0, 0
for kind in ("queue", "exchange"):
    for item in call("GET", f"/api/{kind}s?columns=vhost,name"):
        if not item["name"].startswith(prefix):
            continue
        vhost, name = (urllib.parse.quote(item[k], safe="") for k in ("vhost", "name"))
        try:
            call("DELETE", f"/api/{kind}s/{vhost}/{name}")
            deleted += 1
        except urllib.error.HTTPError as e:
            if e.code != 404:
                failed += 1
                print(f"e2e: warning: could not delete {kind} {item['name']!r}: HTTP {e.code}", file=sys.stderr)
print(f"e2e: deleted {deleted} queue(s) and exchange(s) named {prefix}*")
sys.exit(1 if failed else 0)
PY
    elif command -v rabbitmqctl >/dev/null 2>&1; then
        local name
        rabbitmqctl list_queues -q --no-table-headers name </dev/null 2>/dev/null | while read -r name; do
            [[ $name == "$PREFIX".* ]] && rabbitmqctl -q delete_queue -- "$name" </dev/null >/dev/null 2>&1
        done
        warn "RabbitMQ management API not reachable: deleted the queues only; scripts/sweep-test-leftovers.sh can finish"
    else
        warn "neither the RabbitMQ management API nor rabbitmqctl: $PREFIX.* left behind"
        return 1
    fi
}

# shellcheck disable=SC2317
teardown() {
    local status=$?
    trap - EXIT INT TERM HUP
    set +e
    if [[ -n $TEST_PID ]] && kill -0 "$TEST_PID" 2>/dev/null; then
        # The test runner, the services it started, geckodriver and Firefox share its process group (Playwright
        # starts Chromium in a group of its own and closes it when the runner is told to stop).
        kill -TERM -- "-$TEST_PID" 2>/dev/null
        for _ in $(seq 1 50); do kill -0 "$TEST_PID" 2>/dev/null || break; sleep 0.2; done
    fi
    # Whatever of the group is still alive (something that ignored SIGTERM, or outlived the runner) gets SIGKILL.
    [[ -n $TEST_PID ]] && kill -KILL -- "-$TEST_PID" 2>/dev/null
    if ((DB_CREATED)); then
        psql "$PG_ADMIN_URL" -w -X -q -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null ||
            warn "could not drop database $DB (scripts/sweep-test-leftovers.sh will)"
    fi
    delete_amqp_prefix || warn "could not delete every $PREFIX.* object (scripts/sweep-test-leftovers.sh will)"
    if ((status == 0)) && [[ ${WARREN_E2E_KEEP_LOGS:-0} != 1 ]]; then
        rm -rf "$RUN_DIR"
        rmdir "$ROOT/.run/e2e" 2>/dev/null
    elif [[ -d $RUN_DIR ]]; then
        log "logs kept in ${RUN_DIR#"$ROOT"/}"
    fi
    log "$([[ $status == 0 ]] && echo passed || echo "FAILED (status $status)") in $((SECONDS - STARTED))s"
    exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

mkdir -p "$RUN_DIR"
psql "$PG_ADMIN_URL" -w -X -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$DB\"" >/dev/null || die "could not create $DB"
DB_CREATED=1
PORT=$(node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });')
URL="http://127.0.0.1:$PORT"
log "database $DB, AMQP prefix $PREFIX, gateway $URL"

# ---------------------------------------------------------------------------------------------------------------
# 3. The tests (in their own process group, so the teardown reaches everything they started)
# ---------------------------------------------------------------------------------------------------------------
db_base="${PG_ADMIN_URL%/*}"
export WARREN_DATABASE_URL="$db_base/$DB"
export WARREN_AMQP_PREFIX="$PREFIX"
export WARREN_ENV=development
export WARREN_LOG_FORMAT=text
export NO_COLOR=1
export RUST_LOG="${RUST_LOG:-info}"
export WARREN_E2E_URL="$URL"
export WARREN_E2E_BIN_DIR="$BIN_DIR"
export WARREN_E2E_LOG_DIR="$RUN_DIR"
export WARREN_E2E_CHROMIUM="$CHROMIUM"
export WARREN_E2E_FIREFOX="$FIREFOX"
export WARREN_E2E_GECKODRIVER="$GECKODRIVER"
export WARREN_WEB_DIR="$ROOT/frontend/dist"

cd frontend
# One file at a time (both start the stack on the same port), Chromium first; both run even if one fails.
setsid node --test --test-concurrency=1 --test-reporter=spec e2e/chat.e2e.test.mjs e2e/firefox.e2e.test.mjs &
TEST_PID=$!
status=0
wait "$TEST_PID" || status=$?
if ((status != 0)); then
    warn "the end-to-end tests failed; screenshots in frontend/e2e/screenshots/, logs in ${RUN_DIR#"$ROOT"/}"
fi
exit "$status"
