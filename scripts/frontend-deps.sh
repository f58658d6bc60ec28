#!/usr/bin/env bash
# frontend-deps.sh — check Node.js and npm, and install the web app's dependencies when they are missing or stale.
#
# `npm ci` runs when frontend/node_modules is missing or frontend/package-lock.json changed since the last install
# (its checksum is kept in node_modules/.warren-lock.sha256), so repeated test runs skip a ~30 s reinstall.
# Used by `make test-frontend` and scripts/e2e.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FRONTEND="$ROOT/frontend"

die() {
    printf 'frontend-deps: ERROR: %s\n' "$*" >&2
    exit 1
}

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    die "node and npm are required for the web app (Node.js ^20.19 or >= 22.12, with npm): install them, e.g. from https://nodejs.org or Debian's nodejs/npm packages"
fi
# The engines range in frontend/package.json (Vite 8 and Vitest 4 need it).
# shellcheck disable=SC2016 # JavaScript, not shell
node -e '
const [major, minor] = process.versions.node.split(".").map(Number);
if (!((major === 20 && minor >= 19) || (major === 22 && minor >= 12) || major > 22)) {
  console.error(`frontend-deps: ERROR: Node.js ${process.versions.node} is too old: the web app needs ^20.19 or >= 22.12`);
  process.exit(1);
}' || exit 1

lock="$FRONTEND/package-lock.json"
stamp="$FRONTEND/node_modules/.warren-lock.sha256"
[[ -f $lock ]] || die "$lock is missing"
want=$(sha256sum "$lock" | cut -d' ' -f1)
if [[ -d $FRONTEND/node_modules && -f $stamp && $(cat "$stamp") == "$want" ]]; then
    exit 0
fi
echo "frontend-deps: npm ci (node_modules missing or package-lock.json changed)"
(cd "$FRONTEND" && npm ci --no-audit --no-fund)
printf '%s\n' "$want" >"$stamp"
