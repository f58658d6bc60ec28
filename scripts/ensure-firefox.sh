#!/usr/bin/env bash
# ensure-firefox.sh — make sure the Firefox and the geckodriver the web app's Firefox end-to-end test drives are
# installed.
#
# Why: Playwright's Firefox is a patched build that cannot be downloaded here, so frontend/e2e/firefox.e2e.test.mjs
# drives Debian's `firefox-esr` through WebDriver (selenium-webdriver) and a geckodriver built from crates.io.
# When both are present this is a fast no-op. Otherwise:
#   - firefox-esr: installed with apt (as root; `apt-get update` first, no recommended packages);
#   - geckodriver: `cargo install geckodriver --locked` (version GECKODRIVER_VERSION) into
#     $WARREN_E2E_TOOLS/bin, built in a scratch directory that is removed afterwards (a few minutes, once).
#
# Environment:
#   WARREN_E2E_FIREFOX       the browser (default /usr/bin/firefox-esr; when set, it must exist)
#   WARREN_E2E_GECKODRIVER   the driver (default $WARREN_E2E_TOOLS/bin/geckodriver; when set, it must exist)
#   WARREN_E2E_TOOLS         where geckodriver is installed (default $HOME/.cache/warren)
#   GECKODRIVER_VERSION      the crate version to build (default 0.37.1)
set -euo pipefail

TOOLS="${WARREN_E2E_TOOLS:-$HOME/.cache/warren}"
FIREFOX="${WARREN_E2E_FIREFOX:-/usr/bin/firefox-esr}"
GECKODRIVER="${WARREN_E2E_GECKODRIVER:-$TOOLS/bin/geckodriver}"
GECKODRIVER_VERSION="${GECKODRIVER_VERSION:-0.37.1}"

TAG=ensure-firefox
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The fast path: nothing to do.
if [[ -x $FIREFOX && -x $GECKODRIVER ]]; then
    exit 0
fi

# Two runs at once (a CI clone and a developer) install one after the other; the second finds everything there.
mkdir -p "$TOOLS"
exec 9>"$TOOLS/.ensure-firefox.lock"
command -v flock >/dev/null 2>&1 && flock 9

if [[ ! -x $FIREFOX ]]; then
    [[ -z ${WARREN_E2E_FIREFOX:-} ]] ||
        die "WARREN_E2E_FIREFOX=$FIREFOX is not an executable; point it at a Firefox or unset it"
    command -v apt-get >/dev/null 2>&1 ||
        die "no Firefox at $FIREFOX and no apt-get to install one: install Firefox and set WARREN_E2E_FIREFOX"
    log "no Firefox at $FIREFOX: installing Debian's firefox-esr package"
    apt_get() { as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "$@"; }
    apt_get update -q >/dev/null || die "apt-get update failed"
    if ! output=$(apt_get install -y -q --no-install-recommends firefox-esr fonts-liberation 2>&1); then
        printf '%s\n' "$output" | tail -n 20 >&2
        die "apt-get install firefox-esr failed"
    fi
    [[ -x $FIREFOX ]] || die "firefox-esr was installed but $FIREFOX is still missing"
    log "installed: $("$FIREFOX" --version 2>/dev/null || echo firefox-esr)"
fi

if [[ ! -x $GECKODRIVER ]]; then
    [[ -z ${WARREN_E2E_GECKODRIVER:-} ]] ||
        die "WARREN_E2E_GECKODRIVER=$GECKODRIVER is not an executable; point it at a geckodriver or unset it"
    command -v cargo >/dev/null 2>&1 || die "cargo is required to build geckodriver (https://rustup.rs)"
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    log "no geckodriver at $GECKODRIVER: building geckodriver $GECKODRIVER_VERSION from crates.io (a few minutes)"
    # Its own scratch target directory: not the workspace's (CARGO_TARGET_DIR, exported by the Makefile).
    if ! output=$(CARGO_TARGET_DIR="$scratch/target" cargo install geckodriver --locked --quiet \
        --version "=$GECKODRIVER_VERSION" --root "$scratch/root" 2>&1); then
        printf '%s\n' "$output" | tail -n 30 >&2
        die "cargo install geckodriver failed"
    fi
    mkdir -p "$(dirname "$GECKODRIVER")"
    # Copied next to its final name, then renamed: a concurrent reader never sees half a binary.
    cp "$scratch/root/bin/geckodriver" "$GECKODRIVER.tmp.$$"
    mv -f "$GECKODRIVER.tmp.$$" "$GECKODRIVER"
    log "installed: $("$GECKODRIVER" --version 2>/dev/null | head -n 1) at $GECKODRIVER"
fi
