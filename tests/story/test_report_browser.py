"""report.html opens in headless Chromium: it renders, every image loads, the console has no errors.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages separated by NUL bytes on fds 3/4), so no driver or websocket package is needed.
Locally a missing Chromium skips these tests (one line under ``-ra``); on CI (``CI`` set, e.g.
``CI=true``) it is a failure, never a skip: ``.ci/run`` installs Chromium before ``make test``.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

# The first test to use the shared quick story pays for training it.
pytestmark = pytest.mark.timeout(1200)

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-pipe"]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


# Session scope, and listed before ``quick_story`` in the tests' arguments, so that a missing
# Chromium is found before the shared quick story is trained (pytest sets up same-scope fixtures
# in argument order).
@pytest.fixture(scope="session")
def chromium():
    path = _chromium()
    if path is None:
        if _on_ci():
            pytest.fail("chromium is not installed: CI runs .ci/run, which installs it before make test")
        pytest.skip("chromium not installed; runs on CI (install it with: apt-get install chromium)")
    return path


class PipeBrowser:
    """A minimal DevTools-protocol client over Chromium's debugging pipe."""

    def __init__(self, binary: str, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="story-chromium-")
        to_r, to_w = os.pipe()      # we write commands, Chromium reads fd 3
        from_r, from_w = os.pipe()  # Chromium writes fd 4, we read

        def child_fds():
            os.dup2(to_r, 3)
            os.dup2(from_w, 4)

        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            pass_fds=(3, 4), preexec_fn=child_fds,
        )
        os.close(to_r)
        os.close(from_w)
        self.wfd, self.rfd = to_w, from_r
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from Chromium")
            ready, _, _ = select.select([self.rfd], [], [], left)
            if ready:
                chunk = os.read(self.rfd, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the debugging pipe")
                self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.wfd, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        for i, ev in enumerate(self.events):
            if ev.get("method") == method:
                return self.events.pop(i)
        while True:
            ev = self._read_message(deadline)
            if ev.get("method") == method:
                return ev
            self.events.append(ev)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.wfd, self.rfd):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


PROBE = """JSON.stringify({
  title: document.title,
  ready: document.readyState,
  textLength: document.body ? document.body.innerText.length : 0,
  figures: document.querySelectorAll('figure').length,
  images: Array.from(document.images).map(im => ({file: im.dataset.file || im.src.slice(0, 40),
      complete: im.complete, w: im.naturalWidth, h: im.naturalHeight}))
})"""


def open_page(binary: str, path: Path) -> tuple[dict, list[dict]]:
    """Load ``path``; return the page probe and the console/log/exception errors seen."""
    browser = PipeBrowser(binary)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        browser.wait_event("Page.loadEventFired")
        # Decode of large GIFs can finish after load: poll until every image is complete.
        deadline = time.monotonic() + 30
        while True:
            res = browser.send("Runtime.evaluate", {"expression": PROBE, "returnByValue": True}, session=session)
            probe = json.loads(res["result"]["value"])
            if all(im["complete"] for im in probe["images"]) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        errors = []
        for ev in browser.events:
            m, p = ev.get("method"), ev.get("params", {})
            if m == "Runtime.exceptionThrown":
                errors.append({"kind": "exception", "detail": p.get("exceptionDetails", {}).get("text")})
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append({"kind": "console", "detail": [a.get("value") for a in p.get("args", [])]})
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                errors.append({"kind": "log", "detail": p["entry"].get("text"), "url": p["entry"].get("url")})
        return probe, errors
    finally:
        browser.close()


def test_report_renders_in_chromium(chromium, quick_story):
    result, out, _ = quick_story
    report = out / "report.html"
    assert report.exists()
    probe, errors = open_page(chromium, report)
    assert probe["ready"] == "complete"
    assert "MuonClip" in probe["title"]
    assert probe["textLength"] > 2000, "the narrative is missing"
    files = {im["file"] for im in probe["images"]}
    expected = {p.name for p in out.iterdir() if p.suffix in (".png", ".gif")}
    assert expected <= files, f"figures not in the report: {sorted(expected - files)}"
    broken = [im for im in probe["images"] if not (im["complete"] and im["w"] > 0 and im["h"] > 0)]
    assert not broken, f"images that did not load: {broken}"
    assert not errors, f"console errors: {errors}"


def test_probe_catches_a_broken_image(tmp_path, chromium):
    """The check itself works: a page with a broken image and a console error fails it."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><title>bad</title><link rel="icon" href="data:,"></head><body>'
                    '<img data-file="broken" src="data:image/png;base64,AAAA">'
                    '<script>console.error("boom")</script></body></html>', encoding="utf-8")
    probe, errors = open_page(chromium, page)
    assert probe["images"][0]["w"] == 0
    assert any(e["kind"] == "console" for e in errors)
