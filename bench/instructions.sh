#!/usr/bin/env bash
# CPU per request as instructions, tokengate (every feature on: bench/tokengate-bench.toml) vs
# bare Pingora (bench/bare_pingora.rs), same simulated replicas, same load, one run. Each proxy
# runs under callgrind twice, at N1 and N2 requests; the difference over N2 - N1 is
# instructions per request, free of start-up and of whatever else the machine runs (callgrind
# counts instructions, not time: the figures repeat on a busy 2-core machine, where wall-clock
# CPU ratios swing by ±20 %). Also writes a profile of tokengate's own functions.
#
#   bash bench/instructions.sh              # builds release, writes bench/results/instructions.md
#   SKIP_BUILD=1 BIN=/path/to/release bash bench/instructions.sh
#   SCENARIOS="small stream" N1=200 N2=1200 bash bench/instructions.sh
#
# KEEP=DIR keeps the callgrind outputs there. Ports: PORT_BASE (default 24500) … +5. Needs valgrind (Debian: apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH=$ROOT/bench
BIN=${BIN:-$ROOT/target/release}
OUT=$ROOT/bench/results
mkdir -p "$OUT"
N1=${N1:-200} N2=${N2:-1200}
SCENARIOS=${SCENARIOS:-small stream prompt_1mib}
PB=${PORT_BASE:-24500}
SIM1=$PB SIM2=$((PB + 1)) TG_PORT=$((PB + 2)) TG_ADMIN=$((PB + 3)) BARE_PORT=$((PB + 4))
log() { printf '[instructions] %s\n' "$*" >&2; }

command -v valgrind >/dev/null || { log "valgrind missing (apt-get install valgrind)"; exit 1; }
[[ ${SKIP_BUILD:-0} == 1 ]] || cargo build --release --locked --bins >&2

RUN=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # KEEP=DIR keeps the callgrind outputs (callgrind_annotate --inclusive=yes DIR/cg.*).
  [[ -z ${KEEP:-} ]] || cp "$RUN"/cg.* "$KEEP"/ 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT
wait_port() { for _ in $(seq 1200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; log "port $1 never opened"; exit 1; }

for port in $SIM1 $SIM2; do
  "$BIN/tokengate-sim" --listen "127.0.0.1:$port" --served-model-name bench-model >/dev/null 2>&1 &
  PIDS+=($!)
done
wait_port "$SIM1"; wait_port "$SIM2"

sed -e "s#@BENCH@#$BENCH#g" -e "s#@RUN@#$RUN#g" -e "s#@TG_PORT@#$TG_PORT#g" \
  -e "s#@TG_ADMIN@#$TG_ADMIN#g" -e "s#@SIM1@#$SIM1#g" -e "s#@SIM2@#$SIM2#g" \
  "$BENCH/tokengate-bench.toml" >"$RUN/tokengate.toml"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$RUN/admin-token"
KEY=$("$BIN/tokengate" key new --keys-file "$RUN/keys.toml" --name bench \
  --requests-per-minute 1000000000 --tokens-per-minute 1000000000000 \
  --max-concurrent 100000 -c "$RUN/tokengate.toml" 2>/dev/null)

scenario_args() {
  case $1 in
  small) echo "--concurrency 8 --max-tokens 16" ;;
  stream) echo "--stream --concurrency 8 --max-tokens 64" ;;
  prompt_1mib) echo "--concurrency 4 --prompt-bytes 1048576 --max-tokens 16" ;;
  *) log "unknown scenario $1"; exit 1 ;;
  esac
}

start_peer() { # $1 = peer, $2 = callgrind output file; sets PEER_PID and PEER_TARGET
  case $1 in
  tokengate)
    valgrind --tool=callgrind --callgrind-out-file="$2" \
      "$BIN/tokengate" run -c "$RUN/tokengate.toml" >"$2.log" 2>&1 &
    PEER_TARGET="--target 127.0.0.1:$TG_PORT --model bench --api-key $KEY"
    wait_port "$TG_PORT" ;;
  bare-pingora)
    valgrind --tool=callgrind --callgrind-out-file="$2" \
      "$BIN/bare-pingora" --listen "127.0.0.1:$BARE_PORT" --upstream "127.0.0.1:$SIM1" \
      --upstream "127.0.0.1:$SIM2" --threads 2 --read-buffer-bytes 0 >"$2.log" 2>&1 &
    PEER_TARGET="--target 127.0.0.1:$BARE_PORT --model bench-model"
    wait_port "$BARE_PORT" ;;
  esac
  PEER_PID=$!
}

declare -A IR
for scenario in $SCENARIOS; do
  for peer in bare-pingora tokengate; do
    for n in "$N1" "$N2"; do
      out="$RUN/cg.$scenario.$peer.$n"
      start_peer "$peer" "$out"
      # shellcheck disable=SC2046,SC2086
      "$BIN/tokengate-load" $PEER_TARGET $(scenario_args "$scenario") --requests "$n" \
        --duration-s 900 --timeout-s 120 >"$out.load.json"
      python3 - "$out.load.json" "$n" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
if r.get("ok") != int(sys.argv[2]):
    sys.exit(f"load run incomplete: {r}")
PY
      kill -TERM "$PEER_PID"; wait "$PEER_PID" 2>/dev/null || true
      IR[$scenario.$peer.$n]=$(awk '/^summary:/ {print $2}' "$out")
      log "$scenario $peer $n requests: ${IR[$scenario.$peer.$n]} instructions"
    done
  done
  # Where tokengate's instructions go (self cost, top functions), from the larger run.
  callgrind_annotate --threshold=90 "$RUN/cg.$scenario.tokengate.$N2" 2>/dev/null |
    sed -n '1,60p' >"$OUT/instructions-profile-$scenario.txt" || true
done

per() { python3 -c "print((${IR[$1.$N2]} - ${IR[$1.$N1]}) / ($N2 - $N1))"; }
{
  echo "# Instructions per request ($(date -u +%F), callgrind, $N1 and $N2 requests, release build)"
  echo
  echo "| scenario | bare Pingora | tokengate | tokengate ÷ bare |"
  echo "|---|---:|---:|---:|"
  for scenario in $SCENARIOS; do
    B=$(per "$scenario.bare-pingora")
    T=$(per "$scenario.tokengate")
    printf '| %s | %.0f | %.0f | %.3f |\n' "$scenario" "$B" "$T" "$(python3 -c "print($T / $B)")"
  done
} | tee "$OUT/instructions.md"
