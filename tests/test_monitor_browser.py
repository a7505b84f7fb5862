"""The monitor served by a real `streamlit run` and driven in headless Chromium (Debian's /usr/bin/chromium through
playwright; never `playwright install`). Screenshots go to tests/artifacts/ (git-ignored)."""
import json
import os
import subprocess
import sys
import time
import urllib.request
from urllib.parse import urlparse

import pytest
from playwright.sync_api import sync_playwright

from conftest import ROOT, free_port
from test_monitor import make_run

ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


LOCAL = {"127.0.0.1", "data", "blob"}                     # the only hosts a page may request


def local_page(playwright, hosts: set, height: int):
    """A headless Chromium page that records the host of every request it makes into `hosts`."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1400, "height": height})
    page.on("request", lambda request: hosts.add(urlparse(request.url).hostname or request.url.split(":")[0]))
    return browser, page


def require_chromium() -> None:
    if not os.path.exists(CHROMIUM):                   # CI installs it (.ci/run): a missing browser fails there
        (pytest.fail if os.environ.get("CI") else pytest.skip)("Chromium missing: sudo apt-get install chromium")


@pytest.fixture(scope="module")
def monitor(tmp_path_factory):
    require_chromium()
    runs = tmp_path_factory.mktemp("runs")
    run = make_run(runs, "collapse-bce", coverage=[9, 10, 8, 7], steps=30)
    port = free_port()
    start = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "apps" / "monitor.py"), "--server.headless", "true",
         "--browser.gatherUsageStats", "false", "--server.address", "127.0.0.1", "--server.port", str(port),
         "--", "--runs", str(runs)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                break
        except OSError:
            pass
        if server.poll() is not None or time.perf_counter() - start > 60:
            pytest.fail("streamlit did not start")
        time.sleep(0.1)
    yield url, run
    server.terminate()
    server.wait(timeout=30)


def test_monitor_renders_updates_live_and_stays_local(monitor):
    url, run = monitor
    ARTIFACTS.mkdir(exist_ok=True)
    hosts = set()
    with sync_playwright() as p:
        browser, page = local_page(p, hosts, height=1600)
        start = time.perf_counter()
        page.goto(url)
        page.wait_for_selector("[data-testid=stVegaLiteChart]", timeout=60_000)
        first_paint = time.perf_counter() - start
        page.wait_for_function("document.querySelectorAll('[data-testid=stVegaLiteChart]').length >= 3")
        page.screenshot(path=str(ARTIFACTS / "monitor-curves.png"), full_page=True)
        # a line appended by the trainer shows up without any click
        with (run / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps({"step": 9999, "time": time.time(), "elapsed": 99.0, "lr": 1e-4,
                                     "images_per_s": 900.0, "loss/discriminator": 0.5, "loss/generator": 2.0}) + "\n")
        page.locator("[data-testid=stMarkdownContainer] strong", has_text="9999").first.wait_for(timeout=30_000)
        page.get_by_role("tab", name="health").click()
        page.get_by_text("mode collapse: class coverage fell from 10 to 7").wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "monitor-health.png"), full_page=True)
        page.get_by_role("tab", name="samples").click()
        image = page.locator("[data-testid=stImage] img").first
        image.wait_for(timeout=30_000)
        assert image.evaluate("img => img.complete && img.naturalWidth > 0")
        # the 20 px grid comes enlarged 20x with nearest neighbour, and the browser adds no smoothing of its own
        assert image.evaluate("img => [img.naturalWidth, img.width, getComputedStyle(img).imageRendering]") == \
            [400, 400, "pixelated"]
        page.screenshot(path=str(ARTIFACTS / "monitor-samples.png"), full_page=True)
        browser.close()
    assert hosts <= LOCAL, hosts
    print(f"first chart painted {first_paint:.2f} s after navigation")
