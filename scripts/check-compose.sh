#!/usr/bin/env bash
# check-compose.sh — validate docker-compose.yml without a Docker engine (CI has none).
#
# Why: the compose file is how operators run Warren, yet nothing in CI starts it. This catches what breaks a
# deployment silently: a syntax or interpolation error, a `container_name` (which makes `--scale` fail), a service
# that starts before PostgreSQL/RabbitMQ are healthy, a RabbitMQ without a fixed hostname (it would lose its data
# directory on every new container), a missing healthcheck, or a variable used in the compose file that
# .env.example does not document.
#
#   1. `docker compose config -q` (or Debian's docker-compose v1, installed by apt when missing and possible) with
#      an env file made from .env.example, required values filled with placeholders;
#   2. structural assertions in Python (PyYAML) on the file itself.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
COMPOSE_FILE=docker-compose.yml
ENV_EXAMPLE=.env.example

log() { printf 'check-compose: %s\n' "$*"; }
die() {
    printf 'check-compose: ERROR: %s\n' "$*" >&2
    exit 1
}

[[ -f $COMPOSE_FILE ]] || die "$COMPOSE_FILE not found"
[[ -f $ENV_EXAMPLE ]] || die "$ENV_EXAMPLE not found"

as_root() {
    if ((EUID == 0)); then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else return 1; fi
}
apt_install() {
    command -v apt-get >/dev/null 2>&1 || return 1
    as_root apt-get update -q >/dev/null 2>&1 || true
    # --no-install-recommends: docker-compose recommends docker.io, an engine we neither need nor can run here.
    local output
    if ! output=$(as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" 2>&1); then
        printf '%s\n' "$output" >&2
        return 1
    fi
}

# ---------------------------------------------------------------------------------------------------------------
# 1. The compose tool's own validation
# ---------------------------------------------------------------------------------------------------------------
compose=()
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
elif command -v apt-cache >/dev/null 2>&1 &&
    [[ $(apt-cache policy docker-compose 2>/dev/null | awk '/Candidate:/ {print $2}') =~ ^[0-9] ]]; then
    log "installing Debian's docker-compose (for 'config' only)"
    if apt_install docker-compose && command -v docker-compose >/dev/null 2>&1; then
        compose=(docker-compose)
    else
        log "warning: could not install docker-compose; skipping the tool's validation"
    fi
else
    log "warning: neither 'docker compose' nor 'docker-compose' is available; skipping the tool's validation"
fi

if ((${#compose[@]} > 0)); then
    env_file=$(mktemp)
    trap 'rm -f "$env_file"' EXIT
    # .env.example with a placeholder for every variable the compose file requires (${VAR:?…}) and leaves empty.
    mapfile -t required < <(grep -oE '\$\{[A-Za-z_][A-Za-z0-9_]*:\?' "$COMPOSE_FILE" | sed -E 's/^\$\{//; s/:\?$//' | sort -u)
    while IFS= read -r line; do
        for var in "${required[@]}"; do
            if [[ $line == "$var=" ]]; then line="$var=check-compose-placeholder"; fi
        done
        printf '%s\n' "$line"
    done <"$ENV_EXAMPLE" >"$env_file"
    if ! output=$("${compose[@]}" --env-file "$env_file" -f "$COMPOSE_FILE" config -q 2>&1); then
        printf '%s\n' "$output" >&2
        die "'${compose[*]} config' rejects $COMPOSE_FILE (with $ENV_EXAMPLE's values)"
    fi
    log "'${compose[*]} config -q' accepts $COMPOSE_FILE"
fi

# ---------------------------------------------------------------------------------------------------------------
# 2. Structural assertions
# ---------------------------------------------------------------------------------------------------------------
python=""
for candidate in python3 /usr/bin/python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import yaml' 2>/dev/null; then
        python=$candidate
        break
    fi
done
if [[ -z $python ]]; then
    log "installing python3-yaml"
    apt_install python3-yaml || die "PyYAML is missing: install python3-yaml (apt) or PyYAML (pip)"
    python=/usr/bin/python3
fi

"$python" - "$COMPOSE_FILE" "$ENV_EXAMPLE" <<'PY'
import re
import sys

import yaml

compose_path, env_example_path = sys.argv[1], sys.argv[2]
text = open(compose_path, encoding="utf-8").read()
doc = yaml.safe_load(text)  # resolves anchors and `<<` merge keys, as compose does
errors = []

services = doc.get("services") or {}
expected = {"postgres", "rabbitmq", "user-service", "message-service", "api", "frontend", "gateway"}
missing = expected - services.keys()
if missing:
    errors.append(f"missing services: {', '.join(sorted(missing))}")

# No container_name anywhere: a fixed name makes `docker compose up --scale` impossible.
def find_key(node, key, path):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield path + [str(k)]
            yield from find_key(v, key, path + [str(k)])
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from find_key(v, key, path + [str(i)])

for where in find_key(doc, "container_name", []):
    errors.append(f"container_name at {'.'.join(where)}: it prevents --scale; remove it")

infrastructure = {"postgres", "rabbitmq", "frontend", "gateway"}
for name, service in services.items():
    service = service or {}
    if service.get("restart") != "unless-stopped":
        errors.append(f"{name}: restart must be unless-stopped (is {service.get('restart')!r})")
    if name in infrastructure:
        continue
    depends = service.get("depends_on") or {}
    for needed in ("postgres", "rabbitmq"):
        if not isinstance(depends, dict) or needed not in depends:
            errors.append(f"{name}: must depend on {needed} (depends_on.{needed}.condition: service_healthy)")
        elif (depends[needed] or {}).get("condition") != "service_healthy":
            errors.append(f"{name}: depends_on.{needed}.condition must be service_healthy")

rabbitmq = services.get("rabbitmq") or {}
if not rabbitmq.get("hostname"):
    errors.append("rabbitmq: needs a fixed hostname (its node name and data directory depend on it)")

for name in ("postgres", "rabbitmq", "api", "gateway"):
    check = (services.get(name) or {}).get("healthcheck") or {}
    if not check.get("test") or check.get("disable"):
        errors.append(f"{name}: needs a healthcheck")

# Secrets come from .env or secret files, never literally from this file.
for name, service in services.items():
    env = (service or {}).get("environment") or {}
    items = env.items() if isinstance(env, dict) else (e.split("=", 1) + [""] for e in env)
    for item in items:
        key, value = list(item)[:2]
        if re.search(r"PASS|SECRET|PRIVATE_KEY$|PUBLIC_KEY$|TOKEN$", key) and value and "${" not in str(value):
            errors.append(f"{name}: {key} has a literal value; take it from .env or a secret file")
        if re.search(r"://[^:/@\s]+:[^@$\s]+@", str(value)) and "${" not in str(value):
            errors.append(f"{name}: {key} embeds a literal password in a URL")

# Every variable the compose file reads is documented in .env.example.
documented = set(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)=", open(env_example_path, encoding="utf-8").read(), re.M))
used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
for var in sorted(used - documented):
    errors.append(f"${{{var}}} is used in {compose_path} but not documented in {env_example_path}")

if errors:
    for error in errors:
        print(f"check-compose: ERROR: {error}", file=sys.stderr)
    sys.exit(1)
print(f"check-compose: {len(services)} services pass the structural checks")
PY
