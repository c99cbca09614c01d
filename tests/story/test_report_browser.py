"""report.html in headless Chromium (driven by Playwright): it renders offline, and its controls show the runs' metrics.

Playwright drives the system Chromium through ``executable_path`` (no browser download).
Locally a missing Chromium or Playwright skips these tests (one line under ``-ra``); on CI
(``CI`` set, e.g. ``CI=true``) it is a failure, never a skip: ``.ci/run`` installs Chromium
before ``make test`` and the dev extra installs Playwright.

Every readout is compared with the run's own ``metrics.jsonl`` (and ``config.json`` for tau),
read here line by line, independently of the package's readers.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

# The first test to use the shared quick story pays for training it.
pytestmark = pytest.mark.timeout(1200)

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _missing(what: str) -> None:
    if _on_ci():
        pytest.fail(f"{what}: CI runs .ci/run, which installs Chromium and the dev extra before make test")
    pytest.skip(f"{what}; runs on CI (apt-get install chromium; pip install -e .[dev])")


# Session scope, and listed before ``quick_story`` in the tests' arguments, so that a missing
# Chromium is found before the shared quick story is trained (pytest sets up same-scope fixtures
# in argument order).
@pytest.fixture(scope="session")
def browser():
    path = _chromium()
    if path is None:
        _missing("chromium is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, args=ARGS)
        yield b
        b.close()


class Opened:
    """A page loaded from a file, with every request it tried and every error it logged."""

    def __init__(self, browser, path: Path) -> None:
        self.context = browser.new_context(viewport={"width": 1100, "height": 900})
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.blocked: list[str] = []
        self.errors: list[str] = []
        self.url = path.resolve().as_uri()

        def route(r):  # nothing may leave the file: anything but the page itself or inline data is aborted
            url = r.request.url
            if url == self.url or url.startswith("data:"):
                r.continue_()
            else:
                self.blocked.append(url)
                r.abort()

        self.context.route("**/*", route)
        self.page.on("request", lambda req: self.requests.append(req.url))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type in ("error", "assert") else None)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.goto(self.url, wait_until="load")
        # Decode of large GIFs can finish after load: wait until every image is complete.
        self.page.wait_for_function("Array.from(document.images).every(im => im.complete)", timeout=30000)

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def report(browser, quick_story):
    _, out, _ = quick_story
    opened = Opened(browser, out / "report.html")
    yield opened
    opened.close()


def _rows(cache: Path, run_id: str) -> list[dict]:
    return [json.loads(line) for line in (cache / run_id / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _tau(cache: Path, run_id: str) -> float:
    return float(json.loads((cache / run_id / "config.json").read_text())["optim"]["qk_clip_tau"])


def _set(page, control: str, value) -> None:
    """Move a range input (or choose an option) the way a user's input does: value, then events."""
    page.locator(f'[data-control="{control}"]').evaluate(
        "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true}));"
        " el.dispatchEvent(new Event('change', {bubbles: true})); }", str(value))


def _fields(page, readout: str) -> dict[str, str]:
    return page.locator(f'[data-readout="{readout}"] [data-field]').evaluate_all(
        "els => Object.fromEntries(els.map(e => [e.dataset.field, e.dataset.value]))")


def _numbers(out: Path) -> dict:
    return json.loads((out / "numbers.json").read_text())


def test_report_renders_offline(report):
    page = report.page
    assert "MuonClip" in page.title()
    images = page.evaluate("Array.from(document.images).map(im => [im.dataset.file, im.naturalWidth])")
    assert len(images) >= 10
    assert all(w > 0 for _, w in images), [f for f, w in images if w == 0]
    assert page.locator("figure").count() >= 10
    assert len(page.inner_text("body")) > 3000
    assert not report.errors, report.errors
    # the file itself is the only request that is not inline data, and nothing was blocked
    assert not report.blocked, report.blocked
    assert [u for u in report.requests if not u.startswith("data:")] == [report.url]
    assert page.locator("details.prov").count() >= 10  # provenance folded under each figure


def test_each_chapter_opens_with_what_to_look_at(report):
    for anchor in ("singular", "bridge", "dragon", "rogue", "guardrail", "lifecycle", "tradeoff", "k2"):
        first = report.page.locator(f"h2#{anchor} + p")
        assert first.count() == 1, anchor
        assert first.inner_text().startswith("What to look at:"), anchor


def test_at_least_five_controls_each_with_a_readout(report):
    names = report.page.locator("[data-control]").evaluate_all("els => els.map(e => e.dataset.control)")
    assert len(names) >= 5
    for name in names:
        assert report.page.locator(f'[data-readout="{name}"]').count() == 1, name
        kind = report.page.locator(f'[data-control="{name}"]').evaluate("e => e.tagName + ':' + (e.type || '')")
        assert kind in ("INPUT:range", "SELECT:select-one"), (name, kind)


@pytest.mark.parametrize("key,role", [("dragon", "dragon"), ("guardrail", "guardrail"), ("lifecycle", "lifecycle")])
def test_step_slider_readout_is_the_runs_metric(report, quick_story, key, role):
    _, out, cache = quick_story
    run_id = next(p["run_id"] for p in _numbers(out)["plan"] if role in p["roles"])
    rows, tau = _rows(cache, run_id), _tau(cache, run_id)
    by_step = {r["step"]: r for r in rows}
    clipped = [r["step"] for r in rows if r.get("n_clipped")]
    steps = {rows[0]["step"], rows[len(rows) // 2]["step"], rows[-1]["step"], *clipped[:1], *clipped[-1:]}
    # the chart's tau line is the run's own tau
    assert float(report.page.locator(f'[data-chart="{key}"] [data-tau]').get_attribute("data-tau")) == tau
    for step in sorted(steps):
        _set(report.page, f"{key}-step", step)
        got = _fields(report.page, f"{key}-step")
        row = by_step[step]
        assert int(got["step"]) == step
        assert float(got["max_logit"]) == row["max_logit"], (key, step)
        assert math.isclose(float(got["ratio"]), row["max_logit"] / tau, rel_tol=1e-12)
        assert int(got["n_clipped"]) == row["n_clipped"]


def test_sliders_work_from_the_keyboard(report, quick_story):
    _, out, cache = quick_story
    run_id = next(p["run_id"] for p in _numbers(out)["plan"] if "dragon" in p["roles"])
    rows = _rows(cache, run_id)
    slider = report.page.locator('[data-control="dragon-step"]')
    slider.focus()
    report.page.keyboard.press("Home")
    report.page.keyboard.press("ArrowRight")
    got = _fields(report.page, "dragon-step")
    assert int(got["step"]) == rows[1]["step"]
    assert float(got["max_logit"]) == rows[1]["max_logit"]


def test_rogue_heads_step_and_head_controls(report, quick_story):
    _, out, cache = quick_story
    run_id = next(p["run_id"] for p in _numbers(out)["plan"] if "guardrail" in p["roles"])
    rows, tau = _rows(cache, run_id), _tau(cache, run_id)
    names = [f"L{li}H{hi}" for li, layer in enumerate(rows[0]["max_logits"]) for hi in range(len(layer))]
    clip_rows = [r for r in rows if r.get("n_clipped")]
    assert clip_rows, "the quick guardrail run should clip"
    for row in (clip_rows[0], rows[-1]):
        _set(report.page, "rogue-step", row["step"])
        got = _fields(report.page, "rogue-step")
        flat = [v for layer in row["max_logits"] for v in layer]
        above = {names[i] for i, v in enumerate(flat) if v > tau} if row["n_clipped"] else set()
        assert int(got["step"]) == row["step"]
        assert int(got["n_clipped"]) == len(above) == row["n_clipped"]
        bars = report.page.locator('[data-chart="rogue-bars"] rect[data-head]').evaluate_all(
            "els => els.map(e => [e.dataset.head, +e.dataset.value, e.getAttribute('class') === 'clipped'])")
        assert [b[0] for b in bars] == names
        for (head, value, red), v in zip(bars, flat, strict=True):
            assert math.isclose(value, v / tau, rel_tol=1e-12), head
            assert red == (head in above), head
    # pick the head with the most clipping steps and one never clipped
    counts = {h: sum(1 for r in clip_rows if [v for la in r["max_logits"] for v in la][i] > tau)
              for i, h in enumerate(names)}
    for head in (max(counts, key=counts.get), min(counts, key=counts.get)):
        report.page.locator('[data-control="rogue-head"]').select_option(head)
        got = _fields(report.page, "rogue-head")
        i = names.index(head)
        assert got["head"] == head
        assert math.isclose(float(got["peak_ratio"]),
                            max([v for la in r["max_logits"] for v in la][i] for r in rows) / tau, rel_tol=1e-12)
        assert int(got["clip_steps"]) == counts[head]


def test_tradeoff_what_if_is_softmax_of_scaled_logits(report, quick_story):
    _, out, cache = quick_story
    run_id = next(p["run_id"] for p in _numbers(out)["plan"] if p["label"] == "tradeoff")
    result = json.loads((cache / run_id / "result.json").read_text())
    kw = result["probe_keyword_pos"]
    for arm_index, arm in enumerate(result["arms"]):
        _set(report.page, "tradeoff-arm", arm_index)
        p = arm["snapshots"][-1]["probe_attention"]
        assert int(_fields(report.page, "tradeoff-arm")["step"]) == arm["snapshots"][-1]["step"]
        for gamma in (1.0, 0.5, 0.1):
            _set(report.page, "tradeoff-gamma", gamma)
            got = _fields(report.page, "tradeoff-gamma")
            # softmax(gamma * l) with l = log p (+ a constant softmax ignores) = p^gamma / sum p^gamma
            z = sum(x ** gamma for x in p if x > 0)
            assert float(got["gamma"]) == gamma
            assert math.isclose(float(got["keyword"]), p[kw] ** gamma / z, rel_tol=1e-9), (arm["label"], gamma)
            # the keyword's lead in logits over the strongest distractor (the marker, last, is neither)
            lead = math.log(p[kw]) - math.log(max(x for i, x in enumerate(p[:-1]) if i != kw))
            assert math.isclose(float(got["gap"]), gamma * lead, rel_tol=1e-9, abs_tol=1e-12)
    assert "not trained" in report.page.locator('[data-panel="tradeoff"]').inner_text()


def test_hover_shows_values_on_a_line_chart(report):
    chart = report.page.locator('[data-chart="dragon"]')
    chart.scroll_into_view_if_needed()
    box = chart.bounding_box()
    report.page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.4)
    hover = chart.get_attribute("data-hover") or ""
    assert hover.startswith("step ") and "vanilla Muon" in hover


def test_the_route_blocks_a_page_that_reaches_out(browser, tmp_path):
    """The check itself works: a page that loads a remote image and logs an error fails it."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><title>bad</title><link rel="icon" href="data:,"></head><body>'
                    '<img data-file="remote" src="https://example.invalid/x.png">'
                    '<img data-file="broken" src="data:image/png;base64,AAAA">'
                    '<script>console.error("boom")</script></body></html>', encoding="utf-8")
    opened = Opened(browser, page)
    try:
        assert opened.blocked == ["https://example.invalid/x.png"]
        assert opened.page.evaluate("document.images[1].naturalWidth") == 0
        assert "boom" in opened.errors
    finally:
        opened.close()
