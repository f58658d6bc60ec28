#!/usr/bin/env bash
# sweep-test-leftovers.sh — delete what crashed or killed test runs left behind on the local broker and database.
#
# Why: every test declares its RabbitMQ topology under its own prefix `test-<32 hex>` and creates its own database
# `warren_test_<32 hex>`, and removes them when it ends. A test that panics mid-way, or a run killed with Ctrl-C,
# leaves durable queues, exchanges and databases that pile up run after run. `make test` runs this first.
#
# Safe beside a test run in progress (another engineer's, or a concurrent CI job): a prefix with any queue that has
# consumers or is exclusive belongs to a live test and is skipped whole, and a database with open connections is
# skipped. Fast when there is nothing to sweep. Failures are warnings: leftovers
# are untidy, not a reason to stop the test suite.
#
# Environment:
#   WARREN_RABBITMQ_MANAGEMENT_URL   default http://127.0.0.1:15672 (used for queues and exchanges when it answers)
#   RABBITMQ_MANAGEMENT_USER / _PASS default guest / guest
#   WARREN_SWEEP_PG_URL              default postgres://postgres@127.0.0.1:5432/postgres
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"
MGMT_URL="${WARREN_RABBITMQ_MANAGEMENT_URL:-http://127.0.0.1:15672}"
MGMT_USER="${RABBITMQ_MANAGEMENT_USER:-guest}"
MGMT_PASS="${RABBITMQ_MANAGEMENT_PASS:-guest}"
PG_URL="${WARREN_SWEEP_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

log() { printf 'sweep: %s\n' "$*"; }
warn() { printf 'sweep: warning: %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------------------------------
# RabbitMQ through the management HTTP API: the only way to delete exchanges without a client library, and ~100x
# faster per object than rabbitmqctl. Names are URL-encoded (vhost `/` becomes %2F).
# ---------------------------------------------------------------------------------------------------------------
sweep_rabbitmq_api() {
    MGMT_URL="$MGMT_URL" MGMT_USER="$MGMT_USER" MGMT_PASS="$MGMT_PASS" python3 - <<'PY'
import base64, json, os, sys, urllib.error, urllib.parse, urllib.request

base = os.environ["MGMT_URL"].rstrip("/")
token = base64.b64encode(f'{os.environ["MGMT_USER"]}:{os.environ["MGMT_PASS"]}'.encode()).decode()


def call(method, path):
    request = urllib.request.Request(base + path, method=method, headers={"Authorization": "Basic " + token})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else None


def quote(part):
    return urllib.parse.quote(part, safe="")


def prefix(name):
    return name.split(".", 1)[0]


queues = [q for q in call("GET", "/api/queues?columns=vhost,name,consumers,exclusive") if q["name"].startswith("test-")]
exchanges = [e for e in call("GET", "/api/exchanges?columns=vhost,name") if e["name"].startswith("test-")]
live = {(q["vhost"], prefix(q["name"])) for q in queues if q.get("consumers") or q.get("exclusive")}

deleted = {"queue": 0, "exchange": 0}
failed = 0
# Queues: no if-unused (quorum queues reject it with 400); the live-prefix check above is the guard.
# Exchanges go after their queues, so only an exchange something else still uses is kept.
for kind, items, query in (("queue", queues, ""), ("exchange", exchanges, "?if-unused=true")):
    for item in items:
        if (item["vhost"], prefix(item["name"])) in live:
            continue
        try:
            call("DELETE", f"/api/{kind}s/{quote(item['vhost'])}/{quote(item['name'])}{query}")
            deleted[kind] += 1
        except urllib.error.HTTPError as e:
            if e.code != 404:  # 404: gone already (its test cleaned up meanwhile)
                failed += 1
                print(f"sweep: warning: could not delete {kind} {item['name']!r}: HTTP {e.code}", file=sys.stderr)

skipped = len(live)
print(
    f"sweep: RabbitMQ: deleted {deleted['queue']} queue(s) and {deleted['exchange']} exchange(s) named test-*"
    + (f"; skipped {skipped} prefix(es) in use" if skipped else "")
)
sys.exit(1 if failed else 0)
PY
}

# Without the management plugin: rabbitmqctl deletes queues (vhost `/`, where tests run); it cannot delete exchanges.
sweep_rabbitmq_ctl() {
    local listing name consumers exclusive prefix deleted=0
    if ! listing=$(rabbitmqctl list_queues -q --no-table-headers name consumers exclusive </dev/null 2>&1); then
        warn "rabbitmqctl list_queues failed, RabbitMQ not swept: $listing"
        return 0
    fi
    local -A live=()
    while IFS=$'\t' read -r name consumers exclusive; do
        [[ $name == test-* ]] || continue
        if [[ $consumers != 0 || $exclusive == true ]]; then live["${name%%.*}"]=1; fi
    done <<<"$listing"
    while IFS=$'\t' read -r name consumers exclusive; do
        [[ $name == test-* ]] || continue
        prefix=${name%%.*}
        [[ -z ${live[$prefix]:-} ]] || continue
        # </dev/null: rabbitmqctl reads stdin, which would swallow the rest of the listing.
        if rabbitmqctl -q delete_queue -- "$name" </dev/null >/dev/null 2>&1; then
            deleted=$((deleted + 1))
        else
            warn "could not delete queue '$name'"
        fi
    done <<<"$listing"
    log "RabbitMQ: deleted $deleted queue(s) named test-* (exchanges not swept: that needs the management API)"
}

sweep_rabbitmq() {
    if command -v python3 >/dev/null 2>&1 && command -v curl >/dev/null 2>&1 &&
        curl -fsS -o /dev/null --max-time 3 -u "$MGMT_USER:$MGMT_PASS" "$MGMT_URL/api/overview" 2>/dev/null; then
        sweep_rabbitmq_api || warn "some RabbitMQ objects could not be deleted"
    elif command -v rabbitmqctl >/dev/null 2>&1; then
        sweep_rabbitmq_ctl
    else
        warn "RabbitMQ management API ($MGMT_URL) not reachable and no rabbitmqctl: RabbitMQ not swept"
    fi
}

# ---------------------------------------------------------------------------------------------------------------
# PostgreSQL: drop warren_test_* databases nobody is connected to. %I quotes each name as an identifier.
# ---------------------------------------------------------------------------------------------------------------
sweep_postgres() {
    if ! command -v psql >/dev/null 2>&1; then
        warn "psql not installed: PostgreSQL not swept"
        return 0
    fi
    local select="SELECT format('DROP DATABASE IF EXISTS %I', d.datname) FROM pg_database d
        WHERE d.datname LIKE 'warren\\_test\\_%'
          AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datid = d.oid)"
    local count
    if ! count=$(psql "$PG_URL" -w -X -A -t -q -c "SELECT count(*) FROM ($select) s" 2>&1); then
        warn "PostgreSQL not swept: $count"
        return 0
    fi
    if ((count > 0)); then
        # \gexec runs each generated DROP as its own statement (DROP DATABASE cannot run inside a transaction).
        printf '%s\n\\gexec\n' "$select" | psql "$PG_URL" -w -X -q -v ON_ERROR_STOP=0 >/dev/null ||
            warn "some test databases could not be dropped (in use?)"
    fi
    log "PostgreSQL: dropped $count database(s) named warren_test_*"
}

sweep_rabbitmq
sweep_postgres
