"""The notebook's lessons: figures for Newton-Schulz and QK-Clip, sliders, and the live mini-dragon.

The notebook writes the math out itself (Newton-Schulz, QK-Clip); what is only drawing,
widgets or a training loop lives here, tested in ``tests/story/test_lessons.py``. Plot
functions take data and return a Figure. :func:`sliders` gives ipywidgets sliders where a
kernel runs with ipywidgets installed, else the figure of the default values.
"""
from __future__ import annotations

import io
import math
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch

__all__ = ["circle_figure", "singular_values_figure", "logits_figure", "sliders", "widgets_enabled", "as_image",
           "MiniDragon", "mini_dragon_config", "train_mini_dragon", "mini_dragon_figure"]


def _figure(**kwargs):
    """A Figure outside pyplot: nothing global to close, and a kernel shows only what is displayed."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None and hasattr(get_ipython(), "kernel")


# -- Newton-Schulz -----------------------------------------------------------------------------

def circle_figure(history: Sequence[torch.Tensor]):
    """The unit circle's image under each iterate of a 2x2 matrix (``history[k]`` = X_k)."""
    theta = torch.linspace(0, 2 * math.pi, 200, dtype=torch.float64)
    circle = torch.stack([theta.cos(), theta.sin()])
    fig = _figure(figsize=(5.2, 5.2))
    ax = fig.subplots()
    cmap = _cmap("viridis")
    for k, X in enumerate(history):
        pts = X.double() @ circle
        sv = torch.linalg.svdvals(X.double())
        ax.plot(pts[0], pts[1], color=cmap(k / max(1, len(history) - 1)), lw=2 if k in (0, len(history) - 1) else 1,
                label=f"X_{k}: sigma = {sv[0]:.3f}, {sv[1]:.3f}")
    ax.plot(circle[0], circle[1], "k--", lw=0.8, label="unit circle")
    ax.set_aspect("equal")
    lim = 1.05 * max(1.0, max(float((X.double() @ circle).abs().max()) for X in history))
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_title("X_k applied to the unit circle")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def singular_values_figure(measured: np.ndarray, predicted: np.ndarray, coeffs: tuple[float, float, float]):
    """Left: the scalar map p(s) = a s + b s^3 + c s^5 and the singular values of X_0 moving under it.
    Right: the singular values after each iteration: measured on the matrix (dots) and the
    scalar map iterated on each singular value of X_0 (lines). ``measured``: (iterations + 1, k),
    each row sorted as an SVD gives it; ``predicted``: (iterations + 1, k), column j the path
    of the j-th singular value of X_0 (p is not monotone, so paths may cross)."""
    a, b, c = coeffs
    fig = _figure(figsize=(10, 4.2))
    left, right = fig.subplots(1, 2)
    s = np.linspace(0, 1.25, 400)
    left.plot(s, a * s + b * s**3 + c * s**5, color="C0", label="p(s) = a s + b s^3 + c s^5")
    left.plot(s, s, "k:", lw=0.8, label="p(s) = s")
    left.axhline(1, color="grey", lw=0.6)
    left.scatter(predicted[0], predicted[1], s=10, color="C1", zorder=3, label="(sigma, p(sigma)) of X_0")
    left.set_xlabel("sigma")
    left.set_ylabel("p(sigma)")
    left.set_ylim(0, 1.4)
    left.set_title("One iteration acts on each singular value alone")
    left.legend(fontsize=8, loc="lower right")
    steps = np.arange(measured.shape[0])
    for j in range(predicted.shape[1]):
        right.plot(steps, predicted[:, j], color="C0", lw=0.6, alpha=0.5)
    for k in steps:
        right.plot(np.full(measured.shape[1], k), measured[k], "o", color="C1", ms=2.5)
    right.plot([], [], color="C0", label="p iterated on sigma_0")
    right.plot([], [], "o", color="C1", ms=3, label="svdvals(X_k)")
    right.set_yscale("log")
    right.set_xlabel("iteration k")
    right.set_ylabel("singular value")
    right.set_title("Singular values after each iteration")
    right.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


# -- QK-Clip -----------------------------------------------------------------------------------

def logits_figure(before: torch.Tensor, after: torch.Tensor, tau: float):
    """One head's causal logits (T x T) before and after QK-Clip, on one colour scale."""
    mask = torch.ones_like(before, dtype=torch.bool).tril()
    vmax = float(before[mask].abs().max())
    fig = _figure(figsize=(9, 4))
    axes = fig.subplots(1, 2)
    for ax, logits, title in ((axes[0], before, "before"), (axes[1], after, "after QK-Clip")):
        shown = logits.double().masked_fill(~mask, float("nan")).numpy()
        im = ax.imshow(shown, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_title(f"{title}: max logit {float(logits[mask].max()):.2f}", fontsize=10)
        ax.set_xlabel("key j")
        ax.set_ylabel("query i")
    fig.colorbar(im, ax=axes, shrink=0.8)
    fig.suptitle(f"one head's logits s_ij, tau = {tau:g}", fontsize=10)
    return fig


# -- sliders -----------------------------------------------------------------------------------

def widgets_enabled() -> bool:
    """Sliders are drawn when ipywidgets is installed, a kernel runs, and
    ``MUONCLIP_NOTEBOOK_WIDGETS`` is not ``0`` (``make notebook`` sets it: the committed
    notebook keeps static figures, which render anywhere)."""
    if os.environ.get("MUONCLIP_NOTEBOOK_WIDGETS", "1") == "0" or not _in_kernel():
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def sliders(draw: Callable[..., Any], *, manual: bool = False, **controls: tuple) -> Any:
    """``draw(**values)`` under sliders, or once with the defaults.

    ``controls``: ``name=(low, high, step, default)``. ``draw`` returns a Figure (shown) or
    anything displayable. ``manual``: a button runs ``draw`` (for draws that train)."""
    for name, spec in controls.items():
        if len(spec) != 4 or not spec[0] <= spec[3] <= spec[1]:
            raise ValueError(f"control {name!r} must be (low, high, step, default) with low <= default <= high, "
                             f"got {spec}")
    defaults = {name: spec[3] for name, spec in controls.items()}
    if not widgets_enabled():
        return _show(draw(**defaults))
    import ipywidgets as w

    made = {}
    for name, (low, high, step, default) in controls.items():
        kind = w.IntSlider if all(isinstance(v, int) for v in (low, high, step, default)) else w.FloatSlider
        made[name] = kind(min=low, max=high, step=step, value=default, description=name, continuous_update=False)
    run = w.interact_manual if manual else w.interact
    return run(lambda **values: _show(draw(**values)), **made)


def as_image(fig):
    """``fig`` as an IPython PNG image: shown the same under any matplotlib backend."""
    from IPython.display import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return Image(data=buf.getvalue(), format="png")


def _show(obj: Any) -> Any:
    from IPython.display import display

    if hasattr(obj, "savefig"):
        display(as_image(obj))
        return None
    return obj


# -- the live mini-dragon ---------------------------------------------------------------------

OPTIMIZERS = ("adamw", "muon", "muonclip")


def mini_dragon_config(steps: int, lr: float | None = None, tau: float | None = None):
    """The quick story's dragon (2 layers of 4 heads of 32, d 64, T 64, batch 8) for ``steps``
    steps; ``lr``: Muon's lr (AdamW keeps the preset's), ``tau``: MuonClip's threshold."""
    from ..lab import apply_overrides, get_preset
    from ..reproduce import presets

    ov = [o for o in presets.QUICK_OVERRIDES["dragon-clip"] if not o.startswith(("run.steps", "run.spectra_every"))]
    ov += [f"run.steps={steps}", "run.spectra_every=0", "run.eval_every=0"]
    if lr is not None:
        ov.append(f"optim.lr={lr}")
    if tau is not None:
        ov.append(f"optim.qk_clip_tau={tau}")
    return apply_overrides(get_preset("dragon"), ov)


@dataclass
class MiniDragon:
    """What the mini-dragon measured: per optimizer, the loss and the max logit of every step."""

    steps: int
    tau: float
    lr: float
    loss: dict[str, list[float]] = field(default_factory=dict)
    max_logit: dict[str, list[float]] = field(default_factory=dict)
    n_clipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def train_mini_dragon(steps: int = 300, lr: float | None = None, tau: float | None = None, *,
                      draw_every: int = 0, on_draw: Callable[[MiniDragon], None] | None = None,
                      progress: bool = True, threads: int = 1) -> MiniDragon:
    """Train AdamW, Muon and MuonClip side by side on the mini-dragon, step by step, from the
    same init and batches (the lab's model, optimizers and data). Every ``draw_every`` steps
    ``on_draw`` gets the history so far (the notebook redraws its figure). ``threads``: torch
    threads meanwhile (1, as the story's runs: these models are too small to share)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train_mini_dragon(steps, lr, tau, draw_every, on_draw, progress)
    finally:
        torch.set_num_threads(before)


def _train_mini_dragon(steps, lr, tau, draw_every, on_draw, progress) -> MiniDragon:
    if widgets_enabled():  # a widget bar where widgets work, else text (it reads the same saved)
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm

    from ..lab.train import build_model, build_optimizer, load_dataset

    base = mini_dragon_config(steps, lr, tau)
    data = load_dataset(base)
    arms = {}
    for name in OPTIMIZERS:
        cfg = replace(base, optim=replace(base.optim, optimizer=name))
        torch.manual_seed(cfg.run.seed)
        model = build_model(cfg)
        model.train()
        arms[name] = (model, build_optimizer(model, cfg))
    out = MiniDragon(steps, base.optim.qk_clip_tau, base.optim.lr, {n: [] for n in OPTIMIZERS},
                     {n: [] for n in OPTIMIZERS}, {n: 0 for n in OPTIMIZERS})
    t0 = time.perf_counter()
    with tqdm(total=steps, desc="mini-dragon", unit="step", disable=not progress, mininterval=2) as bar:
        for step in range(steps):
            x, y = data.batch_at(step, base.run.batch_size, base.model.seq_len)
            for name, (model, opt) in arms.items():
                _, loss = model(x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                out.max_logit[name].append(float(torch.cat(model.max_logits()).max()))
                opt.step()
                out.loss[name].append(float(loss.detach()))
                stats = getattr(opt, "last_qk_clip", None)
                out.n_clipped[name] += bool(stats and stats.n_clipped)
            bar.update(1)
            bar.set_postfix({n: f"{v[-1]:.1f}" for n, v in out.max_logit.items()}, refresh=False)
            if on_draw is not None and draw_every and ((step + 1) % draw_every == 0 or step + 1 == steps):
                out.seconds = time.perf_counter() - t0
                on_draw(out)
    out.seconds = time.perf_counter() - t0
    return out


def mini_dragon_figure(result: MiniDragon):
    """Max logit (log scale, tau marked) and training loss of the three optimizers so far."""
    fig = _figure(figsize=(10, 3.8))
    top, bottom = fig.subplots(1, 2)
    colors = {"adamw": "C2", "muon": "C3", "muonclip": "C0"}
    labels = {"adamw": "AdamW", "muon": "Muon", "muonclip": f"MuonClip (tau = {result.tau:g})"}
    for name in OPTIMIZERS:
        steps = np.arange(1, len(result.max_logit[name]) + 1)
        top.plot(steps, result.max_logit[name], color=colors[name], label=labels[name])
        bottom.plot(steps, result.loss[name], color=colors[name], label=labels[name], lw=0.9)
    top.axhline(result.tau, color="C0", ls="--", lw=0.8)
    top.set_yscale("log")
    top.set_title("max attention logit (before each step)")
    bottom.set_title("training loss")
    for ax in (top, bottom):
        ax.set_xlim(0, result.steps)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    done = len(result.loss[OPTIMIZERS[0]])
    fig.suptitle(f"mini-dragon: step {done}/{result.steps}, {result.seconds:.0f} s, Muon lr {result.lr:g}", fontsize=10)
    fig.tight_layout()
    return fig
