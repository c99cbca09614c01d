"""Reproduce the MuonClip story at CPU scale: presets, cached runs and the results report.

* :mod:`.presets` -- the presets (dragon, guardrail, spectra, lifecycle, efficiency) and
  ``register_presets()``, which adds them to the lab's registry; ``STORY_RUNS``,
  ``STORY_ALIASES`` and ``QUICK_OVERRIDES``;
* :mod:`.results` -- pure functions from metrics rows to the reported numbers;
* :mod:`.figures` -- plot functions (data in, matplotlib Figure out; imported lazily);
* :mod:`.report` -- ``muonclip reproduce``: runs the presets and writes ``docs/results.md``.
"""
from . import presets, results
from .presets import QUICK_OVERRIDES, STORY_ALIASES, STORY_RUNS, register_presets
from .runner import ensure_run, run_dir_for

__all__ = ["ensure_run", "run_dir_for", "presets", "results", "QUICK_OVERRIDES", "STORY_RUNS", "STORY_ALIASES",
           "register_presets"]
