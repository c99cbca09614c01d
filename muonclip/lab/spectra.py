"""Singular-value measurements of weights and updates: spectra, spectral entropy, effective rank, and their store."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..io import atomic_write_bytes
from .rundir import read_spectra

__all__ = ["singular_values", "spectral_entropy", "effective_rank", "SpectraStore"]


def singular_values(W: Tensor) -> Tensor:
    """Singular values (descending, float64) of a matrix; conv/3-D tensors are flattened."""
    M = W.detach().double()
    if M.ndim > 2:
        M = M.reshape(M.shape[0], -1)
    return torch.linalg.svdvals(M)


def spectral_entropy(s: Tensor) -> float:
    """Shannon entropy (nats) of p_i = s_i / sum(s): ln(k) for a flat spectrum of k values,
    0 when one direction dominates."""
    total = float(s.sum())
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def effective_rank(s: Tensor) -> float:
    """exp(spectral entropy) (Roy & Vetterli 2007): between 1 and the number of values."""
    return math.exp(spectral_entropy(s))


class SpectraStore:
    """Snapshots of singular values, saved to spectra.npz (arrays keyed 'NAME|weight' etc.)."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.values: dict[str, list[np.ndarray]] = {}

    def add(self, step: int, name: str, kind: str, s: torch.Tensor) -> None:
        if not self.steps or self.steps[-1] != step:
            self.steps.append(step)
        self.values.setdefault(f"{name}|{kind}", []).append(s.float().cpu().numpy())

    def save(self, path: Path) -> None:
        buf = io.BytesIO()
        arrays = {k: np.stack(v) for k, v in self.values.items()}
        np.savez(buf, steps=np.asarray(self.steps, dtype=np.int64), **arrays)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path, up_to_step: int) -> "SpectraStore":
        out = cls()
        steps, arrays = read_spectra(path)  # absent: no snapshots; damaged: a ValueError naming it
        keep = int((steps <= up_to_step).sum())
        out.steps = steps[:keep].tolist()
        out.values = {key: list(values[:keep]) for key, values in arrays.items()}
        return out
