"""The demo as a first-time user meets it, with the demo's own API key and limits: a killed
replica is survived, reported and restarted; the advertised 16 MiB body is accepted."""

import os
import re
import signal
import socket
import time

import openai
import pytest

from conftest import Demo

DEMO_KEY = "tg-lsf4HvJWocGeMCUSFHP5nrqA8ghMweiVOqHuQ80z6Bd"  # printed by `tokengate demo`
CHAT = "llama-3.1-8b"
RESTART_AFTER_S = 4


@pytest.fixture(scope="module")
def own_demo(tmp_path_factory):
    d = Demo(tmp_path_factory.mktemp("failover"), ["--restart-after-secs", str(RESTART_AFTER_S)])
    yield d
    d.stop()
    # Ctrl-C is a clean stop, even though the children exit with the supervisor.
    assert d.proc.returncode == 0, d.log.read_text()
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
    return {r["id"]: r["state"] for r in demo.admin("GET", "/admin/replicas")["data"]}


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
    port = own_demo.sim_port(8101)
    replica = f"vllm-a/127.0.0.1:{port}"
    wait_for(lambda: set(states(own_demo).values()) == {"healthy"}, "every replica healthy")
    old_pid = replica_pid(own_demo, port)
    os.kill(old_pid, signal.SIGTERM)  # exits 0, as in the report that the demo died of

    # Every request to the alias succeeds, from the kill until the replica is back.
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
