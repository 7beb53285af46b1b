#!/usr/bin/env bash
# Side-by-side benchmark: what tokengate costs against a direct connection to the replica,
# nginx and a bare Pingora pass-through. Everything runs on 127.0.0.1 and is started and
# stopped by this script. Writes bench/results/latest.md (printed at the end) and the raw
# measurements to bench/results/latest.jsonl.
#
#   bash bench/run.sh            # full: 3 rounds, 10 000 slow streams, ≤ ~15 min
#   QUICK=1 bash bench/run.sh    # quick: 2 rounds, smaller counts, ~3 min
#
# Overrides (environment): ROUNDS, SLOW_STREAMS, SLOW_TOKENS, DUR (seconds per measurement),
# C1_N, C64_N, STREAM_N, BIG_N, PORT_BASE, SKIP_BUILD=1, SKIP_NGINX=1, BIN (release binaries' dir).
# The machine may be shared: peers alternate within each round (direct, nginx, bare Pingora,
# tokengate, then again), medians over rounds are reported, and every absolute figure comes
# with its ratio to direct and to bare Pingora.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH=$ROOT/bench
BIN=${BIN:-$ROOT/target/release}
OUT=$BENCH/results
mkdir -p "$OUT"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
  : "${ROUNDS:=2}" "${C1_N:=3000}" "${C64_N:=10000}" "${STREAM_N:=1500}" "${BIG_N:=100}"
  : "${SLOW_STREAMS:=2000}" "${SLOW_TOKENS:=6}" "${DUR:=5}"
else
  : "${ROUNDS:=3}" "${C1_N:=8000}" "${C64_N:=40000}" "${STREAM_N:=5000}" "${BIG_N:=300}"
  : "${SLOW_STREAMS:=10000}" "${SLOW_TOKENS:=10}" "${DUR:=10}"
fi
SLOW_ITL_MS=${SLOW_ITL_MS:-500}
SKIP_BUILD=${SKIP_BUILD:-0}
SKIP_NGINX=${SKIP_NGINX:-0}
T0=$(date +%s)

log() { printf '[bench %4ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v curl >/dev/null || die "curl is required"
command -v python3 >/dev/null || die "python3 is required (report)"

# --- file limit: each proxied stream holds 2 descriptors in the proxy ------------------------
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [[ $NOFILE == unlimited ]]; then NOFILE=1048576; fi
MAX_SLOW=$(((NOFILE - 256) / 2))
SLOW_REQUESTED=$SLOW_STREAMS
if ((SLOW_STREAMS > MAX_SLOW)); then
  log "file limit $NOFILE: slow streams lowered from $SLOW_STREAMS to $MAX_SLOW (2 descriptors per stream in a proxy)"
  SLOW_STREAMS=$MAX_SLOW
fi

# --- nginx -------------------------------------------------------------------------------------
HAVE_NGINX=0
if [[ $SKIP_NGINX != 1 ]]; then
  if ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
    log "installing nginx (apt-get)"
    SUDO=""; [[ $(id -u) != 0 ]] && SUDO=sudo
    { $SUDO apt-get install -y nginx >/dev/null 2>&1 ||
      { $SUDO apt-get update >/dev/null 2>&1 && $SUDO apt-get install -y nginx >/dev/null 2>&1; }; } ||
      log "nginx could not be installed: the nginx peer is skipped"
  fi
  NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
  [[ -x $NGINX_BIN ]] && HAVE_NGINX=1
fi

# --- build -------------------------------------------------------------------------------------
if [[ $SKIP_BUILD != 1 ]]; then
  log "cargo build --release --bins"
  cargo build --release --bins >&2
fi
for b in tokengate tokengate-sim tokengate-load bare-pingora; do
  [[ -x $BIN/$b ]] || die "missing $BIN/$b"
done

# --- ports and run dir -------------------------------------------------------------------------
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT_BASE=${PORT_BASE:-$((20000 + (RANDOM % 500) * 20))}
for ((i = 0; i < 10; i++)); do
  ok=1
  for o in 1 2 10 11 12 13; do port_free $((PORT_BASE + o)) || ok=0; done
  ((ok)) && break
  PORT_BASE=$((PORT_BASE + 20))
done
SIM1=$((PORT_BASE + 1)) SIM2=$((PORT_BASE + 2))
NGINX_PORT=$((PORT_BASE + 10)) BARE_PORT=$((PORT_BASE + 11))
TG_PORT=$((PORT_BASE + 12)) TG_ADMIN=$((PORT_BASE + 13))
RUN=$(mktemp -d "${TMPDIR:-/tmp}/tokengate-bench.XXXXXX")
log "run dir $RUN; ports: sims $SIM1 $SIM2, nginx $NGINX_PORT, bare-pingora $BARE_PORT, tokengate $TG_PORT (admin $TG_ADMIN)"

PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() { # wait_for SECONDS CMD...
  local end=$(($(date +%s) + $1)); shift
  until "$@" >/dev/null 2>&1; do
    (($(date +%s) < end)) || return 1
    sleep 0.2
  done
}

# --- simulators (two replicas, vLLM flavour) ---------------------------------------------------
export RUST_LOG=warn
for port in $SIM1 $SIM2; do
  "$BIN/tokengate-sim" --listen "127.0.0.1:$port" --served-model-name bench-model \
    --tokens 16 --max-running 100000 >"$RUN/sim-$port.log" 2>&1 &
  PIDS+=($!)
done
SIM_PIDS=("${PIDS[@]}")
for port in $SIM1 $SIM2; do
  wait_for 20 curl -sf "http://127.0.0.1:$port/health" || die "simulator on $port did not start"
done

# --- nginx -------------------------------------------------------------------------------------
NGINX_PIDS=()
if ((HAVE_NGINX)); then
  mkdir -p "$RUN/nginx"
  cat >"$RUN/nginx/nginx.conf" <<EOF
worker_processes 2;
worker_rlimit_nofile $NOFILE;
pid $RUN/nginx/nginx.pid;
error_log $RUN/nginx/error.log warn;
$( [[ $(id -u) == 0 ]] && echo "user root;" )
events { worker_connections $NOFILE; multi_accept on; }
http {
  access_log off;
  client_body_temp_path $RUN/nginx/body;
  proxy_temp_path $RUN/nginx/proxy;
  fastcgi_temp_path $RUN/nginx/fastcgi;
  uwsgi_temp_path $RUN/nginx/uwsgi;
  scgi_temp_path $RUN/nginx/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 65;
  client_max_body_size 32m;
  client_body_buffer_size 2m;
  upstream sims {
    server 127.0.0.1:$SIM1;
    server 127.0.0.1:$SIM2;
    keepalive 128;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT backlog=4096;
    location / {
      proxy_pass http://sims;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
EOF
  "$NGINX_BIN" -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf" -g 'daemon off;' >"$RUN/nginx/stdout.log" 2>&1 &
  NGINX_MASTER=$!
  PIDS+=("$NGINX_MASTER")
  if wait_for 10 curl -sf "http://127.0.0.1:$NGINX_PORT/health"; then
    sleep 0.3
    mapfile -t NGINX_WORKERS < <(pgrep -P "$NGINX_MASTER" || true)
    NGINX_PIDS=("$NGINX_MASTER" "${NGINX_WORKERS[@]}")
  else
    log "nginx did not start (see $RUN/nginx/error.log): skipped"
    HAVE_NGINX=0
  fi
fi

# --- bare Pingora ------------------------------------------------------------------------------
"$BIN/bare-pingora" --listen "127.0.0.1:$BARE_PORT" --upstream "127.0.0.1:$SIM1" \
  --upstream "127.0.0.1:$SIM2" --threads 2 >"$RUN/bare-pingora.log" 2>&1 &
BARE_PID=$!
PIDS+=("$BARE_PID")
wait_for 20 curl -sf "http://127.0.0.1:$BARE_PORT/health" || die "bare-pingora did not start"

# --- tokengate, all features on ----------------------------------------------------------------
sed -e "s#@BENCH@#$BENCH#g" -e "s#@RUN@#$RUN#g" -e "s#@TG_PORT@#$TG_PORT#g" \
  -e "s#@TG_ADMIN@#$TG_ADMIN#g" -e "s#@SIM1@#$SIM1#g" -e "s#@SIM2@#$SIM2#g" \
  "$BENCH/tokengate-bench.toml" >"$RUN/tokengate.toml"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$RUN/admin-token"
API_KEY=$("$BIN/tokengate" key new --keys-file "$RUN/keys.toml" --name bench \
  --requests-per-minute 1000000000 --tokens-per-minute 1000000000000 \
  --max-concurrent 100000 -c "$RUN/tokengate.toml" 2>"$RUN/key-new.log") || die "key new failed: $(cat "$RUN/key-new.log")"
"$BIN/tokengate" check -c "$RUN/tokengate.toml" >&2 || die "bench config rejected"
"$BIN/tokengate" run -c "$RUN/tokengate.toml" >"$RUN/tokengate.log" 2>&1 &
TG_PID=$!
PIDS+=("$TG_PID")
tg_ready() { curl -sf "http://127.0.0.1:$TG_ADMIN/health" | grep -Eq '"ready": ?true'; }
wait_for 30 tg_ready || die "tokengate not ready (see $RUN/tokengate.log)"
log "all peers up (tokengate pid $TG_PID, bare-pingora pid $BARE_PID${NGINX_PIDS:+, nginx pids ${NGINX_PIDS[*]}})"

# --- measurements ------------------------------------------------------------------------------
PEERS=(direct)
((HAVE_NGINX)) && PEERS+=(nginx)
PEERS+=(bare-pingora tokengate)
RESULTS=$RUN/results.jsonl
: >"$RESULTS"

peer_args() { # peer -> target / model / key / watched pids
  case $1 in
  direct) echo "--target 127.0.0.1:$SIM1 --target 127.0.0.1:$SIM2 --model bench-model" ;;
  nginx) echo "--target 127.0.0.1:$NGINX_PORT --model bench-model $(printf -- '--watch-pid %s ' "${NGINX_PIDS[@]}")" ;;
  bare-pingora) echo "--target 127.0.0.1:$BARE_PORT --model bench-model --watch-pid $BARE_PID" ;;
  tokengate) echo "--target 127.0.0.1:$TG_PORT --model bench --watch-pid $TG_PID" ;;
  esac
}
scenario_args() {
  case $1 in
  small_c1) echo "--concurrency 1 --requests $C1_N --max-tokens 16 --duration-s $DUR" ;;
  small_c64) echo "--concurrency 64 --requests $C64_N --max-tokens 16 --duration-s $DUR" ;;
  stream_c64) echo "--stream --concurrency 64 --requests $STREAM_N --max-tokens 64 --duration-s $DUR" ;;
  # Time-bound (not count-bound) so that several reloads land in every round.
  reload_during_stream_c64) echo "--stream --concurrency 64 --requests 100000000 --max-tokens 64 --duration-s $DUR" ;;
  prompt_1mib_c4) echo "--concurrency 4 --requests $BIG_N --prompt-bytes 1048576 --max-tokens 16 --duration-s $DUR" ;;
  slow_streams) echo "--stream --single-use --concurrency $SLOW_STREAMS --requests $SLOW_STREAMS --max-tokens $SLOW_TOKENS --itl-ms $SLOW_ITL_MS --ramp 256 --duration-s 120" ;;
  esac
}

measure() { # measure ROUND SCENARIO PEER [extra load args...]
  local round=$1 scenario=$2 peer=$3; shift 3
  local sim_args out
  sim_args=$(printf -- '--sim-pid %s ' "${SIM_PIDS[@]}")
  for port in $SIM1 $SIM2; do curl -sf -X POST "http://127.0.0.1:$port/sim/reset" >/dev/null || true; done
  # shellcheck disable=SC2046
  out=$(timeout 300 "$BIN/tokengate-load" $(peer_args "$peer") $(scenario_args "$scenario") \
    --api-key "$API_KEY" --timeout-s 60 $sim_args "$@" 2>>"$RUN/load.log") ||
    out='{"ok":0,"errors":1,"error_kinds":{"load client failed":1}}'
  printf '{"round":%s,"scenario":"%s","peer":"%s","result":%s}\n' "$round" "$scenario" "$peer" "$out" >>"$RESULTS"
  log "round $round $scenario $peer: $(printf '%s' "$out" | python3 "$BENCH/report.py" --line)"
}

SCENARIOS=(small_c1 small_c64 stream_c64 prompt_1mib_c4 slow_streams)
for ((round = 1; round <= ROUNDS; round++)); do
  for scenario in "${SCENARIOS[@]}"; do
    for peer in "${PEERS[@]}"; do
      measure "$round" "$scenario" "$peer"
      [[ $scenario == slow_streams ]] && sleep 2 || sleep 0.3
    done
    if [[ $scenario == stream_c64 ]]; then
      measure "$round" reload_during_stream_c64 tokengate \
        --reload-target "127.0.0.1:$TG_ADMIN" --reload-token-file "$RUN/admin-token" --reload-every-ms 1000
      sleep 0.3
    fi
  done
done
# tokengate must still be healthy and the reloads must have been applied.
GEN=$(curl -sf "http://127.0.0.1:$TG_ADMIN/health" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("generation"))' || echo "?")
ACCESS_LINES=$(wc -l <"$RUN/tokengate-access.log" 2>/dev/null || echo 0)

# --- report ------------------------------------------------------------------------------------
cp "$RESULTS" "$OUT/latest.jsonl"
export BENCH_MODE=$([[ $QUICK == 1 ]] && echo quick || echo full)
export BENCH_ROUNDS=$ROUNDS BENCH_NOFILE=$NOFILE BENCH_SLOW_REQUESTED=$SLOW_REQUESTED
export BENCH_SLOW_STREAMS=$SLOW_STREAMS BENCH_SLOW_TOKENS=$SLOW_TOKENS BENCH_SLOW_ITL_MS=$SLOW_ITL_MS
export BENCH_TG_GENERATION=$GEN BENCH_ACCESS_LINES=$ACCESS_LINES BENCH_ELAPSED=$(($(date +%s) - T0))
export BENCH_NGINX_VERSION=$( ((HAVE_NGINX)) && "$NGINX_BIN" -v 2>&1 | sed 's#.*/##' || echo "not run")
export BENCH_CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
export BENCH_NPROC=$(nproc)
export BENCH_MEM=$(free -h 2>/dev/null | awk '/^Mem:/ {print $2}')
export BENCH_KERNEL=$(uname -r)
export BENCH_LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
export BENCH_COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")
python3 "$BENCH/report.py" "$RESULTS" >"$OUT/latest.md"
cat "$OUT/latest.md"
log "done in $(($(date +%s) - T0)) s; raw results: $OUT/latest.jsonl; logs: $RUN"
