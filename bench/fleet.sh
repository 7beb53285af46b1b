#!/usr/bin/env bash
# Fleet-mode cost: CPU per request of one tokengate with [fleet] on (a real redis-server)
# against the same binary as a single node, same run, same machine, rounds alternating; and
# Redis commands per second under one busy key (INFO commandstats: client commands and the
# commands scripts ran, both reported). Writes bench/results/fleet.md.
#
#   bash bench/fleet.sh                  # 3 rounds of 10 s
#   ROUNDS=2 DUR=5 bash bench/fleet.sh   # quicker
#   INSTRUCTIONS=1 bash bench/fleet.sh   # instructions per request under callgrind instead
#                                        # (repeatable on a busy machine; needs valgrind)
#
# Ports: PORT_BASE (default 24400) … +9. Needs redis-server (Debian: apt-get install redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${BIN:-$ROOT/target/release}
OUT=$ROOT/bench/results
mkdir -p "$OUT"
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-10}
CONC=${CONC:-32}
PB=${PORT_BASE:-24400}
SIM=$PB REDIS=$((PB + 1)) TG=$((PB + 2)) ADMIN=$((PB + 3))
log() { printf '[fleet-bench] %s\n' "$*" >&2; }

command -v redis-server >/dev/null || { log "redis-server missing"; exit 1; }
[[ ${SKIP_BUILD:-0} == 1 ]] || cargo build --release --locked --bins >&2

RUN=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$RUN"; }
trap cleanup EXIT

wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; log "port $1 never opened"; exit 1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rcmd() { redis-cli -p "$REDIS" "$@"; }
# client commands (calls of commands sent by clients) and all commands (those run by scripts too)
redis_calls() {
  rcmd INFO commandstats | tr -d '\r' | awk -F'[=,:]' '
    /^cmdstat_/ { n = $3; all += n; if ($1 ~ /evalsha|eval$|ping|get$|hincrby|zrange|mget|hgetall|subscribe|multi|exec|publish|info|script/) cl += n }
    END { printf "%d %d\n", cl, all }'
}

"$BIN/tokengate-sim" --listen "127.0.0.1:$SIM" --served-model-name bench-model >/dev/null 2>&1 &
PIDS+=($!)
redis-server --port "$REDIS" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning >/dev/null &
PIDS+=($!)
wait_port "$SIM"; wait_port "$REDIS"
echo -n "bench-admin-token" >"$RUN/admin-token"

config() { # $1 = single|fleet
  cat <<TOML
[server]
listen = ["127.0.0.1:$TG"]
admin_listen = "127.0.0.1:$ADMIN"
admin_token_file = "admin-token"
access_log = "$RUN/access.log"
threads = 2
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1
pid_file = "$RUN/tg.pid"
upgrade_sock = "$RUN/tg.sock"

[auth]
keys_file = "keys.toml"

[[clusters]]
name = "bench"
flavour = "vllm"
replicas = ["127.0.0.1:$SIM"]

[[models]]
alias = "bench"
cluster = "bench"
served_name = "bench-model"
TOML
  if [[ $1 == fleet ]]; then
    printf '\n[fleet]\nredis_url = "redis://127.0.0.1:%s"\ninstance_id = "bench"\n' "$REDIS"
  fi
}
config single >"$RUN/single.toml"
config fleet >"$RUN/fleet.toml"
KEY=$("$BIN/tokengate" key new --keys-file "$RUN/keys.toml" --name busy \
  --requests-per-minute 100000000 --tokens-per-minute 100000000000 -c "$RUN/single.toml" 2>/dev/null)
"$BIN/tokengate" key import -c "$RUN/fleet.toml" >&2

# Instruction counts (INSTRUCTIONS=1): each mode under callgrind at two request counts; the
# difference divided by the extra requests is instructions per request, free of start-up and of
# whatever else the machine runs (valgrind counts instructions, not time).
if [[ ${INSTRUCTIONS:-0} == 1 ]]; then
  command -v valgrind >/dev/null || { log "valgrind missing"; exit 1; }
  N1=${N1:-500} N2=${N2:-2500}
  declare -A IR
  for mode in single fleet; do
    for n in "$N1" "$N2"; do
      valgrind --tool=callgrind --callgrind-out-file="$RUN/cg.$mode.$n" \
        "$BIN/tokengate" run -c "$RUN/$mode.toml" >"$RUN/$mode.$n.log" 2>&1 &
      TGPID=$!
      for _ in $(seq 1200); do (exec 3<>/dev/tcp/127.0.0.1/"$TG") 2>/dev/null && break; sleep 0.1; done
      "$BIN/tokengate-load" --target "127.0.0.1:$TG" --model bench --api-key "$KEY" \
        --requests "$n" --duration-s 600 --concurrency 8 >"$RUN/load.$mode.$n.json"
      kill -TERM "$TGPID"; wait "$TGPID" 2>/dev/null || true
      IR[$mode.$n]=$(awk '/^summary:/ {print $2}' "$RUN/cg.$mode.$n")
      log "$mode, $n requests: ${IR[$mode.$n]} instructions"
    done
  done
  per() { python3 -c "print((${IR[$1.$N2]} - ${IR[$1.$N1]}) / ($N2 - $N1))"; } # $1 = mode
  S=$(per single)
  F=$(per fleet)
  {
    echo "# Fleet mode cost in instructions ($(date -u +%F), callgrind, $N1 and $N2 requests, 8 connections, one key)"
    echo
    echo "| mode | instructions / request |"
    echo "|---|---|"
    echo "| single node | $(printf '%.0f' "$S") |"
    echo "| [fleet] on (Redis) | $(printf '%.0f' "$F") |"
    echo
    echo "fleet / single instructions per request: $(python3 -c "print('%.3f' % ($F / $S))")"
  } | tee "$OUT/fleet-instructions.md"
  exit 0
fi

declare -A CPU RPS CMD_CL CMD_ALL
for mode in single fleet; do CPU[$mode]=""; RPS[$mode]=""; done
for round in $(seq "$ROUNDS"); do
  for mode in single fleet; do
    "$BIN/tokengate" run -c "$RUN/$mode.toml" >"$RUN/$mode.log" 2>&1 &
    TGPID=$!
    wait_port "$TG"
    "$BIN/tokengate-load" --target "127.0.0.1:$TG" --model bench --api-key "$KEY" \
      --requests 100000000 --duration-s 2 --concurrency "$CONC" >/dev/null # warm
    read -r cl0 all0 < <(redis_calls)
    c0=$(cpu_ticks "$TGPID"); t0=$(date +%s.%N)
    out=$("$BIN/tokengate-load" --target "127.0.0.1:$TG" --model bench --api-key "$KEY" \
      --requests 100000000 --duration-s "$DUR" --concurrency "$CONC")
    c1=$(cpu_ticks "$TGPID"); t1=$(date +%s.%N)
    read -r cl1 all1 < <(redis_calls)
    ok=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["ok"])' "$out")
    secs=$(python3 -c "print($t1 - $t0)")
    hz=$(getconf CLK_TCK)
    CPU[$mode]+="$(python3 -c "print(($c1 - $c0) / $hz / $ok * 1e6)") "
    RPS[$mode]+="$(python3 -c "print($ok / $secs)") "
    if [[ $mode == fleet ]]; then
      CMD_CL[$round]=$(python3 -c "print(($cl1 - $cl0) / $secs)")
      CMD_ALL[$round]=$(python3 -c "print(($all1 - $all0) / $secs)")
    fi
    kill "$TGPID"; wait "$TGPID" 2>/dev/null || true
    log "round $round $mode: $ok requests in ${secs}s"
  done
done

median() { python3 -c 'import sys,statistics; print("%.1f" % statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
S=$(median ${CPU[single]}); F=$(median ${CPU[fleet]})
{
  echo "# Fleet mode cost ($(date -u +%F), $(nproc) cores, $ROUNDS rounds × ${DUR}s, $CONC connections, one key)"
  echo
  echo "| mode | CPU µs / request (median) | requests/s (median) |"
  echo "|---|---|---|"
  echo "| single node | $S | $(median ${RPS[single]}) |"
  echo "| [fleet] on (Redis) | $F | $(median ${RPS[fleet]}) |"
  echo
  echo "fleet / single CPU per request: $(python3 -c "print('%.3f' % ($F / $S))")"
  echo
  echo "Redis commands/s during the fleet runs, one key at the rate above: client commands" \
       "$(median ${CMD_CL[@]}), all commands incl. those inside scripts $(median ${CMD_ALL[@]})."
} | tee "$OUT/fleet.md"
