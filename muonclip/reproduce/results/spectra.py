"""Singular-value numbers: spectra snapshots of the rows and of ``spectra.npz``, entropy, effective rank."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .logits import Row, _num

__all__ = [
    "spectra_series", "mean_spectra_series", "mean_after_first", "normalized_entropy", "entropy_over_time",
    "most_distorted_param", "top_over_median", "logit_bound_series",
]


def spectra_series(rows: Sequence[Row]) -> tuple[list[int], dict[str, dict[str, list[float]]]]:
    """``(steps, {param: {stat: values}})`` from rows that carry ``spectra`` (stats:
    w_entropy, w_erank, u_entropy, u_erank)."""
    steps: list[int] = []
    out: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        spec = r.get("spectra")
        if not spec:
            continue
        steps.append(int(r["step"]))
        for name, stats in spec.items():
            d = out.setdefault(name, {})
            for k, v in stats.items():
                d.setdefault(k, []).append(_num(v))
    return steps, out


def mean_spectra_series(rows: Sequence[Row], stat: str, *, contains: str = "") -> tuple[list[int], list[float]]:
    """Mean of ``stat`` (e.g. ``u_erank``, the effective rank of the applied update) over the
    tracked matrices whose name contains ``contains``, at each spectra snapshot."""
    steps, per = spectra_series(rows)
    names = [n for n in per if contains in n and stat in per[n]]
    if not names:
        return steps, []
    return steps, [sum(per[n][stat][i] for n in names) / len(names) for i in range(len(steps))]


def mean_after_first(values: Sequence[float]) -> float:
    """Mean over the snapshots after the first (step 1: Adam's first step is sign-like and
    Muon's momentum is fresh); the only snapshot when there is just one."""
    later = list(values[1:]) or list(values)
    return float(sum(later) / len(later))


def normalized_entropy(s: np.ndarray) -> np.ndarray:
    """Spectral entropy of each row of ``s`` (singular values) divided by ln(k): 1 = flat, 0 = rank one."""
    s = np.atleast_2d(np.asarray(s, dtype=np.float64))
    k = s.shape[-1]
    p = s / np.clip(s.sum(axis=-1, keepdims=True), 1e-300, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)
    return h / np.log(k) if k > 1 else np.ones(s.shape[0])


def entropy_over_time(spectra: Mapping[str, np.ndarray], kind: str = "weight") -> tuple[list[str], np.ndarray]:
    """(param names, array [snapshots, params]) of normalised spectral entropy."""
    names = sorted(k.split("|")[0] for k in spectra if k.endswith("|" + kind))
    if not names:
        return [], np.zeros((0, 0))
    return names, np.stack([normalized_entropy(spectra[f"{n}|{kind}"]) for n in names], axis=1)


def most_distorted_param(spectra: Mapping[str, np.ndarray]) -> str:
    """The tracked weight whose final spectrum is least flat (lowest normalised entropy)."""
    names, ent = entropy_over_time(spectra, "weight")
    if not names:
        raise ValueError("run has no spectra snapshots")
    return names[int(np.argmin(ent[-1]))]


def top_over_median(sv: Sequence[float]) -> float:
    """Largest singular value over the median one (1 for a flat spectrum)."""
    sv = np.asarray(sv, dtype=np.float64)
    return float(sv[0] / max(float(np.median(sv)), 1e-12))


def logit_bound_series(spectra: Mapping[str, np.ndarray], spectra_steps: Sequence[int], rows: Sequence[Row],
                       head_dim: int) -> dict:
    """The spectra-to-logits bridge: per layer, ``sigma_1(W_q) * sigma_1(W_k) / sqrt(head_dim)`` at each
    spectra snapshot beside the layer's measured max logit (over its heads) at the same step.

    A head's logit is ``x_i^T W_q,h^T W_k,h x_j / sqrt(d)`` (RoPE only rotates), so it is at most
    ``|x_i| |x_j|`` times this bound; ``W_q,h`` is a block of rows of ``W_q``, so the whole matrix's
    sigma_1 bounds every head's. Layers are those with both ``blocks.L.attn.q_proj.weight`` and
    ``k_proj`` tracked (none for MLA). The measured value is the row logged at the snapshot's
    step (forward before that step's update). Returns ``{"steps", "layers": [L...],
    "bound": [[per snapshot] per layer], "measured": [[...] per layer]}``."""
    by_step = {int(r["step"]): r for r in rows}
    layers = sorted(int(k.split(".")[1]) for k in spectra
                    if k.startswith("blocks.") and k.endswith(".attn.q_proj.weight|weight")
                    and k.replace("q_proj", "k_proj") in spectra)
    keep = [i for i, s in enumerate(spectra_steps) if int(s) in by_step]
    out = {"steps": [int(spectra_steps[i]) for i in keep], "layers": layers, "bound": [], "measured": []}
    for li in layers:
        q = np.asarray(spectra[f"blocks.{li}.attn.q_proj.weight|weight"], dtype=np.float64).max(axis=1)
        k = np.asarray(spectra[f"blocks.{li}.attn.k_proj.weight|weight"], dtype=np.float64).max(axis=1)
        out["bound"].append([float(q[i] * k[i] / np.sqrt(head_dim)) for i in keep])
        out["measured"].append([max(_num(v) for v in by_step[int(spectra_steps[i])]["max_logits"][li]) for i in keep])
    return out
