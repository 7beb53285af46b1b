#!/usr/bin/env bash
# Replica-choice policies under prefix-heavy streaming load: 3 simulated replicas, one 4x
# slower than the others; each policy in turn (alternating within rounds) through one
# tokengate whose cluster policy is switched by config reload. Reports TTFT p50/p99, the slow
# replica's share and errors to bench/results/policies.md. 127.0.0.1 only, bounded in time.
#
#   bash bench/policies.sh           # ROUNDS=2 DUR=8 CONC=16 PREFIXES=4 overridable
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/target/release
OUT=$ROOT/bench/results
mkdir -p "$OUT"
ROUNDS=${ROUNDS:-2}
DUR=${DUR:-8}
CONC=${CONC:-16}
PREFIXES=${PREFIXES:-4}
TOKENS=${TOKENS:-32}
[[ ${SKIP_BUILD:-0} == 1 ]] || cargo build --release --bins >&2

RUN=$(mktemp -d /tmp/tokengate-policies.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$RUN"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
S1=$(free_port); S2=$(free_port); S3=$(free_port); TG=$(free_port); ADM=$(free_port)
start_sim() { "$BIN/tokengate-sim" --listen "127.0.0.1:$1" --served-model-name m --itl-ms "$2" --ttft-ms "$3" --max-running 4 >/dev/null & PIDS+=($!); }
# Two fast replicas and one 4x slower (inter-token 10 ms vs 40 ms, first token 20 ms vs 80 ms).
start_sim "$S1" 10 20; start_sim "$S2" 10 20; start_sim "$S3" 40 80

echo policies-admin > "$RUN/admin-token"
write_config() {
  cat > "$RUN/tg.toml.tmp" <<TOML
[server]
listen = ["127.0.0.1:$TG"]
admin_listen = "127.0.0.1:$ADM"
admin_token_file = "admin-token"
access_log = "off"
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1
pid_file = "$RUN/tg.pid"
upgrade_sock = "$RUN/tg.sock"

[[clusters]]
name = "pool"
flavour = "vllm"
replicas = ["127.0.0.1:$S1", "127.0.0.1:$S2", "127.0.0.1:$S3"]
policy = "$1"
health = { interval_ms = 1000 }
scrape = { enabled = true, interval_ms = 250 }

[[models]]
alias = "m"
cluster = "pool"
TOML
  mv "$RUN/tg.toml.tmp" "$RUN/tg.toml"
}
write_config round-robin
"$BIN/tokengate" run -c "$RUN/tg.toml" >"$RUN/tg.log" 2>&1 & PIDS+=($!)
for _ in $(seq 100); do curl -sf "127.0.0.1:$ADM/health" | grep -q '"ready": true' && break; sleep 0.1; done

slow_requests() { curl -sf "127.0.0.1:$S3/sim/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests_total"])'; }
total_requests() { local t=0; for p in $S1 $S2 $S3; do t=$((t + $(curl -sf "127.0.0.1:$p/sim/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests_total"])'))); done; echo $t; }

: > "$RUN/results.jsonl"
for round in $(seq "$ROUNDS"); do
  for policy in round-robin least-outstanding load-aware prefix-affinity; do
    write_config "$policy"
    curl -sf -X POST -H "authorization: Bearer policies-admin" "127.0.0.1:$ADM/admin/reload" >/dev/null
    sleep 1
    s0=$(slow_requests); t0=$(total_requests)
    out=$("$BIN/tokengate-load" --target "127.0.0.1:$TG" --model m --stream --max-tokens "$TOKENS" \
      --concurrency "$CONC" --requests 1000000 --duration-s "$DUR" --prefixes "$PREFIXES" --prompt-bytes 200)
    s1=$(slow_requests); t1=$(total_requests)
    echo "$out" | python3 -c "import json,sys; d=json.load(sys.stdin); d['policy']='$policy'; d['slow_share']=($s1-$s0)/max(1,$t1-$t0); print(json.dumps(d))" >> "$RUN/results.jsonl"
    echo "round $round $policy done" >&2
  done
done

python3 - "$RUN/results.jsonl" "$OUT/policies.md" "$ROUNDS" "$DUR" "$CONC" "$PREFIXES" "$TOKENS" <<'PY'
import json, statistics, sys, datetime, os
rows = [json.loads(l) for l in open(sys.argv[1])]
rounds, dur, conc, prefixes, tokens = sys.argv[3:8]
out = [f"# Replica-choice policies ({datetime.datetime.utcnow():%Y-%m-%dT%H:%MZ})", "",
       f"3 simulated vLLM replicas (two at 10 ms/token, first token 20 ms; one 4x slower: 40 ms/token, 80 ms),"
       f" streaming {tokens} tokens, concurrency {conc}, {prefixes} shared ~2 KiB system prompts (prefix-heavy),"
       f" {dur} s per measurement, {rounds} rounds alternating the policies (medians). Machine: {os.cpu_count()} CPUs.", "",
       "| policy | req/s | TTFT p50 ms | TTFT p99 ms | latency p99 ms | slow replica's share | errors |",
       "|---|---:|---:|---:|---:|---:|---:|"]
for policy in ["round-robin", "least-outstanding", "load-aware", "prefix-affinity"]:
    rs = [r for r in rows if r["policy"] == policy]
    med = lambda f: statistics.median(f(r) for r in rs)
    out.append(f"| {policy} | {med(lambda r: r['rps']):.0f} | {med(lambda r: r['ttft_ms']['p50']):.1f} | "
               f"{med(lambda r: r['ttft_ms']['p99']):.1f} | {med(lambda r: r['latency_ms']['p99']):.1f} | "
               f"{med(lambda r: r['slow_share']):.2f} | {sum(r['errors'] for r in rs)} |")
text = "\n".join(out) + "\n"
open(sys.argv[2], "w").write(text)
print(text)
PY
