"""Fixtures: the demo's gateway (conf/demo.toml: its simulated replicas, keys, limits and rules)
on ports the processes report, driven by the OpenAI SDK."""

import json
import os
import signal
import socket
import subprocess
import threading
import time
import tomllib
import urllib.request
from pathlib import Path

import httpx
import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("TOKENGATE_BIN", ROOT / "target" / "debug" / "tokengate"))
ANY_PORT = "127.0.0.1:0"
CANARY_RULES = ROOT / "lua-free-rules" / "50-canary.toml"

MASK = (1 << 64) - 1


def stable_hash(salt: int, data: bytes) -> int:
    """src/rules/action.rs `stable_hash` (FNV-1a, then SplitMix64's finaliser): what a sticky
    `split` hashes a key name with."""
    h = 0xCBF29CE484222325 ^ salt
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & MASK
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & MASK
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & MASK
    return h ^ (h >> 31)


def split_cluster(rule: dict, key_name: str) -> str:
    """The cluster a sticky-by-key `split` rule sends `key_name` to (src/rules/action.rs)."""
    (action,) = [a for a in rule["actions"] if "split" in a]
    assert action.get("sticky", "key") == "key", action
    total = sum(arm["weight"] for arm in action["split"])
    bucket = stable_hash(stable_hash(0, rule["name"].encode()), key_name.encode()) % total
    upper = 0
    for arm in action["split"]:
        upper += arm["weight"]
        if bucket < upper:
            return arm["cluster"]
    raise AssertionError("unreachable: bucket < total")


def canary_rule() -> dict:
    """The demo's canary split, checked against its own shipped [[tests]] so that this copy of
    the hash cannot drift from the proxy's unnoticed."""
    rules = tomllib.loads(CANARY_RULES.read_text())
    (rule,) = rules["rules"]
    for case in rules.get("tests", []):
        want = case["expect"].get("route_cluster")
        body = json.loads(case["request"]["body"])
        if want and body.get("model") == rule["when"]["equals"]:
            assert split_cluster(rule, case["request"]["key"]["name"]) == want, case["name"]
    return rule


def start_sim(args: list) -> tuple:
    """`tokengate sim` on port 0: (process, "127.0.0.1:port" it printed as `LISTENING addr`)."""
    proc = subprocess.Popen(
        [str(BIN), "sim", "--listen", ANY_PORT, *args],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    line = proc.stdout.readline().strip()
    if not line.startswith("LISTENING "):
        proc.kill()
        raise RuntimeError(f"simulator did not start: {line!r}")
    # Keep draining so the simulator never blocks on a full pipe.
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc, line.split()[1]


def wait_ready_file(path: Path, proc: subprocess.Popen, deadline_s: float = 30.0) -> dict:
    """What `tokengate run --ready-file` wrote once every listener accepted (written whole)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            bound = json.loads(path.read_text())
        except (OSError, ValueError):
            bound = None
        if bound and bound.get("pid") == proc.pid:
            return bound
        if proc.poll() is not None:
            raise RuntimeError(f"tokengate exited ({proc.returncode}) before writing {path}")
        time.sleep(0.02)
    raise TimeoutError(f"tokengate wrote no ready file {path} within {deadline_s} s")


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


class Demo:
    """What `tokengate demo` runs (one simulator per replica with the demo's flags, then the
    proxy on conf/demo.toml), but on port 0: the simulators and the proxy report their
    addresses, and the config handed to the proxy names the simulators' real ones."""

    def __init__(self, tmp: Path):
        text = (ROOT / "conf" / "demo.toml").read_text()
        config = tomllib.loads(text)
        self.procs = []
        self.ports = {}  # the demo's fixed replica port -> the simulator's real port
        for cluster in config["clusters"]:
            served = []
            for model in config.get("models", []):
                if model["cluster"] == cluster["name"] and model["served_name"] not in served:
                    served.append(model["served_name"])
            for replica in cluster["replicas"]:
                fixed = port_of(replica)
                if fixed in self.ports:
                    continue  # a replica listed in two clusters (the demo canary) runs once
                args = ["--flavour", cluster["flavour"], "--replica-name",
                        f"{cluster['name']}@{replica}", "--engine", "batching", "--decode-ms", "25",
                        "--tokens", "24"]
                for name in served:
                    args += ["--served-model-name", name]
                proc, addr = start_sim(args)
                self.procs.append(proc)
                self.ports[fixed] = port_of(addr)
        for fixed, real in self.ports.items():
            text = text.replace(f'"127.0.0.1:{fixed}"', f'"127.0.0.1:{real}"')
        for listener in ("127.0.0.1:8080", "127.0.0.1:9090"):
            assert f'"{listener}"' in text, f"conf/demo.toml no longer listens on {listener}"
            text = text.replace(f'"{listener}"', f'"{ANY_PORT}"')
        text = text.replace("/tmp/tokengate-demo", str(tmp / "tokengate-demo"))
        text = text.replace('"../lua-free-rules/', f'"{ROOT}/lua-free-rules/')
        for name in ("demo-keys.toml", "demo-admin-token"):
            (tmp / name).write_bytes((ROOT / "conf" / name).read_bytes())
        self.admin_token = (tmp / "demo-admin-token").read_text().strip()
        self.config = tmp / "demo.toml"
        self.config.write_text(text)
        ready_file = tmp / "ready.json"
        self.proc = subprocess.Popen(
            [str(BIN), "run", "--config", str(self.config), "--ready-file", str(ready_file)],
            env={**os.environ, "RUST_LOG": "warn"},
            start_new_session=True,
        )
        self.procs.append(self.proc)
        bound = wait_ready_file(ready_file, self.proc)
        self.proxy_port = port_of(bound["listen"][0])
        self.admin_port = port_of(bound["admin_listen"])
        self.wait_ready()
        # The tests' own key, without limits (the demo key's are modest).
        self.key = self.create_key({"name": "sdk-tests"})

    def wait_ready(self) -> None:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/health", timeout=2) as r:
                    if json.load(r).get("ready"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError("demo not ready")

    def admin(self, method: str, path: str, body=None):
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"authorization": f"Bearer {self.admin_token}", "content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def create_key(self, spec: dict) -> str:
        return self.admin("POST", "/admin/keys", spec)["key"]

    def fresh_key(self, name: str, **spec) -> str:
        """A key of its own, so /admin/usage's per-key numbers are one test's alone. Its name
        keeps it on the stable side of the demo's 10 % canary (sticky by key name): the tests
        that count `vllm-a`'s replicas would otherwise see one run in ten go to
        `vllm-canary`, whose replica 8102 no drain of `vllm-a` touches."""
        rule = canary_rule()
        while True:
            unique = f"{name}-{time.monotonic_ns()}"
            if split_cluster(rule, unique) == "vllm-a":
                return self.create_key({"name": unique, **spec})

    def wait_usage(self, prefix: str, requests: int) -> dict:
        """The usage of the key named `prefix…` once it counts `requests` (usage settles in the
        proxy's logging phase, just after the last byte)."""
        end = time.monotonic() + 5
        while True:
            keys = self.admin("GET", "/admin/usage")["keys"]
            usage = next((v for k, v in keys.items() if k.startswith(prefix)), None)
            if usage and usage["requests"] >= requests:
                return usage
            assert time.monotonic() < end, "usage not settled in time"
            time.sleep(0.02)

    def sim_port(self, fixed: int) -> int:
        return self.ports[fixed]

    def sim_requests(self, fixed: int) -> list:
        url = f"http://127.0.0.1:{self.sim_port(fixed)}/sim/requests"
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)

    def sim_post(self, fixed: int, path: str, body: dict) -> None:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.sim_port(fixed)}{path}",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        urllib.request.urlopen(req, timeout=10).read()

    def all_sim_requests(self) -> list:
        return [r for fixed in (8101, 8102, 8103) for r in self.sim_requests(fixed)]

    def reset_sims(self) -> None:
        for fixed in (8101, 8102, 8103):
            self.sim_post(fixed, "/sim/reset", {})

    def stop(self) -> None:
        # Ctrl-C, as the demo's supervisor does: SIGINT is Pingora's fast shutdown, and the
        # simulator exits on it too.
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    if not BIN.exists():
        pytest.fail(f"{BIN} not built: run `cargo build` first (tests/run-all.sh does)")
    d = Demo(tmp_path_factory.mktemp("demo"))
    yield d
    d.stop()
    for port in [*d.ports.values(), d.proxy_port, d.admin_port]:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open after Ctrl-C"


class BodyRecorder:
    """Captures the exact bytes the SDK sends, to compute what the replica must receive."""

    def __init__(self):
        self.bodies = []

    def __call__(self, request: httpx.Request) -> None:
        self.bodies.append(request.content)


@pytest.fixture
def recorder():
    return BodyRecorder()


@pytest.fixture
def client(demo, recorder):
    http_client = httpx.Client(event_hooks={"request": [recorder]}, timeout=60)
    c = openai.OpenAI(
        base_url=f"http://127.0.0.1:{demo.proxy_port}/v1",
        api_key=demo.key,
        http_client=http_client,
        max_retries=0,
    )
    demo.reset_sims()
    yield c
    http_client.close()


def metric_sum(demo, name: str, **labels) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{demo.admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, value = line.rsplit(" ", 1)
        metric = series.split("{", 1)[0]
        if metric == name and all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def wait_settled(demo, model: str, count: float) -> None:
    """The proxy settles a request's usage in its logging phase, just after the last byte."""
    end = time.monotonic() + 5
    while metric_sum(demo, "tokengate_requests_total", model=model) < count:
        assert time.monotonic() < end, "request not settled in time"
        time.sleep(0.02)
