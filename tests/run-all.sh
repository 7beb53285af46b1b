#!/usr/bin/env bash
# Runs every test tokengate has: format and lint checks, Rust unit + integration tests (real
# processes on 127.0.0.1), and the official OpenAI Python SDK against the demo.
# Installs what it needs (cmake for Pingora's zlib-ng; a local .venv with the SDK) and fails
# loudly when it cannot.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }
die() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }

install_debian_packages() {
    local missing=()
    command -v cmake >/dev/null 2>&1 || missing+=(cmake)
    command -v cc >/dev/null 2>&1 || missing+=(build-essential)
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
    command -v promtool >/dev/null 2>&1 || missing+=(prometheus)   # promtool checks /metrics
    command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)   # verifies systemd/*.service
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)   # test CA for the TLS tests
    curl -V 2>/dev/null | grep -q HTTP2 || missing+=(curl)   # curl --http2 in the TLS tests
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing ${missing[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
            || die "apt-get install ${missing[*]} failed"
    else
        die "missing ${missing[*]}: install them (Debian: apt-get install ${missing[*]})"
    fi
}

install_debian_packages
command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (https://rustup.rs)"

say "python venv with the OpenAI SDK (.venv)"
[ -x .venv/bin/python ] || python3 -m venv .venv || die "cannot create .venv"
.venv/bin/pip install -q --disable-pip-version-check -r tests/sdk/requirements.txt \
    || die "pip install of tests/sdk/requirements.txt failed"

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

say "layer check (tests/check-layers.sh)"
bash tests/check-layers.sh

say "size check (tests/check-size.sh): files <= 600 lines, no too_many_lines exemption"
bash tests/check-size.sh

export TOKENGATE_REQUIRE_PROMTOOL=1
export TOKENGATE_REQUIRE_SYSTEMD_ANALYZE=1
# Tests whose assertions hang on wall-clock windows live in a `mod timing` of their file
# (tests/common/mod.rs explains): first everything else, in parallel; then the timing group
# alone, one test at a time, so no other test of the suite competes with it for the CPU.
say "cargo test (all but the timing group)"
cargo test --locked -- --skip 'timing::' 2>&1 | tee target/cargo-test.log
grep -q '^test result: ' target/cargo-test.log || die "cargo test ran no test"

say "cargo test (the timing group, serially)"
cargo test --locked --tests -- 'timing::' --test-threads=1 2>&1 | tee target/cargo-test-timing.log
grep -q '^test timing::' target/cargo-test-timing.log || die "the timing group ran no test"

say "OpenAI Python SDK tests (tests/sdk)"
cargo build --locked --bins
.venv/bin/python -m pytest -q tests/sdk
