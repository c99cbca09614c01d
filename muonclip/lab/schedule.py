"""Learning-rate schedules (warmup + constant, cosine, WSD) as LambdaLR multipliers."""
from __future__ import annotations

import math
from typing import Callable

__all__ = ["lr_multiplier"]


def lr_multiplier(kind: str, steps: int, warmup_steps: int = 0, decay_fraction: float = 0.2,
                  min_lr_ratio: float = 0.0) -> Callable[[int], float]:
    """A function step -> multiplier of the base lr, for steps ``0 .. steps - 1``.

    * ``constant``: linear warmup, then 1.
    * ``cosine``: linear warmup, then cosine decay from 1 at step ``warmup_steps`` to exactly
      ``min_lr_ratio`` at the last step, ``steps - 1``.
    * ``wsd`` (warmup-stable-decay): warmup, flat, then linear decay over the last
      ``decay_fraction`` of training, from 1 at ``round(steps * (1 - decay_fraction))`` to
      exactly ``min_lr_ratio`` at the last step.

    Warmup: step ``s < warmup_steps`` gets ``(s + 1) / warmup_steps`` (1 on its last step).
    """
    if kind not in ("constant", "cosine", "wsd"):
        raise ValueError(f"unknown schedule {kind!r}; expected constant, cosine or wsd")
    if steps < 1 or warmup_steps < 0 or not 0.0 <= decay_fraction <= 1.0 or not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError("schedule needs steps >= 1, warmup_steps >= 0, decay_fraction and min_lr_ratio in [0, 1]")

    decay_start = int(round(steps * (1.0 - decay_fraction)))

    def mult(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        if kind == "cosine":
            progress = _progress(step, warmup_steps, steps - 1)
            decayed = 0.5 * (1 - math.cos(math.pi * progress))  # 0 -> 1
        elif step < decay_start:
            return 1.0
        else:
            progress = decayed = _progress(step, decay_start, steps - 1)
        if progress >= 1.0:
            return min_lr_ratio  # exactly, not 1 - (1 - ratio) with its round-off
        return max(min_lr_ratio, 1.0 - (1.0 - min_lr_ratio) * decayed)

    return mult


def _progress(step: int, start: int, last: int) -> float:
    """0 at ``start``, exactly 1 at ``last`` (the last step of training), linear between,
    clamped to [0, 1]. When the decay has a single step (``last <= start``) it is the end."""
    if last <= start:
        return 1.0 if step >= start else 0.0
    return min(1.0, max(0.0, (step - start) / (last - start)))
