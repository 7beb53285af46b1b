"""The official OpenAI Python SDK through tokengate's TLS listener (`https://`), with a test CA
made here by the openssl CLI and trusted only by this client (`httpx.Client(verify=ca.pem)`)."""

import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request

import httpx
import openai
import pytest

from conftest import ANY_PORT, BIN, port_of, wait_ready_file


def openssl(tmp, *args):
    subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True)


def make_pki(tmp):
    """ca.pem (a throwaway CA) and server.pem / server.key for localhost and 127.0.0.1."""
    (tmp / "ext.cnf").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(tmp, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=tokengate test CA")
    openssl(tmp, "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    openssl(tmp, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")


class Proc:
    """A child process in its own session, stopped by its pid."""

    def __init__(self, args, **kw):
        self.p = subprocess.Popen(args, start_new_session=True, **kw)

    def stop(self):
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGKILL)
        self.p.wait(timeout=10)


@pytest.fixture(scope="module")
def tls_proxy(tmp_path_factory):
    if not BIN.exists():
        pytest.fail(f"{BIN} not built: run `cargo build` first (tests/run-all.sh does)")
    if shutil.which("openssl") is None:
        pytest.fail("the openssl CLI is needed (apt-get install openssl)")
    tmp = tmp_path_factory.mktemp("tls")
    make_pki(tmp)
    procs = []
    try:
        sim = Proc([str(BIN), "sim", "--listen", "127.0.0.1:0", "--served-model-name", "org/served"],
                   stdout=subprocess.PIPE, text=True)
        procs.append(sim)
        line = sim.p.stdout.readline().strip()
        assert line.startswith("LISTENING "), line
        sim_addr = line.split()[1]
        (tmp / "tokengate.toml").write_text(
            f"""[server]
listen = ["{ANY_PORT}"]
tls_listen = ["{ANY_PORT}"]
tls_cert = "server.pem"
tls_key = "server.key"
admin_listen = "{ANY_PORT}"
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1
pid_file = "{tmp}/tokengate.pid"
upgrade_sock = "{tmp}/upgrade.sock"
access_log = "off"

[[clusters]]
name = "pool"
flavour = "vllm"
replicas = ["{sim_addr}"]

[[models]]
alias = "chat"
cluster = "pool"
served_name = "org/served"
"""
        )
        proxy = Proc([str(BIN), "run", "--config", str(tmp / "tokengate.toml"),
                      "--ready-file", str(tmp / "ready.json")],
                     env={**os.environ, "RUST_LOG": "warn"})
        procs.append(proxy)
        bound = wait_ready_file(tmp / "ready.json", proxy.p)
        tls, admin = port_of(bound["tls_listen"][0]), port_of(bound["admin_listen"])
        end = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/health", timeout=2) as r:
                if json.load(r).get("ready"):
                    break
            assert time.monotonic() < end, "proxy not ready"
            time.sleep(0.05)
        yield {"tls_port": tls, "ca": str(tmp / "ca.pem"), "sim": sim_addr}
    finally:
        for p in reversed(procs):
            p.stop()


def sdk(tls_proxy, cafile):
    """`cafile=None`: the system's trust store only."""
    http = httpx.Client(verify=ssl.create_default_context(cafile=cafile), timeout=30)
    return openai.OpenAI(
        base_url=f"https://localhost:{tls_proxy['tls_port']}/v1",
        api_key="unused",
        http_client=http,
        max_retries=0,
    )


def test_sdk_streams_over_https(tls_proxy):
    client = sdk(tls_proxy, tls_proxy["ca"])
    stream = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=12, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].usage.completion_tokens == 12
    assert {c.model for c in chunks} == {"chat"}, "the alias, not the served name org/served"


def test_sdk_non_streaming_over_https(tls_proxy):
    client = sdk(tls_proxy, tls_proxy["ca"])
    r = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "Hello"}], max_tokens=5
    )
    assert r.choices[0].message.content
    assert r.usage.completion_tokens == 5
    assert r.model == "chat"
    assert [m.id for m in client.models.list()] == ["chat"]


def test_untrusted_certificate_is_refused(tls_proxy):
    client = sdk(tls_proxy, None)  # system CAs only: the test CA is not among them
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}])


def test_curl_negotiates_http2(tls_proxy):
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is needed (apt-get install curl)")
    assert "HTTP2" in subprocess.run([curl, "-V"], capture_output=True, text=True).stdout
    out = subprocess.run(
        [curl, "-sS", "--http2", "--cacert", tls_proxy["ca"], "-o", "/dev/null",
         "-w", "%{http_version}", f"https://localhost:{tls_proxy['tls_port']}/v1/models"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "2"
