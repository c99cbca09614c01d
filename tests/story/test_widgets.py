"""The report's panels without a browser: the embedded data survives any value, each control has its readout."""
from __future__ import annotations

import json
import re

from muonclip.story import widgets


def _payload(script: str) -> dict:
    m = re.fullmatch(r'<script type="application/json" id="story-data">(.*)</script>', script, re.S)
    assert m, script[:80]
    return json.loads(m.group(1).replace("<\\/", "</"))


def test_embedded_data_cannot_end_its_script_and_has_no_nan():
    data = {"label": "</script><script>alert(1)</script>", "y": [1.5, float("nan"), float("inf")], "n": 3}
    script = widgets.data_script(data)
    assert script.count("</script>") == 1  # only its own end tag
    assert _payload(script) == {"label": data["label"], "y": [1.5, None, None], "n": 3}


def test_each_control_has_a_named_readout():
    html = (widgets.step_panel("dragon", [1, 2, 3], "x") + widgets.rogue_panel([1, 2], ["L0H0", "L0H1"], "L0H1")
            + widgets.whatif_panel([{"label": "a"}, {"label": "b"}], "not trained"))
    controls = re.findall(r'data-control="([^"]+)"', html)
    assert controls == ["dragon-step", "rogue-step", "rogue-head", "tradeoff-arm", "tradeoff-gamma"]
    for name in controls:
        assert html.count(f'data-readout="{name}"') == 1
    assert 'min="1" max="3" step="1" value="3"' in html
    assert '<option value="L0H1" selected>' in html


def test_the_page_script_ships_with_the_package():
    js = widgets.script()
    assert "story-data" in js and "data-control" in js
    assert "http" not in js.replace("http://www.w3.org/2000/svg", "")  # it fetches nothing
