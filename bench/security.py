#!/usr/bin/env python3
"""Figures for the README's security section (issue #13): memory under declared and slow
bodies, survival under an address-space limit, the body budget, the body deadline, and normal
latency next to thousands of slow connections. Real tokengate + tokengate-sim on 127.0.0.1,
bounded in connections and time.

    cargo build --release --bins && python3 bench/security.py [target/release]
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release"
SERVED = "sim-model"


def mem(pid):
    rss = vsz = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) // 1024
            elif line.startswith("VmSize:"):
                vsz = int(line.split()[1]) // 1024
    return rss, vsz


def start_sim():
    p = subprocess.Popen([f"{BIN}/tokengate-sim", "--listen", "127.0.0.1:0",
                          "--served-model-name", SERVED],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    host, port = line.split()[1].rsplit(":", 1)
    return p, (host, int(port))


def start_proxy(sim_addr, server_extra="", prefix=()):
    d = tempfile.mkdtemp(prefix="tg-sec-")
    with open(f"{d}/admin-token", "w") as f:
        f.write("bench-admin-token-0123456789")
    cfg = f"""[server]
listen = ["127.0.0.1:0"]
admin_listen = "127.0.0.1:0"
threads = 2
pid_file = "{d}/pid"
upgrade_sock = "{d}/sock"
admin_token_file = "admin-token"
access_log = "off"
{server_extra}

[[clusters]]
name = "pool"
flavour = "vllm"
replicas = ["{sim_addr[0]}:{sim_addr[1]}"]

[[models]]
alias = "m"
cluster = "pool"
served_name = "{SERVED}"
"""
    with open(f"{d}/tokengate.toml", "w") as f:
        f.write(cfg)
    ready = f"{d}/ready.json"
    p = subprocess.Popen(list(prefix) + [f"{BIN}/tokengate", "run", "--config", f"{d}/tokengate.toml",
                                         "--ready-file", ready],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=dict(os.environ, RUST_LOG="error"))
    deadline = time.time() + 30
    while not os.path.exists(ready):
        if time.time() > deadline or p.poll() is not None:
            raise SystemExit("proxy did not start")
        time.sleep(0.05)
    bound = json.load(open(ready))
    host, port = bound["listen"][0].rsplit(":", 1)
    return p, (host, int(port))


def head(length, extra=""):
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n").encode()


def normal_request(addr):
    body = b'{"model":"m","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}'
    s = socket.create_connection(addr, timeout=30)
    t = time.perf_counter()
    s.sendall(head(len(body), "Connection: close\r\n") + body)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return time.perf_counter() - t, int(data.split(b" ", 2)[1]) if data else 0


def p99(addr, n=300):
    times = sorted(normal_request(addr)[0] for _ in range(n))
    return times[int(0.99 * (n - 1))] * 1000, times[n // 2] * 1000


def open_declared(addr, count, length=16_000_000):
    socks = []
    for _ in range(count):
        s = socket.create_connection(addr, timeout=30)
        s.sendall(head(length) + b"{")
        socks.append(s)
    return socks


def declared_memory(sim_addr):
    proxy, addr = start_proxy(sim_addr)
    before = mem(proxy.pid)
    socks = open_declared(addr, 1000)
    time.sleep(3)
    during = mem(proxy.pid)
    for s in socks:
        s.close()
    time.sleep(2)
    after = mem(proxy.pid)
    status = normal_request(addr)[1]
    proxy.kill()
    print(f"1000 x CL 16 MB, nothing sent: RSS {before[0]} -> {during[0]} MB (+{during[0]-before[0]}), "
          f"VSZ {before[1]} -> {during[1]} MB (+{during[1]-before[1]}); after close RSS {after[0]} MB; "
          f"next request {status}")


def address_space_limit(sim_addr):
    proxy, addr = start_proxy(sim_addr, prefix=("prlimit", "--as=4294967296", "--"))
    socks = open_declared(addr, 300)
    time.sleep(2)
    alive = proxy.poll() is None
    status = normal_request(addr)[1] if alive else 0
    for s in socks:
        s.close()
    proxy.kill()
    print(f"prlimit --as=4GiB, 300 x CL 16 MB: process alive={alive}, next request {status}")


def slow_budget(sim_addr):
    budget = 256 * 1024 * 1024
    proxy, addr = start_proxy(sim_addr, f"max_buffered_body_bytes = {budget}\n"
                                        f"client_body_timeout_ms = 60000")
    before = mem(proxy.pid)
    length = 15_900_000
    socks, refused, fast = [], 0, []
    for _ in range(64):
        s = socket.create_connection(addr, timeout=30)
        t = time.perf_counter()
        s.sendall(head(length))
        s.settimeout(0.2)
        try:
            data = s.recv(4096)
            if b" 503 " in data.split(b"\r\n", 1)[0]:
                refused += 1
                fast.append((time.perf_counter() - t) * 1000)
                s.close()
                continue
        except socket.timeout:
            pass
        socks.append(s)
    # The admitted ones send their bodies slowly: 1 MB per round, 20 rounds.
    peak = 0
    piece = b" " * 1_000_000
    for _ in range(16):
        for s in socks:
            try:
                s.sendall(piece)
            except OSError:
                pass
        peak = max(peak, mem(proxy.pid)[0])
        time.sleep(0.2)
    for s in socks:
        s.close()
    time.sleep(2)
    after = mem(proxy.pid)
    proxy.kill()
    print(f"64 x 15.9 MB slow, budget 256 MiB: {len(socks)} admitted, {refused} refused with 503 "
          f"(max {max(fast) if fast else 0:.1f} ms); RSS {before[0]} -> peak {peak} MB "
          f"(+{peak-before[0]}, budget 256); after close {after[0]} MB")


def dribble(addr, request_head, body_bytes, limit_s=40):
    s = socket.create_connection(addr, timeout=limit_s)
    s.sendall(request_head)
    s.settimeout(1.0)
    t = time.time()
    data = b""
    while time.time() - t < limit_s:
        try:
            if body_bytes:
                s.sendall(b" ")
            else:
                s.sendall(b"X")
        except OSError:
            break
        try:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                break
        except socket.timeout:
            pass
    return time.time() - t, data.split(b"\r\n", 1)[0].decode(errors="replace")


def deadlines(sim_addr):
    proxy, addr = start_proxy(sim_addr, "client_body_timeout_ms = 5000\nclient_header_timeout_ms = 5000")
    took, line = dribble(addr, head(1000), True)
    print(f"body at 1 byte/s, client_body_timeout_ms = 5000: cut after {took:.1f} s: {line}")
    took, line = dribble(addr, b"POST /v1/chat/completions HTTP/1.1\r\nX-Slow: ", False, limit_s=20)
    print(f"header at 1 byte/s, client_header_timeout_ms = 5000: cut after {took:.1f} s: "
          f"{line or '(no answer, still open at the bench limit)'}")
    proxy.kill()


def drip_process(addr, slow_headers, slow_bodies, ready, stop):
    """Holds the slow connections in its own process, so the client measuring latency never
    waits on this one (one Python process would serialise both on its interpreter lock)."""
    socks = []
    for i in range(slow_headers + slow_bodies):
        s = socket.create_connection(addr, timeout=30)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nX-Slow: " if i < slow_headers
                  else head(100000))
        socks.append(s)
    ready.set()
    while not stop.is_set():
        for s in socks:
            try:
                s.send(b" ")
            except OSError:
                pass
        stop.wait(1)
    for s in socks:
        s.close()


def slow_connections_latency(sim_addr, slow_headers=1000, slow_bodies=1000):
    import multiprocessing
    proxy, addr = start_proxy(sim_addr, "client_body_timeout_ms = 60000\nclient_header_timeout_ms = 60000")
    p99(addr, 100)  # warm
    idle = p99(addr)
    ready, stop = multiprocessing.Event(), multiprocessing.Event()
    dripper = multiprocessing.Process(target=drip_process,
                                      args=(addr, slow_headers, slow_bodies, ready, stop))
    dripper.start()
    ready.wait(60)
    time.sleep(1)
    loaded = p99(addr)
    rss = mem(proxy.pid)[0]
    stop.set()
    dripper.join()
    proxy.kill()
    print(f"normal requests p99/p50: idle {idle[0]:.2f}/{idle[1]:.2f} ms; with {slow_headers} slow "
          f"headers + {slow_bodies} slow bodies open (1 byte/s each) {loaded[0]:.2f}/{loaded[1]:.2f} ms "
          f"({loaded[0]/idle[0]:.2f}x p99); RSS {rss} MB")


def main():
    sim, sim_addr = start_sim()
    try:
        declared_memory(sim_addr)
        address_space_limit(sim_addr)
        slow_budget(sim_addr)
        deadlines(sim_addr)
        slow_connections_latency(sim_addr)
    finally:
        sim.kill()


if __name__ == "__main__":
    main()
