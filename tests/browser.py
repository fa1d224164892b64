"""A headless Chromium for the viewer's tests, driven over the DevTools protocol (a websocket; the `websockets`
package comes with viser).

`--screenshot` alone takes its picture when a virtual-time budget runs out, which on a busy machine can be
before viser's client has received the splats or finished fading them in. Here the page is screenshotted
again and again until it shows something and two pictures in a row are the same: the scene has settled.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--remote-debugging-port=0",
]  # fmt: skip


def settled_screenshot(url: str, width: int, height: int, shows_something, timeout: float = 120.0) -> np.ndarray:
    """[height, width, 3] uint8 RGB of the page at `url`, once `shows_something(image)` holds and the picture
    no longer changes (or, past `timeout` seconds, the last one taken: the test's assertions then judge it)."""
    from websockets.sync.client import connect

    assert CHROMIUM is not None
    # Chromium's helper processes (zygote, GPU, renderers) can outlive the main one and go on writing into the
    # profile: run them all in their own process group, end the whole group, and only then remove the profile.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        browser = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            port = _devtools_port(Path(profile), browser, time.monotonic() + 60)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as answer:
                page = next(t for t in json.load(answer) if t["type"] == "page")
            with connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
                ids = itertools.count(1)

                def call(method: str, **params):
                    i = next(ids)
                    ws.send(json.dumps({"id": i, "method": method, "params": params}))
                    while (reply := json.loads(ws.recv(timeout=60))).get("id") != i:
                        pass  # an event; none are enabled, but skip any
                    return reply

                # The window holds a (headless) browser frame: make the page itself width x height.
                metrics = dict(width=width, height=height, deviceScaleFactor=1, mobile=False)
                assert "error" not in call("Emulation.setDeviceMetricsOverride", **metrics)
                deadline, last = time.monotonic() + timeout, None
                while True:
                    reply = call("Page.captureScreenshot", format="png")
                    if "error" in reply:  # e.g. while the page is still being committed: try again
                        assert time.monotonic() < deadline, reply
                        time.sleep(1.0)
                        continue
                    png = base64.b64decode(reply["result"]["data"])
                    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
                    if last is not None and shows_something(image) and _same(image, last):
                        return image
                    if time.monotonic() > deadline:
                        return image
                    last = image
                    time.sleep(1.0)
        finally:
            _end_group(browser)
            shutil.rmtree(profile, ignore_errors=True)


def _end_group(browser: subprocess.Popen) -> None:
    """SIGTERM to Chromium's process group, SIGKILL to whatever is left of it after 10 s."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(browser.pid, sig)
        except ProcessLookupError:
            break
        browser.poll()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(browser.pid, 0)  # anyone left in the group?
            except ProcessLookupError:
                break
            browser.poll()  # reap the leader, or it stays in the group as a zombie
            time.sleep(0.1)
        else:
            continue
        break
    browser.wait(timeout=30)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Two screenshots of a settled scene: fewer than 0.1 % of the pixels differ by more than 8 levels (depth
    sorting may reorder a few overlapping splats between frames)."""
    return (np.abs(a.astype(int) - b).max(-1) > 8).mean() < 0.001


def _devtools_port(profile: Path, browser: subprocess.Popen, deadline: float) -> int:
    """Chromium writes the port it chose for --remote-debugging-port=0 into the profile."""
    active = profile / "DevToolsActivePort"
    while not (active.is_file() and active.read_text().strip()):
        if browser.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"chromium did not start (exit code {browser.poll()})")
        time.sleep(0.2)
    return int(active.read_text().split()[0])


def require_chromium(pytest) -> None:
    """Skip without a Chromium, except where SPLATDREAMER_REQUIRE_BROWSER is set (CI): there, fail."""
    if CHROMIUM is None:
        if os.environ.get("SPLATDREAMER_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed, and SPLATDREAMER_REQUIRE_BROWSER is set (CI: see .ci/run)")
        pytest.skip("needs a headless Chromium (apt-get install chromium)")
