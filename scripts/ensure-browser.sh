#!/usr/bin/env bash
# ensure-browser.sh — make sure the Chromium the web app's end-to-end tests drive is installed.
#
# Why: the tests (frontend/e2e/) drive a real headless Chromium through playwright-core, which downloads no
# browser of its own here: it runs Debian's `chromium` package. When /usr/bin/chromium (or $WARREN_E2E_CHROMIUM)
# exists this is a fast no-op; otherwise it installs `chromium` (and a font for readable screenshots) with apt,
# as root, running `apt-get update` first.
set -euo pipefail

CHROMIUM="${WARREN_E2E_CHROMIUM:-/usr/bin/chromium}"

TAG=ensure-browser
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ -x $CHROMIUM ]]; then
    exit 0
fi
if [[ -n ${WARREN_E2E_CHROMIUM:-} ]]; then
    die "WARREN_E2E_CHROMIUM=$CHROMIUM is not an executable; point it at a Chromium or unset it"
fi

command -v apt-get >/dev/null 2>&1 ||
    die "no Chromium at $CHROMIUM and no apt-get to install one: install Chromium and set WARREN_E2E_CHROMIUM"
log "no Chromium at $CHROMIUM: installing Debian's chromium package"
as_root apt-get update -q >/dev/null || die "apt-get update failed"
if ! output=$(as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    chromium fonts-liberation 2>&1); then
    printf '%s\n' "$output" | tail -n 20 >&2
    die "apt-get install chromium failed"
fi
[[ -x $CHROMIUM ]] || die "chromium was installed but $CHROMIUM is still missing"
log "installed: $("$CHROMIUM" --version 2>/dev/null || echo chromium)"
