"""The demo as a first-time user meets it, with the demo's own API key and limits: a killed
replica is survived, reported and restarted; the advertised 16 MiB body is accepted."""

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import openai
import pytest

DEMO_KEY = "tg-lsf4HvJWocGeMCUSFHP5nrqA8ghMweiVOqHuQ80z6Bd"  # printed by `tokengate demo`
CHAT = "llama-3.1-8b"
RESTART_AFTER_S = 4
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("TOKENGATE_BIN", ROOT / "target" / "debug" / "tokengate"))


def free_port() -> int:
    # `tokengate demo` starts its simulators on the config's fixed addresses, so the ports
    # are picked here (the kernel's ephemeral choice, released just before use).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DemoProcess:
    """`tokengate demo` itself (the supervisor under test), on conf/demo.toml with every
    fixed port moved to a free one; its output goes to a file the tests read."""

    def __init__(self, tmp: Path, extra_args=()):
        text = (ROOT / "conf" / "demo.toml").read_text()
        self.ports = {}
        for fixed in sorted(set(re.findall(r'"127\.0\.0\.1:(\d+)"', text))):
            self.ports[int(fixed)] = free_port()
            text = text.replace(f'"127.0.0.1:{fixed}"', f'"127.0.0.1:{self.ports[int(fixed)]}"')
        text = text.replace("/tmp/tokengate-demo", str(tmp / "tokengate-demo"))
        text = text.replace('"../lua-free-rules/', f'"{ROOT}/lua-free-rules/')
        for name in ("demo-keys.toml", "demo-admin-token"):
            (tmp / name).write_bytes((ROOT / "conf" / name).read_bytes())
        self.admin_token = (tmp / "demo-admin-token").read_text().strip()
        config = tmp / "demo.toml"
        config.write_text(text)
        self.proxy_port, self.admin_port = self.ports[8080], self.ports[9090]
        self.log = tmp / "demo.log"
        self.proc = subprocess.Popen(
            [str(BIN), "demo", "--config", str(config), *extra_args],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": "warn"},
            start_new_session=True,
        )
        wait_for(lambda: "simulated replicas" in self.log.read_text() or self.proc.poll() is not None,
                 "the demo to come up")
        assert self.proc.poll() is None, self.log.read_text()

    def admin(self, path: str):
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}{path}",
            headers={"authorization": f"Bearer {self.admin_token}"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def stop(self) -> int:
        # Ctrl-C in a terminal: SIGINT to the whole process group.
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise


@pytest.fixture(scope="module")
def own_demo(tmp_path_factory):
    if not BIN.exists():
        pytest.fail(f"{BIN} not built: run `cargo build` first (tests/run-all.sh does)")
    d = DemoProcess(tmp_path_factory.mktemp("failover"), ["--restart-after-secs", str(RESTART_AFTER_S)])
    yield d
    # Ctrl-C is a clean stop, even though the children exit with the supervisor.
    assert d.stop() == 0, d.log.read_text()
    assert "stopping the demo" in d.log.read_text()
    for port in d.ports.values():
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open after Ctrl-C"


@pytest.fixture
def demo_client(own_demo):
    # The demo key, exactly as the demo prints it; no SDK retries hide a failure.
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{own_demo.proxy_port}/v1", api_key=DEMO_KEY, max_retries=0, timeout=60
    )


def states(demo) -> dict:
    return {r["id"]: r["state"] for r in demo.admin("/admin/replicas")["data"]}


def wait_for(pred, what: str, deadline_s: float = 30.0):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def replica_pid(demo, port: int) -> int:
    """The pid the demo printed for the replica on `port` (the latest, after restarts)."""
    text = demo.log.read_text()
    pids = re.findall(rf"@127\.0\.0\.1:{port}\s+pid (\d+)", text)
    pids += re.findall(rf"@127\.0\.0\.1:{port} restarted \(pid (\d+)\)", text)
    assert pids, text
    return int(pids[-1])


def test_demo_key_sends_the_advertised_16_mib_body(demo_client, own_demo):
    empty = len(b'{"messages":[{"role":"user","content":""}],"model":"llama-3.1-8b","max_tokens":2}')
    r = demo_client.chat.completions.with_raw_response.create(
        messages=[{"role": "user", "content": "a" * ((16 << 20) - empty)}], model=CHAT, max_tokens=2
    )
    assert r.status_code == 200
    assert len(r.http_request.content) == 16 << 20
    assert r.parse().choices[0].message.content


def test_killed_replica_is_survived_reported_and_restarted(demo_client, own_demo):
    port = own_demo.ports[8101]
    replica = f"vllm-a/127.0.0.1:{port}"
    wait_for(lambda: set(states(own_demo).values()) == {"healthy"}, "every replica healthy")
    old_pid = replica_pid(own_demo, port)
    os.kill(old_pid, signal.SIGTERM)  # exits 0, as in the report that the demo died of

    def gone() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) != 0

    # From the moment the replica is gone. A request the replica had already accepted when
    # it died fails (502): it may have acted on it, so the proxy does not send it elsewhere.
    wait_for(gone, "the killed replica's port to close", 10)

    # Every request to the alias succeeds, from then until the replica is back.
    answered, back = 0, False
    end = time.monotonic() + 60
    while not back:
        assert time.monotonic() < end, own_demo.log.read_text()
        stream = answered % 2 == 1
        r = demo_client.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "hi"}], max_tokens=2, stream=stream
        )
        if stream:
            assert any(c.choices and c.choices[0].delta.content for c in r)
        else:
            assert r.choices[0].message.content
        answered += 1
        back = states(own_demo)[replica] == "healthy" and "restarted" in own_demo.log.read_text()
        time.sleep(0.25)
    assert answered >= 5, answered

    log = own_demo.log.read_text()
    assert f"@127.0.0.1:{port} (pid {old_pid}) exited" in log, log
    assert re.search(rf"health of {re.escape(replica)}: healthy -> (unhealthy|ejected)", log), log
    assert re.search(rf"health of {re.escape(replica)}: \w+ -> healthy", log), log
    new_pid = replica_pid(own_demo, port)
    assert new_pid != old_pid
    os.kill(new_pid, 0)  # the restarted replica runs
    print(f"{answered} requests answered 200 across the kill and the restart")
