"""The status page (GET /admin/ on the admin listener) in a real browser: Debian's Chromium,
headless, driven by Playwright. Against the demo's gateway (conf/demo.toml: its simulated
replicas, keys and rules), under traffic: sign in with the admin token, see the replicas and
the counters rise, save a screenshot, kill a replica and see it turn unhealthy.

Run by tests/run-all.sh as its own step; under CI=true a missing browser fails the test."""

import os
import re
import signal
import threading
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, Demo

CHROMIUM = Path(os.environ.get("TOKENGATE_CHROMIUM", "/usr/bin/chromium"))
OUTPUT = ROOT / "target" / "test-output"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
CHAT = "llama-3.1-8b"
TIMEOUT_MS = 20_000


def need(ok: bool, why: str) -> None:
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture
def gateway(tmp_path):
    d = Demo(tmp_path)
    yield d
    d.stop()


class Traffic:
    """Chat requests (streamed and not) in a loop until stopped; counts the answers."""

    def __init__(self, demo):
        self.demo = demo
        self.stop = threading.Event()
        self.answered = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        url = f"http://127.0.0.1:{self.demo.proxy_port}/v1/chat/completions"
        headers = {"authorization": f"Bearer {self.demo.key}"}
        with httpx.Client(timeout=30) as http:
            n = 0
            while not self.stop.is_set():
                n += 1
                body = {"model": CHAT, "messages": [{"role": "user", "content": f"hi {n}"}],
                        "max_tokens": 8, "stream": n % 2 == 0}
                try:
                    r = http.post(url, json=body, headers=headers)
                    self.answered += r.status_code == 200
                except httpx.HTTPError:
                    pass

    def finish(self) -> int:
        self.stop.set()
        self.thread.join(timeout=30)
        return self.answered


def counter(page, element_id: str) -> int:
    return int(re.sub(r"[^0-9]", "", page.locator(f"#{element_id}").inner_text()) or "0")


def test_status_page_shows_replicas_rates_and_a_killed_replica(gateway, tmp_path):
    need(CHROMIUM.exists(), f"{CHROMIUM} missing: sh scripts/install-deps.sh --tests installs Debian's chromium")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        need(False, "the playwright package is missing: pip install -r tests/sdk/requirements.txt")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    replicas = {f"{c}/127.0.0.1:{gateway.sim_port(p)}" for c, p in
                [("vllm-a", 8101), ("vllm-a", 8102), ("vllm-canary", 8102), ("trtllm-b", 8103)]}
    traffic = Traffic(gateway)
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),  # a fresh --user-data-dir
                executable_path=str(CHROMIUM),
                headless=True,
                args=FLAGS,
                viewport={"width": 1400, "height": 1300},
            )
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            page.goto(f"http://127.0.0.1:{gateway.admin_port}/admin/")

            # A wrong token is refused and the sign-in form stays.
            page.fill("#token", "not-the-token")
            page.click("#signin")
            expect(page.locator("#login-error")).to_contain_text("Wrong admin token")

            page.fill("#token", gateway.admin_token)
            page.click("#signin")
            expect(page.locator("#conn")).to_have_text("live")

            # Every replica of the demo, healthy.
            rows = page.locator("tr[data-replica]")
            expect(rows).to_have_count(len(replicas))
            assert {rows.nth(i).get_attribute("data-replica") for i in range(len(replicas))} == replicas
            for replica in replicas:
                expect(page.locator(f'tr[data-replica="{replica}"]')).to_have_attribute("data-state", "healthy")

            # Rates and rising counters from the event stream's summaries.
            page.wait_for_function("() => Number(document.getElementById('total-requests').textContent.replace(/,/g, '')) > 0")
            first_requests, first_tokens = counter(page, "total-requests"), counter(page, "total-tokens")
            page.wait_for_function(
                "(n) => Number(document.getElementById('total-requests').textContent.replace(/,/g, '')) > n",
                arg=first_requests)
            assert counter(page, "total-tokens") > first_tokens
            expect(page.locator(f'tr[data-model="{CHAT}"]')).to_have_count(1)
            expect(page.locator("#requests tr.request").first).to_contain_text(CHAT)
            page.screenshot(path=str(OUTPUT / "status-page.png"), full_page=True)

            # Kill a replica (SIGKILL, like a crashed engine): the page shows it unhealthy.
            killed = gateway.procs[0]  # the simulator on the demo's 8101
            os.kill(killed.pid, signal.SIGKILL)
            killed.wait(timeout=10)
            victim = f"vllm-a/127.0.0.1:{gateway.sim_port(8101)}"
            # Under traffic the proxy's own failed requests may eject it before a probe fails:
            # either way it is out of rotation and shown so.
            row = page.locator(f'tr[data-replica="{victim}"]')
            expect(row).to_have_attribute("data-healthy", "false")
            expect(row.locator(".badge")).to_have_text(re.compile(r"^(unhealthy|ejected)$"))
            expect(page.locator("#events")).to_contain_text(
                re.compile(f"health {re.escape(victim)}: healthy → (unhealthy|ejected)"))
            for other in replicas - {victim}:
                expect(page.locator(f'tr[data-replica="{other}"]')).to_have_attribute("data-healthy", "true")
            page.screenshot(path=str(OUTPUT / "status-page-unhealthy.png"), full_page=True)
            context.close()
    finally:
        answered = traffic.finish()
    assert answered > 0
    print(f"status page: {answered} requests answered during the test; screenshots in {OUTPUT}")
