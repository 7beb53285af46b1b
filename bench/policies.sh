#!/usr/bin/env bash
# Replica-choice policies on the realistic simulator (`tokengate-sim --engine batching`):
# 3 replicas (continuous batching, max 8 running, FIFO queue, a 512-block prefix cache each),
# one at a quarter of the speed; prefix-heavy streaming load (a few long shared system
# prompts, every request from a different user); each policy in turn, alternating within
# rounds, through one tokengate whose cluster policy is switched by config reload. Reports
# TTFT p50/p99, ITL, throughput, the replicas' prefix-cache hit rate and per-replica shares to
# bench/results/policies.md (medians over rounds; each round on fresh replicas). 127.0.0.1 only, bounded in time.
#
#   bash bench/policies.sh     # ROUNDS=3 DUR=10 CONC=48 PREFIXES=6 SYSTEM_BYTES=8192 overridable
#   PROFILE=debug SKIP_BUILD=1 bash bench/policies.sh    # iterate on a debug build
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PROFILE=${PROFILE:-release}
BIN=$ROOT/target/$PROFILE
OUT=$ROOT/bench/results
mkdir -p "$OUT"
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-10}
CONC=${CONC:-48}
PREFIXES=${PREFIXES:-6}
SYSTEM_BYTES=${SYSTEM_BYTES:-8192}
TOKENS=${TOKENS:-32}
SEQS=${SEQS:-8}
CACHE_BLOCKS=${CACHE_BLOCKS:-512}
POLICIES=${POLICIES:-"round-robin least-outstanding prefix-affinity scored"}
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  if [[ $PROFILE == release ]]; then cargo build --release --locked --bins >&2; else cargo build --locked --bins >&2; fi
fi

RUN=$(mktemp -d /tmp/tokengate-policies.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$RUN"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
TG=$(free_port); ADM=$(free_port)
SIM_PIDS=()
start_sim() {
  "$BIN/tokengate-sim" --listen "127.0.0.1:$1" --served-model-name m --engine batching \
    --max-num-seqs "$SEQS" --cache-blocks "$CACHE_BLOCKS" --speed "$2" >/dev/null & PIDS+=($!); SIM_PIDS+=($!)
}
# Each round gets fresh replicas on new ports: cold caches, and a new rendezvous placement of
# the prefixes for prefix-affinity (which prefixes hash to the slow replica is luck). Two
# replicas at full speed (vLLM-like defaults: 10k prompt tokens/s prefill, 12 ms/token decode
# growing 3 % per running request) and one at a quarter of the speed.
new_replicas() {
  for p in "${SIM_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  SIM_PIDS=()
  S1=$(free_port); S2=$(free_port); S3=$(free_port)
  start_sim "$S1" 1; start_sim "$S2" 1; start_sim "$S3" 0.25
  for p in $S1 $S2 $S3; do
    for _ in $(seq 100); do curl -sf "127.0.0.1:$p/health" >/dev/null && break; sleep 0.1; done
  done
}
new_replicas

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
timeouts = { read_ms = 60000 }

[[models]]
alias = "m"
cluster = "pool"
TOML
  mv "$RUN/tg.toml.tmp" "$RUN/tg.toml"
}
write_config round-robin
"$BIN/tokengate" run -c "$RUN/tg.toml" >"$RUN/tg.log" 2>&1 & PIDS+=($!)
for _ in $(seq 100); do curl -sf "127.0.0.1:$ADM/health" | grep -q '"ready": true' && break; sleep 0.1; done

# Per replica: requests received, prefix-cache hit and query tokens (the sim's counters).
sample_sims() {
  for p in $S1 $S2 $S3; do
    req=$(curl -sf "127.0.0.1:$p/sim/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests_total"])')
    curl -sf "127.0.0.1:$p/metrics" | python3 -c '
import sys
v = {}
for line in sys.stdin:
    if line.startswith("vllm:prefix_cache_"):
        name, value = line.rsplit(" ", 1)
        v[name.split("{")[0]] = float(value)
print(int(v.get("vllm:prefix_cache_hits_total", 0)), int(v.get("vllm:prefix_cache_queries_total", 0)), end=" ")'
    echo "$req"
  done | tr '\n' ' '
}

: > "$RUN/results.jsonl"
read -r -a ORDER <<< "$POLICIES"
for round in $(seq "$ROUNDS"); do
  [[ $round == 1 ]] || new_replicas
  # Rotate the order each round, so no policy always meets the cold caches.
  k=$(( (round - 1) % ${#ORDER[@]} ))
  for policy in "${ORDER[@]:k}" "${ORDER[@]:0:k}"; do
    write_config "$policy"
    curl -sf -X POST -H "authorization: Bearer policies-admin" "127.0.0.1:$ADM/admin/reload" >/dev/null
    # Let the previous policy's requests drain and the replicas' queues empty.
    sleep 2
    before=$(sample_sims)
    out=$("$BIN/tokengate-load" --target "127.0.0.1:$TG" --model m --stream --max-tokens "$TOKENS" \
      --concurrency "$CONC" --requests 1000000 --duration-s "$DUR" --prefixes "$PREFIXES" \
      --system-bytes "$SYSTEM_BYTES" --unique-users --prompt-bytes 200 --timeout-s 60)
    after=$(sample_sims)
    echo "$out" | python3 -c "
import json, sys
d = json.load(sys.stdin)
b = [int(x) for x in '$before'.split()]; a = [int(x) for x in '$after'.split()]
delta = [y - x for x, y in zip(b, a)]
hits = sum(delta[0::3]); queries = sum(delta[1::3]); reqs = delta[2::3]
d['policy'] = '$policy'
d['hit_rate'] = hits / max(1, queries)
d['shares'] = [r / max(1, sum(reqs)) for r in reqs]
print(json.dumps(d))" >> "$RUN/results.jsonl"
    echo "round $round $policy: $(tail -1 "$RUN/results.jsonl" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(round(d["rps"],1), "req/s, ttft p99", d["ttft_ms"]["p99"], "hit", round(d["hit_rate"],2), [round(x,2) for x in d["shares"]])')" >&2
  done
done
cp "$RUN/results.jsonl" "$OUT/policies.jsonl"

python3 - "$RUN/results.jsonl" "$OUT/policies.md" "$ROUNDS" "$DUR" "$CONC" "$PREFIXES" "$TOKENS" "$SYSTEM_BYTES" "$SEQS" "$CACHE_BLOCKS" "$PROFILE" "$POLICIES" <<'PY'
import json, statistics, sys, datetime, os
rows = [json.loads(l) for l in open(sys.argv[1])]
rounds, dur, conc, prefixes, tokens, system, seqs, cache, profile = sys.argv[3:12]
out = [f"# Replica-choice policies on the batching simulator ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%MZ})", "",
       f"3 `tokengate-sim --engine batching` replicas (max {seqs} running, FIFO queue, {cache}-block prefix cache,"
       f" 10k tokens/s prefill, 12 ms/token decode), the third at `--speed 0.25`; {prefixes} shared {system}-byte system prompts,"
       f" every request a different user (unique 200-byte message), streaming {tokens} tokens, {conc} concurrent clients"
       f" (closed loop), {dur} s per measurement, {rounds} rounds alternating the policies (fresh replicas on new ports each round, order rotated), medians."
       f" {profile} build, {os.cpu_count()} CPUs. ITL = (latency − TTFT) / (tokens − 1) per request;"
       f" hit rate = prefix-cache hit tokens / queried tokens summed over the replicas; shares = requests per replica (slow one last).", "",
       "| policy | req/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | prefix-cache hit rate | shares (fast, fast, slow) | errors |",
       "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
policies = sys.argv[12].split()
for policy in policies:
    rs = [r for r in rows if r["policy"] == policy]
    med = lambda f: statistics.median(f(r) for r in rs)
    shares = " / ".join(f"{statistics.median(r['shares'][k] for r in rs):.2f}" for k in range(3))
    out.append(f"| {policy} | {med(lambda r: r['rps']):.1f} | {med(lambda r: r['ttft_ms']['p50']):.0f} | "
               f"{med(lambda r: r['ttft_ms']['p99']):.0f} | {med(lambda r: r['itl_ms']['p50']):.1f} | "
               f"{med(lambda r: r['itl_ms']['p99']):.1f} | {med(lambda r: r['hit_rate']):.2f} | {shares} | "
               f"{sum(r['errors'] for r in rs)} |")
text = "\n".join(out) + "\n"
open(sys.argv[2], "w").write(text)
print(text)
PY
