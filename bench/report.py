#!/usr/bin/env python3
"""Aggregate bench/run.sh measurements (JSON lines) into the markdown report.

Medians over rounds for every figure; errors are summed. Ratios are taken between the
medians of peers measured in the same run (alternating within each round)."""

import json
import os
import statistics
import sys
from collections import defaultdict

SCENARIOS = [
    ("small_c1", "non-streaming, 16 tokens, concurrency 1"),
    ("small_c64", "non-streaming, 16 tokens, concurrency 64"),
    ("stream_c64", "streaming 64 tokens, concurrency 64"),
    ("reload_during_stream_c64", "streaming 64 tokens, c 64, `POST /admin/reload` every 1 s"),
    ("prompt_1mib_c4", "1 MiB prompt, 16 tokens, concurrency 4"),
]
PEERS = ["direct", "nginx", "bare-pingora", "tokengate"]


def env(name, default="?"):
    return os.environ.get(name, default)


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=2):
    if v is None:
        return "—"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}".replace(",", " ")
        return f"{v:.{digits}f}"
    return str(v)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def main(path):
    runs = defaultdict(list)
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rec = json.loads(line)
                runs[(rec["scenario"], rec["peer"])].append(rec["result"])

    def agg(scenario, peer):
        rs = runs.get((scenario, peer))
        if not rs:
            return None
        lat = lambda q: med([(r.get("latency_ms") or {}).get(q) for r in rs])
        ttft = lambda q: med([(r.get("ttft_ms") or {}).get(q) for r in rs])
        proxy = [r.get("proxy") or {} for r in rs]
        kinds = defaultdict(int)
        for r in rs:
            for k, v in (r.get("error_kinds") or {}).items():
                kinds[k] += v
        return {
            "rounds": len(rs),
            "ok": sum(r.get("ok", 0) for r in rs),
            "ok_med": med([r.get("ok") for r in rs]),
            "errors": sum(r.get("errors", 0) for r in rs),
            "kinds": dict(kinds),
            "rps": med([r.get("rps") for r in rs]),
            "p50": lat("p50"),
            "p90": lat("p90"),
            "p99": lat("p99"),
            "ttft50": ttft("p50"),
            "ttft99": ttft("p99"),
            "cpu": med([p.get("cpu_us_per_req") for p in proxy]) if proxy[0].get("pids") else None,
            "rss_peak": med([p.get("rss_kb_peak") for p in proxy]) if proxy[0].get("pids") else None,
            "rss_before": med([p.get("rss_kb_before") for p in proxy]) if proxy[0].get("pids") else None,
            "hwm": max(p.get("hwm_kb", 0) for p in proxy) if proxy[0].get("pids") else None,
            "rss_peak_first": proxy[0].get("rss_kb_peak") if proxy[0].get("pids") else None,
            "peak_in_flight": med([r.get("peak_in_flight") for r in rs]),
            "client_cpu": med([(r.get("client") or {}).get("cpu_us_per_req") for r in rs]),
            "sim_cpu": med([(r.get("sims") or {}).get("cpu_us_per_req") for r in rs]),
            "reloads_ok": sum(r.get("reloads_ok", 0) for r in rs),
            "reloads_failed": sum(r.get("reloads_failed", 0) for r in rs),
            "elapsed": med([r.get("elapsed_s") for r in rs]),
        }

    out = []
    w = out.append
    w(f"# tokengate side-by-side benchmark ({env('BENCH_MODE')} mode)")
    w("")
    w(f"- date: {env('BENCH_DATE', '') or os.popen('date -u +%Y-%m-%dT%H:%MZ').read().strip()}; "
      f"commit {env('BENCH_COMMIT')}; run took {env('BENCH_ELAPSED')} s")
    w(f"- machine: {env('BENCH_NPROC')} CPUs ({env('BENCH_CPU_MODEL')}), {env('BENCH_MEM')} RAM, "
      f"Linux {env('BENCH_KERNEL')}; load average after the run {env('BENCH_LOADAVG')}; "
      f"shared machine, nothing pinned")
    w(f"- peers (all on 127.0.0.1, two `tokengate-sim` vLLM replicas behind each): direct; "
      f"nginx {env('BENCH_NGINX_VERSION')} (2 workers, `proxy_buffering off`, upstream keepalive); "
      f"bare Pingora 0.9.1 pass-through (2 threads, round robin); tokengate (2 threads, all "
      f"features on: API key, token buckets, 4 rules with body rewrite, metering, metrics, "
      f"access log to a file, health checks every 1 s)")
    w(f"- {env('BENCH_ROUNDS')} rounds, peers alternating within each round; figures are "
      f"medians over rounds, errors are totals; CPU = the proxy's utime+stime from /proc "
      f"around each measurement ÷ successful requests (10 ms clock ticks)")
    w("")
    w("## Requests")
    w("")
    w("| scenario | peer | ok | req/s | × direct | p50 ms | p90 ms | p99 ms | p99 − bare ms "
      "| TTFT p50 / p99 ms | proxy CPU µs/req | CPU × bare | errors |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for scenario, title in SCENARIOS:
        base_s = "stream_c64" if scenario == "reload_during_stream_c64" else scenario
        direct = agg(base_s, "direct")
        bare = agg(base_s, "bare-pingora")
        for peer in PEERS:
            a = agg(scenario, peer)
            if a is None:
                continue
            ttft = f"{fmt(a['ttft50'])} / {fmt(a['ttft99'])}" if a["ttft50"] is not None else "—"
            p99_bare = (a["p99"] - bare["p99"]) if bare and peer != "bare-pingora" and a["p99"] is not None else None
            cpu_bare = ratio(a["cpu"], bare["cpu"]) if bare and peer != "bare-pingora" else None
            errs = str(a["errors"])
            if a["kinds"]:
                errs += " (" + ", ".join(f"{k}: {v}" for k, v in a["kinds"].items()) + ")"
            if scenario == "reload_during_stream_c64":
                errs += f"; reloads ok {a['reloads_ok']}, failed {a['reloads_failed']}"
            w(f"| {title} | {peer} | {a['ok']} | {fmt(a['rps'], 0)} | "
              f"{fmt(ratio(a['rps'], direct['rps']) if direct else None)} | "
              f"{fmt(a['p50'], 3)} | {fmt(a['p90'], 3)} | {fmt(a['p99'], 3)} | "
              f"{('+' if p99_bare is not None and p99_bare >= 0 else '') + fmt(p99_bare, 3) if p99_bare is not None else '—'} | "
              f"{ttft} | {fmt(a['cpu'], 1)} | {fmt(cpu_bare)} | {errs} |")
    w("")
    w("## Concurrent slow streams (memory per stream)")
    w("")
    w(f"{env('BENCH_SLOW_STREAMS')} streams at once (requested {env('BENCH_SLOW_REQUESTED')}; "
      f"file limit {env('BENCH_NOFILE')}, a proxied stream holds 2 descriptors), one connection "
      f"each, {env('BENCH_SLOW_TOKENS')} tokens one every {env('BENCH_SLOW_ITL_MS')} ms. "
      f"RSS sampled every 100 ms during the run; per stream = (peak − RSS before) ÷ peak "
      f"concurrent streams (medians over rounds). Freed memory is kept by the allocator, so "
      f"\"RSS before\" rises over the first rounds and then levels off; round 1 is the cleanest "
      f"reading of RSS at this many streams.")
    w("")
    w("| peer | streams ok | peak concurrent | RSS before MB | peak RSS MB | peak RSS round 1 MB "
      "| KiB / stream | VmHWM MB | proxy CPU µs/stream | CPU × bare | errors |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    bare = agg("slow_streams", "bare-pingora")
    for peer in PEERS:
        a = agg("slow_streams", peer)
        if a is None:
            continue
        per = None
        if a["rss_peak"] is not None and a["peak_in_flight"]:
            per = (a["rss_peak"] - a["rss_before"]) / a["peak_in_flight"]
        errs = str(a["errors"])
        if a["kinds"]:
            errs += " (" + ", ".join(f"{k}: {v}" for k, v in a["kinds"].items()) + ")"
        mb = lambda kb: kb / 1024 if kb is not None else None
        w(f"| {peer} | {fmt(a['ok_med'], 0)} | {fmt(a['peak_in_flight'], 0)} | "
          f"{fmt(mb(a['rss_before']), 1)} | {fmt(mb(a['rss_peak']), 1)} | "
          f"{fmt(mb(a['rss_peak_first']), 1)} | {fmt(per, 1)} | "
          f"{fmt(mb(a['hwm']), 1)} | {fmt(a['cpu'], 1)} | "
          f"{fmt(ratio(a['cpu'], bare['cpu']) if bare and peer != 'bare-pingora' else None)} | {errs} |")
    w("")

    # Targets.
    w("## Targets")
    w("")
    w("| target | measured | verdict |")
    w("|---|---|---|")

    def verdict(ok):
        return "met" if ok else "**missed**"

    for scenario, title in SCENARIOS + [("slow_streams", "slow streams")]:
        if scenario == "reload_during_stream_c64":
            continue
        t, b = agg(scenario, "tokengate"), agg(scenario, "bare-pingora")
        if t and b and t["cpu"] and b["cpu"]:
            r = t["cpu"] / b["cpu"]
            miss = f" (by {(r / 1.15 - 1) * 100:.0f} %)" if r > 1.15 else ""
            w(f"| CPU per request ≤ 1.15 × bare Pingora — {title} | {r:.2f} × "
              f"({t['cpu']:.1f} vs {b['cpu']:.1f} µs) | {verdict(r <= 1.15)}{miss} |")
    # Issue #16: p99 at c 1 within 0.1 ms of bare Pingora, added p99 at c 64 within 1 ms.
    for scenario, title, bound in [("small_c1", "non-streaming c 1", 0.1),
                                   ("small_c64", "non-streaming c 64", 1.0),
                                   ("stream_c64", "streaming c 64", 1.0)]:
        t, b = agg(scenario, "tokengate"), agg(scenario, "bare-pingora")
        if t and b:
            d = t["p99"] - b["p99"]
            miss = f" (by {d - bound:.2f} ms)" if d > bound else ""
            w(f"| p99 ≤ bare Pingora's + {bound} ms — {title} | {d:+.3f} ms "
              f"({t['p99']:.3f} vs {b['p99']:.3f}) | {verdict(d <= bound)}{miss} |")
    # Issue #16: ≤ 24 KiB per stream by VmHWM after every round, not just the first.
    t, b = agg("slow_streams", "tokengate"), agg("slow_streams", "bare-pingora")
    if t and t["hwm"] and t["peak_in_flight"]:
        per = t["hwm"] / t["peak_in_flight"]
        bare_txt = (f"; bare Pingora {b['hwm'] / b['peak_in_flight']:.1f} KiB"
                    if b and b["hwm"] and b["peak_in_flight"] else "")
        miss = f" ({per / 24:.2f} × the target)" if per > 24 else ""
        w(f"| ≤ 24 KiB per open stream (VmHWM after {env('BENCH_ROUNDS')} rounds ÷ peak concurrent "
          f"streams) | {per:.1f} KiB ({t['hwm'] / 1024:.1f} MB, {fmt(t['peak_in_flight'], 0)} "
          f"streams){bare_txt} | {verdict(per <= 24)}{miss} |")
    total_errors = sum(r.get("errors", 0) for rs in runs.values() for r in rs)
    reload = agg("reload_during_stream_c64", "tokengate")
    w(f"| zero errors in every scenario (all peers) | {total_errors} errors"
      + (f"; {reload['reloads_ok']} reloads applied, {reload['reloads_failed']} failed" if reload else "")
      + f"; tokengate config generation at the end {env('BENCH_TG_GENERATION')}, "
      f"access-log lines {env('BENCH_ACCESS_LINES')} | {verdict(total_errors == 0)} |")
    w("")
    d1 = agg("small_c1", "direct")
    if d1 and d1["p50"] and d1["p50"] >= 0.9:
        w(f"Note: direct non-streaming p50 at concurrency 1 is {d1['p50']:.3f} ms: tokengate-sim "
          f"answers non-streaming requests after `tokio::time::sleep(generation_time)`, which "
          f"with a zero delay still waits for the next 1 ms timer tick. Every peer carries that "
          f"floor, so non-streaming ratios to direct understate the proxies' share; the "
          f"added-latency and CPU columns are unaffected.")
        w("")
    w("Context: the load client and both simulators share the same CPUs with the proxy; "
      "their CPU per request (median, tokengate runs) was: client "
      + ", ".join(f"{s}: {fmt(agg(s, 'tokengate')['client_cpu'], 1)} µs"
                  for s, _ in SCENARIOS[:3] if agg(s, "tokengate"))
      + "; simulators "
      + ", ".join(f"{s}: {fmt(agg(s, 'tokengate')['sim_cpu'], 1)} µs"
                  for s, _ in SCENARIOS[:3] if agg(s, "tokengate"))
      + ". Throughput is therefore bounded by the whole machine, not the proxy alone; "
      "CPU per request is the figure that isolates the proxy.")
    print("\n".join(out))


def line():
    """One-line summary of one load-client result (stdin), for the progress log."""
    r = json.load(sys.stdin)
    lat = r.get("latency_ms") or {}
    proxy = r.get("proxy") or {}
    print(f"ok={r.get('ok')} errors={r.get('errors')} {r.get('error_kinds') or ''} "
          f"rps={r.get('rps', 0):.0f} p99={lat.get('p99')} ms "
          f"cpu/req={proxy.get('cpu_us_per_req', 0):.1f} us rss_peak={proxy.get('rss_kb_peak', 0)} kB "
          f"peak_in_flight={r.get('peak_in_flight')} reloads={r.get('reloads_ok', 0)}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--line"]:
        line()
    else:
        main(sys.argv[1])
