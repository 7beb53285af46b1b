"""Fixtures: the demo (`tokengate demo`) on free loopback ports, driven by the OpenAI SDK."""

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import httpx
import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("TOKENGATE_BIN", ROOT / "target" / "debug" / "tokengate"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


class Demo:
    """The demo config with every fixed port replaced by a free one."""

    def __init__(self, tmp: Path, extra_args=()):
        text = (ROOT / "conf" / "demo.toml").read_text()
        self.ports = {}
        for fixed in sorted(set(re.findall(r"127\.0\.0\.1:(\d+)", text))):
            self.ports[int(fixed)] = free_port()
            text = text.replace(f"127.0.0.1:{fixed}", f"127.0.0.1:{self.ports[int(fixed)]}")
        text = text.replace("/tmp/tokengate-demo", str(tmp / "tokengate-demo"))
        text = text.replace('"../lua-free-rules/', f'"{ROOT}/lua-free-rules/')
        for name in ("demo-keys.toml", "demo-admin-token"):
            (tmp / name).write_bytes((ROOT / "conf" / name).read_bytes())
        self.admin_token = (tmp / "demo-admin-token").read_text().strip()
        self.config = tmp / "demo.toml"
        self.config.write_text(text)
        self.proxy_port = self.ports[8080]
        self.admin_port = self.ports[9090]
        # A file, not a pipe nobody reads: the demo prints as it runs (health changes).
        self.log = tmp / "demo.log"
        self.proc = subprocess.Popen(
            [str(BIN), "demo", "--config", str(self.config), *extra_args],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": "warn"},
            start_new_session=True,
        )
        wait_for_port(self.proxy_port)
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
        # Ctrl-C, as a user would: the supervisor stops every child.
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    if not BIN.exists():
        pytest.fail(f"{BIN} not built: run `cargo build` first (tests/run-all.sh does)")
    d = Demo(tmp_path_factory.mktemp("demo"))
    yield d
    d.stop()
    for port in d.ports.values():
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
