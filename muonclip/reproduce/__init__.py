"""Reproduce the MuonClip story at CPU scale: presets, cached runs and the results report.

* :mod:`.presets` -- the presets (dragon, guardrail, spectra, lifecycle, efficiency) and
  ``register_presets()``, which adds them to the lab's registry; ``STORY_RUNS``,
  ``STORY_ALIASES`` and ``QUICK_OVERRIDES``;
* :mod:`.results` -- every reported number, once, as a pure function of run data (used by
  docs/results.md and the story's report.html alike);
* :mod:`.runner` -- runs cached by config hash (``ensure_run``) and the reproduction's plan;
* :mod:`.tradeoff` -- the trade-off experiment the story draws (cached like the runs);
* :mod:`.report` -- ``muonclip reproduce``: runs the :mod:`.sections` and writes
  ``docs/results.md`` (:mod:`.markdown`); figures come from :mod:`muonclip.viz.charts`.
"""
from . import presets, results
from .presets import QUICK_OVERRIDES, STORY_ALIASES, STORY_RUNS, register_presets
from .runner import ensure_run, run_dir_for

__all__ = ["ensure_run", "run_dir_for", "presets", "results", "QUICK_OVERRIDES", "STORY_RUNS", "STORY_ALIASES",
           "register_presets"]
