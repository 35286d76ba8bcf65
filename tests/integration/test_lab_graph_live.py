"""The live picture, ``pycnm lab graph --serve``, in a real browser: Debian's chromium,
headless, driven by Playwright (the Python package, told to use /usr/bin/chromium; it never
downloads a browser). The page loads, shows every node of a lab, and shows a link going
down (and up again) within a few seconds, read from the kernel.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_labs import LABS, REPO, pycnm, unique_lab

pytestmark = pytest.mark.root

CHROMIUM = "/usr/bin/chromium"
# As this machine's notes say: without the background-networking flags chromium tries
# to reach the outside world at every start; a fresh profile keeps runs apart.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
SEEN_WITHIN = 10_000  # ms for the page to show a change (the server reads every second)


@pytest.fixture
def served(lab) -> Iterator[tuple[object, str]]:
    """A lab, and its live page served by ``pycnm lab graph --serve --port 0``."""
    name = unique_lab()
    handle = lab(LABS / "03-overlay" / "lab.yaml", name=name)
    proc = subprocess.Popen([sys.executable, "-m", "cnm.cli", "lab", "graph", name, "--serve",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once the server listens
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, line + (proc.stderr.read() if proc.poll() is not None else "")
        yield handle, match[0]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.mark.etcd
def test_live_page_shows_every_node_and_a_link_going_down(served, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    handle, url = served
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        browser = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 900})
        try:
            page = browser.new_page()
            page.goto(url)
            expect(page.locator("h1")).to_have_text(f"lab {handle.name}")
            for node in handle.topology.node_names():
                expect(page.locator(f'li.node[data-node="{node}"]')).to_be_visible()
                # ... and in the picture, as the namespace's box
                expect(page.locator("#picture svg")).to_contain_text(handle.netns(node))
            expect(page.locator('li.vtep[data-vni="4096"]')).to_have_count(2)
            expect(page.locator("#picture svg")).to_contain_text("VXLAN tunnel VNI 4096")
            link = page.locator('li.link[data-link="h2:eth0-r1:eth2"]')
            expect(link).to_have_attribute("data-state", "up")
            page.screenshot(path=str(tmp_path / "before.png"))

            started = time.monotonic()
            pycnm("lab", "link", "--lab", handle.name, "r1:eth2", "down")
            expect(link).to_have_attribute("data-state", "down", timeout=SEEN_WITHIN)
            seen_after = time.monotonic() - started
            expect(page.locator("#picture svg")).to_contain_text("veth DOWN")
            expect(page.locator('li.node[data-node="r1"]')).to_contain_text("eth2 DOWN")
            expect(page.locator('li.node[data-node="h2"]')).to_contain_text(
                "eth0 NO-CARRIER")
            page.screenshot(path=str(tmp_path / "down.png"))

            pycnm("lab", "link", "--lab", handle.name, "r1:eth2", "up")
            expect(link).to_have_attribute("data-state", "up", timeout=SEEN_WITHIN)
            expect(page.locator("#picture svg")).not_to_contain_text("veth DOWN")
        finally:
            browser.close()
    assert seen_after < SEEN_WITHIN / 1000


def test_live_page_serves_loopback_only_and_refuses_other_paths(lab) -> None:
    import json
    import urllib.error
    import urllib.request

    from netns_fixtures.lab.serve import LiveServer

    handle = lab(LABS / "01-bridge" / "lab.yaml", name=unique_lab())
    server = LiveServer(handle, 0, interval=0.2)
    try:
        assert server.httpd.server_address[0] == "127.0.0.1"
        import threading

        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        state = json.loads(urllib.request.urlopen(server.url + "state.json", timeout=10).read())
        assert {n["name"] for n in state["nodes"]} == {"host1", "outside", "c1", "c2"}
        assert urllib.request.urlopen(server.url + "graph.svg", timeout=10).read().startswith(
            b"<?xml")
        for path in ("../etc/passwd", "state.json/../../x", "%2e%2e/", "nope"):
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(server.url + path, timeout=10)
            assert caught.value.code == 404
        version = state["version"]
        handle.exec("c2", ["ip", "link", "set", "eth0", "down"], check=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            state = json.loads(urllib.request.urlopen(server.url + "state.json",
                                                      timeout=10).read())
            if state["version"] != version:
                break
            time.sleep(0.1)
        c2 = {n["name"]: n for n in state["nodes"]}["c2"]["interfaces"][0]
        assert c2["state"] == "down"
    finally:
        server.httpd.shutdown()
        server.close()
