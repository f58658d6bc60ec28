# shellcheck shell=bash
# Shared by the install scripts (ensure-*.sh): messages prefixed with the script's name, and running a command as
# root (directly, or through sudo when there is one). Source it after setting TAG, e.g. TAG=ensure-services.

log() { printf '%s: %s\n' "$TAG" "$*"; }

die() {
    printf '%s: ERROR: %s\n' "$TAG" "$*" >&2
    exit 1
}

# Runs "$@" as root; dies with a hint when that is impossible.
as_root() {
    if ((EUID == 0)); then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run: $* (re-run as root, or install it yourself)"
    fi
}
