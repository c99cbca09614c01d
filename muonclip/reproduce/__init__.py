"""Reproduce the MuonClip story at CPU scale: presets, cached runs and the results report.

Importing this package registers the reproduction's presets (``dragon``, ``guardrail``, ...)
in the lab's registry: the lab knows no experiment, the experiments register themselves.

* :mod:`.presets` -- the presets (dragon, guardrail, spectra, lifecycle, efficiency) and
  ``register_presets()``; ``STORY_RUNS``, ``STORY_ALIASES`` and ``QUICK_OVERRIDES``;
* :mod:`.results` -- every reported number, once, as a pure function of run data (used by
  docs/results.md and the story's report.html alike), with its spread over seeds and the
  targets, met only where every seed meets them;
* :mod:`.runner` -- runs cached by config hash (``ensure_run``), the reproduction's plan
  (arms x seeds) and :mod:`.pool`, which trains a plan's missing runs in worker processes;
* :mod:`.tradeoff` -- the trade-off experiment the story draws (cached like the runs);
* :mod:`.report` -- ``muonclip reproduce``: runs the :mod:`.sections` and writes
  ``docs/results.md`` (:mod:`.markdown`); figures come from :mod:`muonclip.viz.charts`.

Only the presets load on import (``muonclip presets`` stays quick); ``ensure_run`` and
``run_dir_for`` load the runner on first use.
"""
import importlib
from typing import Any

from . import presets
from .presets import QUICK_OVERRIDES, STORY_ALIASES, STORY_RUNS, register_presets

register_presets()

__all__ = ["ensure_run", "run_dir_for", "presets", "results", "QUICK_OVERRIDES", "STORY_RUNS", "STORY_ALIASES",
           "register_presets"]


def __getattr__(name: str) -> Any:
    # The runner imports the training loop; load it when asked for, not with the presets.
    if name in ("ensure_run", "run_dir_for"):
        return getattr(importlib.import_module(f"{__name__}.runner"), name)
    if name == "results":
        return importlib.import_module(f"{__name__}.results")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
