"""Reproduce the MuonClip story at CPU scale: presets, cached runs and the results report."""
from .runner import ensure_run, run_dir_for

__all__ = ["ensure_run", "run_dir_for"]
