#!/usr/bin/env bash
# The shipped systemd unit under a live systemd: a minimal Debian rootfs of this machine's own
# release (debootstrap --variant=minbase, cached), booted with systemd-nspawn, the unit, helper
# scripts and sysusers file installed by running the README's "Install and lay out" commands
# inside it. Then: start and serve a request (answered by tokengate-sim on the shared
# loopback), a config change + `systemctl reload` (visible), a rejected config (`systemctl
# reload` fails, the running config stays), `tokengate-upgrade` under load with zero failed
# requests, `systemctl stop` within TimeoutStopSec.
#
#   bash tests/systemd-live.sh          (root; tests/run-all.sh runs it after building)
#
# Skipped, with the reason, only where this machine cannot boot a container (not root, no
# namespaces). The container shares the host's network namespace: everything listens on free
# 127.0.0.1 ports chosen at start. Env: TOKENGATE_BIN_DIR (default target/debug),
# TOKENGATE_ROOTFS_CACHE (default ~/.cache/tokengate-test-rootfs).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
BIN_DIR=${TOKENGATE_BIN_DIR:-target/debug}
T0=$(date +%s)

say() { printf '[systemd-live %3ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
skip() {
    # CI runs on machines that can boot a container: there a skip would hide a failure.
    [ "${CI:-}" = true ] && die "cannot run under CI=true: $*"
    printf 'SKIPPED live systemd test: %s\n' "$*"
    exit 0
}
die() { printf '\nFAILED live systemd test: %s\n' "$*" >&2; exit 1; }

# --- can this machine boot a container? ------------------------------------------------------
[ "$(uname -s)" = Linux ] || skip "needs Linux"
[ "$(id -u)" -eq 0 ] || skip "needs root (systemd-nspawn, debootstrap); run it as root to include it"
unshare --mount --pid --uts --ipc --fork true 2>/dev/null \
    || skip "this machine cannot create mount/pid namespaces (an unprivileged container?)"
for tool in systemd-nspawn debootstrap nsenter curl python3; do
    command -v "$tool" >/dev/null 2>&1 \
        || die "$tool missing: apt-get install systemd-container debootstrap util-linux curl python3 (tests/run-all.sh does)"
done
for bin in tokengate tokengate-sim tokengate-load; do
    [ -x "$BIN_DIR/$bin" ] || die "$BIN_DIR/$bin not built: cargo build --locked --bins"
done

# --- the rootfs: this machine's suite and mirror, built once, then cached ---------------------
# shellcheck disable=SC1091
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$suite" ] || die "no VERSION_CODENAME in /etc/os-release"
mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n 1 || true)
if [ -z "$mirror" ]; then
    mirror=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources.list*"
arch=$(dpkg --print-architecture)
cache=${TOKENGATE_ROOTFS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokengate-test-rootfs}
rootfs=$cache/$suite-$arch
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9   # one build at a time; a concurrent run waits for it, then reuses it
if [ ! -x "$rootfs/lib/systemd/systemd" ]; then
    say "building the $suite rootfs from $mirror into $rootfs (once; later runs reuse it)"
    tmp=$(mktemp -d "$cache/.build.XXXXXX")
    if ! debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus \
        "$suite" "$tmp" "$mirror" >"$cache/debootstrap.log" 2>&1; then
        tail -n 20 "$cache/debootstrap.log" >&2
        rm -rf "$tmp"
        die "debootstrap $suite failed (log: $cache/debootstrap.log)"
    fi
    rm -rf "$rootfs" && mv "$tmp" "$rootfs"
    say "rootfs built"
fi
exec 9>&-

# --- host side: a simulated replica and free ports -------------------------------------------
run=$(mktemp -d "${TMPDIR:-/tmp}/tokengate-systemd-live.XXXXXX")
nspawn_pid='' sim_pid='' load_pid=''
cleanup() {
    set +e
    [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        kill -TERM "$nspawn_pid"   # nspawn -b: a clean poweroff of the container
        for _ in $(seq 100); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$nspawn_pid" 2>/dev/null
    fi
    [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$run"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port) ADMIN=$(free_port)

"$BIN_DIR/tokengate-sim" --listen 127.0.0.1:0 --served-model-name sim-model --replica-name sim \
    --ttft-ms 20 --itl-ms 5 --tokens 8 >"$run/sim.out" 2>"$run/sim.err" &
sim_pid=$!
for _ in $(seq 100); do grep -q '^LISTENING' "$run/sim.out" 2>/dev/null && break; sleep 0.1; done
SIM=$(sed -n 's/^LISTENING //p' "$run/sim.out")
[ -n "$SIM" ] || die "tokengate-sim did not start: $(cat "$run/sim.err")"

# --- boot ---------------------------------------------------------------------------------------
# --volatile=overlay: the container writes to a tmpfs over the cached rootfs, which stays clean.
say "booting $rootfs (systemd-nspawn -b, shared network namespace)"
systemd-nspawn -q -b --register=no --keep-unit --volatile=overlay --console=read-only \
    -D "$rootfs" -M tokengate-test --bind-ro="$SRC:/src" </dev/null >"$run/console.log" 2>&1 &
nspawn_pid=$!
# The container's init: a child of systemd-nspawn running systemd. Checking the name matters
# on a loaded machine, where nspawn's short-lived helper child can be seen first.
find_leader() {
    for stat in /proc/[0-9]*/stat; do
        read -r pid comm _ ppid _ <"$stat" 2>/dev/null || continue
        [ "$ppid" = "$nspawn_pid" ] || continue
        case "$comm" in "(systemd)" | "(init)") echo "$pid"; return ;; esac
    done
}
leader=''
for _ in $(seq 600); do
    kill -0 "$nspawn_pid" 2>/dev/null || die "systemd-nspawn exited: $(tail -n 20 "$run/console.log")"
    leader=$(find_leader)
    [ -n "$leader" ] && break
    sleep 0.1
done
[ -n "$leader" ] || die "no container init under systemd-nspawn (pid $nspawn_pid)"
inside() { nsenter -t "$leader" -a "$@"; }
sh_inside() { nsenter -t "$leader" -a /bin/sh -c "cd /src && $1"; }
# Until its systemd answers on its bus, `is-system-running` says "offline": ask again.
state=''
for _ in $(seq 300); do
    state=$(timeout 90 nsenter -t "$leader" -a systemctl is-system-running --wait 2>/dev/null || true)
    case "$state" in offline | '') sleep 0.2 ;; *) break ;; esac
done
case "$state" in
    running | degraded) say "container systemd is $state (init pid $leader on the host)" ;;
    *) die "container did not boot (state '$state'): $(tail -n 30 "$run/console.log")" ;;
esac
inside test ! -e /bin/kill -a ! -e /usr/bin/kill || say "note: this rootfs has /bin/kill (procps)"

# --- install exactly as the README says -----------------------------------------------------
write_config() { # $1: extra model alias or ''
    {
        cat <<TOML
[server]
listen = ["127.0.0.1:$PORT"]
admin_listen = "127.0.0.1:$ADMIN"
access_log = "stdout"
grace_period_seconds = 2
graceful_shutdown_timeout_seconds = 2
pid_file = "/run/tokengate/tokengate.pid"
upgrade_sock = "/run/tokengate/upgrade.sock"

[[clusters]]
name = "sim"
flavour = "vllm"
replicas = ["$SIM"]

[[models]]
alias = "m1"
cluster = "sim"
served_name = "sim-model"
TOML
        if [ -n "$1" ]; then
            printf '\n[[models]]\nalias = "%s"\ncluster = "sim"\nserved_name = "sim-model"\n' "$1"
        fi
    } | inside sh -c 'cat >/etc/tokengate/tokengate.toml'
}

steps=$(awk '/^### Install and lay out/ { on = 1 } on && /^```sh/ { code = 1; next } code && /^```/ { exit } code' README.md)
[ -n "$steps" ] || die "README.md has no 'Install and lay out' sh block"
say "installing as README.md 'Install and lay out' says (binaries from $BIN_DIR)"
while IFS= read -r line; do
    case "$line" in '' | '#'* | 'cargo build'*) continue ;; esac
    line=${line//target\/release\//$BIN_DIR/}
    printf '    # %s\n' "$line"
    sh_inside "$line" >>"$run/install.log" 2>&1 || die "README install step failed: $line: $(tail -n 20 "$run/install.log")"
    # "then edit": the test's config (loopback ports, the simulator as the replica).
    case "$line" in *'/etc/tokengate/tokengate.toml'*'then edit'*) write_config '' ;; esac
done <<<"$steps"

# --- start + a request --------------------------------------------------------------------------
[ "$(inside systemctl is-active tokengate)" = active ] || die "tokengate not active: $(inside journalctl -u tokengate -n 30 --no-pager)"
chat() {
    curl -sS -o "$run/body" -w '%{http_code}' --max-time 10 "http://127.0.0.1:$PORT/v1/chat/completions" \
        -H 'content-type: application/json' -d "{\"model\":\"$1\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}" || true
}
code=$(chat m1)
[ "$code" = 200 ] || die "first request after start: HTTP $code $(cat "$run/body" 2>/dev/null)"
# The simulator's completion, its served name (sim-model) turned back into the alias.
grep -q '"object":"chat.completion"' "$run/body" && grep -q '"model":"m1"' "$run/body" \
    || die "not answered by the simulator, or not with the alias in model: $(cat "$run/body")"
pid1=$(inside systemctl show -P MainPID tokengate)
user=$(inside stat -c %U "/proc/$pid1")
say "started: MainPID $pid1 (user $user), first request 200 from the simulator"
[ "$user" = tokengate ] || die "runs as $user, not tokengate"

# --- config change + systemctl reload -------------------------------------------------------
models() { curl -sS --max-time 5 "http://127.0.0.1:$PORT/v1/models" || true; }
models | grep -q '"m2"' && die "m2 listed before the reload"
write_config m2
inside systemctl reload tokengate || die "systemctl reload failed: $(inside journalctl -u tokengate -n 20 --no-pager)"
for _ in $(seq 50); do models | grep -q '"m2"' && break; sleep 0.1; done
models | grep -q '"m2"' || die "the reloaded config is not visible: $(models)"
[ "$(chat m2)" = 200 ] || die "m2 not served after the reload"
[ "$(inside systemctl show -P MainPID tokengate)" = "$pid1" ] || die "reload changed the main PID"
say "reload: new alias m2 listed and served, same MainPID"

# A rejected config: `systemctl reload` fails and says why; the running config stays.
inside sh -c 'printf "[server]\nlisten = 80\n" >/etc/tokengate/tokengate.toml'
if inside systemctl reload tokengate 2>"$run/reload.err"; then die "systemctl reload accepted an invalid config"; fi
inside journalctl -u tokengate --no-pager -o cat | grep -q 'tokengate-reload: .*is invalid.*not reloaded' \
    || die "no reason in the journal for the failed reload: $(inside journalctl -u tokengate -n 20 --no-pager)"
[ "$(chat m2)" = 200 ] || die "the running config was lost after a rejected reload"
say "rejected reload: systemctl reload exit non-zero ($(head -c 90 "$run/reload.err")...), reason in the journal, m2 still served"

# A refused upgrade: tokengate-upgrade exits non-zero with the helper's reason; nothing changes.
if inside tokengate-upgrade >"$run/upgrade.err" 2>&1; then die "tokengate-upgrade accepted an invalid config"; fi
grep -q 'tokengate-upgrade: the hand-off failed: the new binary rejects /etc/tokengate/tokengate.toml' "$run/upgrade.err" \
    || die "tokengate-upgrade did not say why it failed: $(cat "$run/upgrade.err")"
[ "$(inside systemctl show -P MainPID tokengate)" = "$pid1" ] || die "a refused upgrade changed the main PID"
inside test ! -e /run/tokengate/upgrade.request || die "a refused upgrade left its request file"
say "refused upgrade: $(grep -m 1 "the hand-off failed" "$run/upgrade.err"), MainPID unchanged"
write_config m2

# --- tokengate-upgrade under load -----------------------------------------------------------
# One connection per request: at shutdown Pingora closes idle keep-alive connections, and a
# request written onto one at that instant fails before any byte is answered — the HTTP/1.1
# idle-close race that clients (the OpenAI SDK included) retry; tests/lifecycle.rs covers the
# pooled case with that retry. Here every request must be answered, none retried.
"$BIN_DIR/tokengate-load" --target "127.0.0.1:$PORT" --model m1 --requests 1000000 --duration-s 14 \
    --concurrency 4 --single-use --max-tokens 4 --timeout-s 20 >"$run/load.json" 2>"$run/load.err" &
load_pid=$!
sleep 2
inside install -m 0755 "/src/$BIN_DIR/tokengate" /usr/bin/tokengate   # a new inode, as the README says
inside tokengate-upgrade >"$run/upgrade.out" 2>&1 || die "tokengate-upgrade failed: $(cat "$run/upgrade.out")"
pid2=$(inside systemctl show -P MainPID tokengate)
[ "$pid2" != "$pid1" ] || die "MainPID unchanged after tokengate-upgrade"
wait "$load_pid" || die "tokengate-load failed: $(cat "$run/load.err")"
load_pid=''
read -r ok errors kinds < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["ok"], r["errors"], json.dumps(r["error_kinds"]).replace(" ",""))' "$run/load.json")
say "upgrade: MainPID $pid1 -> $pid2 under load: $ok requests answered 200, $errors failed $kinds"
[ "$errors" = 0 ] || die "requests failed across the upgrade: $kinds"
[ "$ok" -ge 200 ] || die "too little load to mean anything: $ok"
for _ in $(seq 100); do inside sh -c "kill -0 $pid1" 2>/dev/null || break; sleep 0.2; done
inside sh -c "kill -0 $pid1" 2>/dev/null && die "old process $pid1 still running 20 s after the load"
[ "$(inside systemctl is-active tokengate)" = active ] || die "not active after the upgrade"
[ "$(chat m2)" = 200 ] || die "the new process does not serve the config"

# --- stop within TimeoutStopSec -------------------------------------------------------------
limit_us=$(inside systemctl show -P TimeoutStopUSec tokengate)
t=$(date +%s%N)
inside systemctl stop tokengate || die "systemctl stop failed"
stop_ms=$((($(date +%s%N) - t) / 1000000))
result=$(inside systemctl show -P Result tokengate)
active=$(inside systemctl show -P ActiveState tokengate)
say "stop: ${stop_ms} ms (TimeoutStopSec $limit_us), Result=$result, ActiveState=$active"
[ "$result" = success ] && [ "$active" = inactive ] || die "unclean stop: $(inside journalctl -u tokengate -n 20 --no-pager)"
[ "$stop_ms" -lt 30000 ] || die "stop took ${stop_ms} ms"
if curl -s --max-time 2 "http://127.0.0.1:$PORT/health" >/dev/null; then die "port $PORT still served after stop"; fi
say "PASSED in $(($(date +%s) - T0)) s"
