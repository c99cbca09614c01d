"""Learning-rate schedules (warmup + constant, cosine, WSD) as LambdaLR multipliers."""
from __future__ import annotations

import math
from typing import Callable

__all__ = ["lr_multiplier"]


def lr_multiplier(kind: str, steps: int, warmup_steps: int = 0, decay_fraction: float = 0.2,
                  min_lr_ratio: float = 0.0) -> Callable[[int], float]:
    """A function step -> multiplier of the base lr.

    * ``constant``: linear warmup, then 1.
    * ``cosine``: linear warmup, then cosine decay to ``min_lr_ratio`` at ``steps``.
    * ``wsd`` (warmup-stable-decay): warmup, flat, then linear decay to ``min_lr_ratio``
      over the last ``decay_fraction`` of training.
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
            span = max(1, steps - warmup_steps)
            progress = min(1.0, (step - warmup_steps) / span)
            return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, steps - decay_start))
        return 1.0 - (1.0 - min_lr_ratio) * progress

    return mult
