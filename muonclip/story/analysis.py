"""Numbers the story quotes, computed from run data (no plotting, no I/O)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "normalized_entropy", "entropy_over_time", "most_distorted_param", "ClipPhases", "clip_phases",
    "rogue_pick", "heads_ever_above", "growth_factor", "smooth",
]


def normalized_entropy(s: np.ndarray) -> np.ndarray:
    """Spectral entropy of each row of ``s`` (singular values) divided by ln(k): 1 = flat, 0 = rank one."""
    s = np.atleast_2d(np.asarray(s, dtype=np.float64))
    k = s.shape[-1]
    p = s / np.clip(s.sum(axis=-1, keepdims=True), 1e-300, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)
    return h / np.log(k) if k > 1 else np.ones(s.shape[0])


def entropy_over_time(spectra: dict[str, np.ndarray], kind: str = "weight") -> tuple[list[str], np.ndarray]:
    """(param names, array [snapshots, params]) of normalised spectral entropy."""
    names = sorted(k.split("|")[0] for k in spectra if k.endswith("|" + kind))
    if not names:
        return [], np.zeros((0, 0))
    return names, np.stack([normalized_entropy(spectra[f"{n}|{kind}"]) for n in names], axis=1)


def most_distorted_param(spectra: dict[str, np.ndarray]) -> str:
    """The tracked weight whose final spectrum is least flat (lowest normalised entropy)."""
    names, ent = entropy_over_time(spectra, "weight")
    if not names:
        raise ValueError("run has no spectra snapshots")
    return names[int(np.argmin(ent[-1]))]


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (same length; the first points average what exists)."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or values.size == 0:
        return values
    c = np.cumsum(np.insert(values, 0, 0.0))
    out = np.empty_like(values)
    for i in range(values.size):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


@dataclass(frozen=True)
class ClipPhases:
    """QK-Clip's life in one run, found from the rows.

    ``first_clip``/``last_clip``: steps of the first and last step with a clipped head (None
    if it never fired). ``stabilised``: the clip stayed off for the rest of the run after
    ``last_clip`` for at least ``min_quiet`` steps.
    """

    total_steps: int
    first_clip: int | None
    last_clip: int | None
    clip_steps: int
    heads_clipped_ever: int
    heads_total: int
    stabilised: bool
    final_max_logit: float
    peak_max_logit: float
    tau: float

    @property
    def active_fraction(self) -> float:
        if self.first_clip is None:
            return 0.0
        return (self.last_clip - self.first_clip + 1) / self.total_steps


def heads_ever_above(head_logits: np.ndarray, tau: float) -> np.ndarray:
    """Boolean [layers, heads]: did the head's max logit ever pass tau (so it was clipped)?"""
    return (np.asarray(head_logits) > tau).any(axis=0)


def clip_phases(rows: list[dict], tau: float, min_quiet: int | None = None) -> ClipPhases:
    steps = np.array([r["step"] for r in rows])
    clipped = np.array([int(r.get("n_clipped", 0)) for r in rows])
    heads = np.array([r["max_logits"] for r in rows], dtype=np.float64)
    fired = steps[clipped > 0]
    total = int(steps[-1]) if steps.size else 0
    first = int(fired[0]) if fired.size else None
    last = int(fired[-1]) if fired.size else None
    if min_quiet is None:
        min_quiet = max(5, total // 20)
    stabilised = last is not None and total - last >= min_quiet
    ever = heads_ever_above(heads, tau) if heads.size else np.zeros((0, 0), bool)
    return ClipPhases(
        total_steps=total, first_clip=first, last_clip=last, clip_steps=int((clipped > 0).sum()),
        heads_clipped_ever=int(ever.sum()), heads_total=int(ever.size), stabilised=bool(stabilised),
        final_max_logit=float(rows[-1]["max_logit"]) if rows else float("nan"),
        peak_max_logit=float(max(r["max_logit"] for r in rows)) if rows else float("nan"),
        tau=float(tau),
    )


def rogue_pick(rows: list[dict], tau: float | None) -> tuple[int, int, str]:
    """(row index, layer, why) for the rogue-heads picture.

    The first step where some head's max logit passes tau (the first clip of a MuonClip run);
    failing that, the step and layer where the spread between a layer's largest head and its
    median head is largest.
    """
    heads = np.array([r["max_logits"] for r in rows], dtype=np.float64)  # [S, L, H]
    if tau is not None:
        above = (heads > tau).any(axis=2)  # [S, L]
        hit = np.argwhere(above)
        if hit.size:
            i = int(hit[0, 0])
            layer = int(np.argmax(heads[i].max(axis=1)))
            return i, layer, f"first step where a head passed tau = {tau:g}"
    spread = heads.max(axis=2) - np.median(heads, axis=2)  # [S, L]
    i, layer = np.unravel_index(int(np.argmax(spread)), spread.shape)
    return int(i), int(layer), "step and layer with the widest spread between heads"


def growth_factor(values: np.ndarray, head: int = 5) -> float:
    """Final value over the mean of the first ``head`` values."""
    values = np.asarray(values, dtype=np.float64)
    start = float(np.mean(values[:head])) if values.size else float("nan")
    return float(values[-1] / start) if start else float("inf")
