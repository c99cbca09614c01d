"""Singular-value measurements of weights and updates: spectra, spectral entropy, effective rank."""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["singular_values", "spectral_entropy", "effective_rank"]


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
