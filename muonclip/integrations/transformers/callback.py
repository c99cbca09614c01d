"""The Trainer callback: logs MuonClip's QK-Clip statistics, or applies QK-Clip after another optimizer's step."""
from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback

from ...optim.distributed import all_reduce_max
from ...optim.muonclip import MuonClip, QKClipStats
from ...optim.qk_clip import GQA_MODES, apply_qk_clip_
from .handle import QKClipHandle

__all__ = ["MuonClipCallback"]


def _unwrap_optimizer(optimizer: Any) -> Any:
    """The optimizer inside accelerate's AcceleratedOptimizer (itself an Optimizer subclass)."""
    for _ in range(8):
        inner = getattr(optimizer, "optimizer", None)
        if inner is None or inner is optimizer:
            break
        optimizer = inner
    return optimizer


class MuonClipCallback(TrainerCallback):
    """Trainer callback for QK-Clip.

    * ``MuonClipCallback()`` with a MuonClip optimizer that clips itself (``qk_clip_tau``
      set, e.g. from :func:`make_muonclip_optimizer`): only records and logs the clip
      statistics (``qk_clip_max_logit``, ``qk_clip_n_clipped``, ``qk_clip_min_gamma``).
    * ``MuonClipCallback(handle, tau=...)``: applies QK-Clip itself right after every
      optimizer step, for an optimizer without it (Trainer's AdamW, MuonClip without tau).
      Max logits are all-reduced with MAX when torch.distributed is initialised.

    ``history`` holds one dict per optimizer step with a clip: step, max_logit, n_clipped, min_gamma.
    """

    def __init__(self, handle: QKClipHandle | None = None, *, tau: float | None = None,
                 gqa_mode: str = "exact", process_group: Any = None) -> None:
        if tau is not None and handle is None:
            raise ValueError("MuonClipCallback(tau=...) needs the QKClipHandle from enable_qk_clip(model)")
        if tau is not None and not tau > 0:
            raise ValueError(f"tau must be positive, got {tau}")
        if gqa_mode not in GQA_MODES:
            raise ValueError(f"unknown gqa_mode {gqa_mode!r}; expected one of {GQA_MODES}")
        self.handle, self.tau, self.gqa_mode, self.process_group = handle, tau, gqa_mode, process_group
        self.history: list[dict[str, float]] = []
        self._pending: QKClipStats | None = None
        self._last_seen: QKClipStats | None = None
        self._since_log: list[QKClipStats] = []

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        opt = _unwrap_optimizer(optimizer)
        if self.tau is not None and isinstance(opt, MuonClip) and opt.qk_clip_tau is not None:
            raise ValueError("the MuonClip optimizer already applies QK-Clip (qk_clip_tau is set); "
                             "use MuonClipCallback() without tau to only log, or drop qk_clip_tau")

    def _clip(self) -> QKClipStats:
        logits = all_reduce_max([t.float() for t in self.handle.pop_max_logits()], self.process_group)
        gammas = apply_qk_clip_(self.handle.params_by_name(), self.handle.spec(), logits, self.tau,
                                gqa_mode=self.gqa_mode)
        flat = torch.cat(gammas)
        return QKClipStats(gammas=gammas, n_clipped=int((flat < 1).sum()), min_gamma=float(flat.min()),
                           max_logit=float(torch.cat(logits).max()))

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self.tau is not None:
            self._pending = self._clip()
            return
        stats = getattr(_unwrap_optimizer(optimizer), "last_qk_clip", None)
        if isinstance(stats, QKClipStats) and stats.gammas and stats is not self._last_seen:
            self._pending = self._last_seen = stats

    def on_step_end(self, args, state, control, **kwargs):
        if self._pending is not None:
            s = self._pending
            self.history.append({"step": state.global_step, "max_logit": s.max_logit,
                                 "n_clipped": s.n_clipped, "min_gamma": s.min_gamma})
            self._since_log.append(s)
            self._pending = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or not self._since_log or not any(k in logs for k in ("loss", "train_loss")):
            return
        entry = {
            "qk_clip_max_logit": max(s.max_logit for s in self._since_log),
            "qk_clip_n_clipped": sum(s.n_clipped for s in self._since_log),
            "qk_clip_min_gamma": min(s.min_gamma for s in self._since_log),
        }
        self._since_log = []
        logs.update(entry)
        last = state.log_history[-1] if state.log_history else None
        if last is not None and all(last.get(k) == v for k, v in logs.items() if k in last):
            state.log_history[-1].update(entry)
