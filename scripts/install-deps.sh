#!/bin/sh
# Installs the system packages tokengate needs on Debian/Ubuntu, only those missing:
#
#   sh scripts/install-deps.sh          build: a C compiler and cmake (Pingora's zlib-ng)
#   sh scripts/install-deps.sh --tests  also what tests/run-all.sh uses
#
# As root it runs apt-get directly, otherwise through sudo; `apt-get update` first, because a
# fresh machine or image has no package lists. Anywhere else it names what to install and
# fails. Rust itself comes from https://rustup.rs.
set -eu

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

missing=''
need() { missing="$missing $1"; }   # need PACKAGE: add to the install list

have cc || need build-essential
have cmake || need cmake
if [ "${1:-}" = --tests ]; then
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need python3-venv
    have promtool || need prometheus                  # checks /metrics
    have systemd-analyze || need systemd              # verifies systemd/*.service
    have openssl || need openssl                      # test CAs for the TLS tests (listener, Redis)
    { have curl && curl -V | grep -q HTTP2; } || need curl   # curl --http2 in the TLS tests
    have debootstrap || need debootstrap              # tests/systemd-live.sh: the rootfs
    have systemd-nspawn || need systemd-container     # tests/systemd-live.sh: the boot
    have redis-server || need redis-server            # fleet-mode tests (tests/fleet_*.rs; TLS too)
    have redis-cli || need redis-tools                # redis-cli --cluster create (fleet_redis_transport)
    have chromium || need chromium                    # the status page's browser test
elif [ -n "${1:-}" ]; then
    die "usage: sh scripts/install-deps.sh [--tests]"
fi
[ -n "$missing" ] || exit 0

have apt-get || die "missing:$missing (Debian package names); install the equivalents with your package manager"
if [ "$(id -u)" -eq 0 ]; then
    sudo=''
elif have sudo; then
    sudo=sudo
else
    die "missing:$missing; run as root or install sudo (as root: apt-get update && apt-get install$missing)"
fi
say "installing$missing (apt-get update first)"
$sudo apt-get update -qq || die "apt-get update failed"
# shellcheck disable=SC2086
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null \
    || die "apt-get install$missing failed"
