"""The lab's preset registry knows no experiment: importing any of the lab never loads the
reproduction, which registers its own presets when it is imported."""
from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import importlib, json, pkgutil, sys
import muonclip.lab, muonclip.lab.presets
for info in pkgutil.iter_modules(muonclip.lab.__path__):
    importlib.import_module(f"muonclip.lab.{info.name}")
from muonclip.lab.presets import PRESETS
print(json.dumps({"loaded": sorted(m for m in sys.modules if m.startswith("muonclip.reproduce")),
                  "presets": sorted(PRESETS)}))
import muonclip.reproduce
print(json.dumps(sorted(PRESETS)))
"""


def test_the_lab_never_imports_the_reproduction_which_registers_its_own_presets():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=300)
    lab_only, after = (json.loads(line) for line in out.stdout.splitlines()[-2:])
    assert lab_only["loaded"] == []
    assert lab_only["presets"] == ["small", "tiny"]  # the lab's own, and no experiment's
    assert {"dragon", "guardrail", "lifecycle", "efficiency", "spectra"} <= set(after)


def test_the_cli_registers_the_story_presets_before_it_lists_them():
    out = subprocess.run([sys.executable, "-m", "muonclip", "presets"], capture_output=True, text=True, check=True,
                         timeout=300)
    names = {line.split()[0] for line in out.stdout.splitlines() if line.strip()}
    assert {"tiny", "small", "dragon", "guardrail", "lifecycle"} <= names
