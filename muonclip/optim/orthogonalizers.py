"""Named Newton-Schulz schedules: per-iteration (a, b, c) of p(x) = a x + b x^3 + c x^5.

Every schedule here is transcribed from the source named beside it; ``c = 0`` makes an
iteration cubic (its x^5 product is skipped). :func:`resolve_orthogonalizer` turns a name, an
:class:`Orthogonalizer` or a custom sequence of ``(a, b, c)`` triples into one validated
schedule. The input is divided by ``norm_safety * ||G||_F`` before the first iteration.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

__all__ = [
    "Coeffs", "Orthogonalizer", "ORTHOGONALIZERS", "NS5_COEFFS", "POLAR_EXPRESS_COEFFS", "CUBIC_NS_COEFFS",
    "YOU_6STEP_COEFFS", "CANS_COEFFS", "DEEPSEEK_V4_COEFFS", "OrthogonalizerSpec", "resolve_orthogonalizer",
    "coefficient_schedule",
]

Coeffs = tuple[float, float, float]

# Quintic Newton-Schulz coefficients, the same at every iteration. Keller Jordan's Muon (2024),
# used unchanged by Moonlight (arXiv 2502.16982) and Kimi K2 (arXiv 2507.20534, Alg. 1). They
# trade exactness for speed: singular values land in roughly [0.7, 1.2] instead of exactly 1.
NS5_COEFFS: tuple[Coeffs, ...] = ((3.4445, -4.7750, 2.0315),)

# Polar Express (Amsel et al., arXiv 2505.16932, Alg. 1 and its reference code): a different
# minimax-optimal quintic per iteration for the interval [1e-3, 1]. The schedule has 8 entries;
# the 8th (1.875, -1.25, 0.375) is the fixed point that every later iteration repeats. All but
# that last one are divided by a safety factor (a/1.01, b/1.01^3, c/1.01^5) so round-off cannot
# push singular values past the fixed point, and the input is normalised by 1.01 ||G||_F.
_PE_RAW: tuple[Coeffs, ...] = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
_PE_SAFETY = 1.01
POLAR_EXPRESS_COEFFS: tuple[Coeffs, ...] = tuple(
    (a / _PE_SAFETY, b / _PE_SAFETY**3, c / _PE_SAFETY**5) for a, b, c in _PE_RAW[:-1]
) + (_PE_RAW[-1],)

# The classic cubic Newton-Schulz iteration for the polar factor, X <- X (3 I - X^T X) / 2, i.e.
# p(x) = 1.5 x - 0.5 x^3 (Bjorck & Bowie, SIAM J. Numer. Anal. 8(2), 1971; Kovarik 1970; Higham,
# "Functions of Matrices", SIAM 2008, ch. 8). It converges to exactly 1 for singular values in
# (0, sqrt(3)), but only multiplies small ones by 1.5 per step: slow, and no tuning.
CUBIC_NS_COEFFS: tuple[Coeffs, ...] = ((1.5, -0.5, 0.0),)

# Jiacheng You's six-step tuned quintic (coefficients posted on X, status 1893704552689303901,
# found by the optimisation in his gist 393c90cbdc23b09d5688815ba382288b; the same numbers
# appear in the modula docs and in several Muon implementations). Input divided by ||G||_F.
YOU_6STEP_COEFFS: tuple[Coeffs, ...] = (
    (3955 / 1024, -8306 / 1024, 5008 / 1024),
    (3735 / 1024, -6681 / 1024, 3463 / 1024),
    (3799 / 1024, -6499 / 1024, 3211 / 1024),
    (4019 / 1024, -6385 / 1024, 2906 / 1024),
    (2677 / 1024, -3029 / 1024, 1162 / 1024),
    (2172 / 1024, -1833 / 1024, 682 / 1024),
)

# CANS (Grishina et al., arXiv 2506.10935: Chebyshev-type, Remez + adaptive interval), the
# five-step quintic schedule exactly as NVIDIA Emerging-Optimizers publishes it
# (orthogonalized_optimizers/muon_utils.py, "cans", generated with the authors' polynomials.py
# and rounded to 4 decimals there). Later iterations repeat the last entry, as there.
CANS_COEFFS: tuple[Coeffs, ...] = (
    (8.4703, -25.1081, 18.6293),
    (4.1828, -3.1087, 0.5806),
    (3.9619, -2.9541, 0.5630),
    (3.2866, -2.4647, 0.5074),
    (2.2737, -1.6447, 0.4162),
)

# DeepSeek-V4 report (DeepSeek_V4.pdf, Muon section): 10 hybrid iterations, 8 of Keller's
# quintic for fast convergence, then 2 of (2, -1.5, 0.5), whose p(1) = 1 and p'(1) = 0 pull the
# singular values onto 1. Numbers as transcribed by NVIDIA Emerging-Optimizers ("deepseekv4").
DEEPSEEK_V4_COEFFS: tuple[Coeffs, ...] = NS5_COEFFS * 8 + ((2.0, -1.5, 0.5),) * 2


@dataclass(frozen=True)
class Orthogonalizer:
    """A schedule: iteration i uses ``coeffs[i]``; past the end the last entry repeats.

    ``steps`` is the number of iterations the source runs (used when ``ns_steps`` is None);
    the input is divided by ``norm_safety * ||G||_F`` before the first iteration.
    """

    coeffs: tuple[Coeffs, ...]
    norm_safety: float = 1.0
    source: str = ""
    steps: int = 5

    def schedule(self, steps: int | None = None) -> tuple[Coeffs, ...]:
        steps = self.steps if steps is None else steps
        return self.coeffs[:steps] + (self.coeffs[-1],) * max(0, steps - len(self.coeffs))


ORTHOGONALIZERS: dict[str, Orthogonalizer] = {
    "ns5": Orthogonalizer(NS5_COEFFS, 1.0, "Keller Jordan's Muon; Kimi K2 arXiv 2507.20534 Alg. 1", 5),
    "polar_express": Orthogonalizer(POLAR_EXPRESS_COEFFS, _PE_SAFETY, "Amsel et al. arXiv 2505.16932 Alg. 1", 5),
    "newton_schulz_cubic": Orthogonalizer(CUBIC_NS_COEFFS, 1.0, "Bjorck & Bowie 1971; Higham 2008 ch. 8", 5),
    "you_6step": Orthogonalizer(YOU_6STEP_COEFFS, 1.0, "Jiacheng You, tuned 6-step quintic (2025)", 6),
    "cans": Orthogonalizer(CANS_COEFFS, 1.0, "Grishina et al. arXiv 2506.10935, NVIDIA Emerging-Optimizers", 5),
    "deepseek_v4": Orthogonalizer(DEEPSEEK_V4_COEFFS, 1.0, "DeepSeek-V4 report, 8 + 2 hybrid iterations", 10),
}

OrthogonalizerSpec = Union[str, Orthogonalizer, Sequence[Sequence[float]]]


def resolve_orthogonalizer(spec: OrthogonalizerSpec) -> Orthogonalizer:
    """A name from :data:`ORTHOGONALIZERS`, an :class:`Orthogonalizer`, or custom coefficients
    ``((a, b, c), ...)`` (one triple per iteration, finite numbers; no normalisation safety,
    ``steps`` = their number). Raises ``ValueError`` naming what is wrong."""
    if isinstance(spec, Orthogonalizer):
        return spec
    if isinstance(spec, str):
        try:
            return ORTHOGONALIZERS[spec]
        except KeyError:
            raise ValueError(f"unknown orthogonaliser {spec!r}: orthogonalizer must be one of "
                             f"{tuple(ORTHOGONALIZERS)} or custom coefficients ((a, b, c), ...)") from None
    try:
        triples = [tuple(t) for t in spec]
    except TypeError:
        raise ValueError(f"orthogonalizer must be a name or a sequence of (a, b, c) triples, got {spec!r}") from None
    if not triples:
        raise ValueError("custom orthogonalizer coefficients must not be empty")
    for i, t in enumerate(triples):
        if len(t) != 3:
            raise ValueError(f"custom orthogonalizer iteration {i} must be (a, b, c), got {t!r}")
        for x in t:
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                raise ValueError(f"custom orthogonalizer iteration {i} must hold finite numbers, got {t!r}")
    coeffs = tuple((float(a), float(b), float(c)) for a, b, c in triples)
    return Orthogonalizer(coeffs, 1.0, "custom", len(coeffs))


def coefficient_schedule(method: OrthogonalizerSpec, steps: int | None = None) -> tuple[Coeffs, ...]:
    """The per-iteration coefficients of an orthogonaliser (``steps`` None: its own count)."""
    return resolve_orthogonalizer(method).schedule(steps)
