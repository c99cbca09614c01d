"""Which training runs the story needs, and their configs.

The story speaks in *roles*, each one lab run:

* ``adamw``     -- AdamW with spectra snapshots (singular-value pictures, loss reference);
* ``muon``      -- vanilla Muon with spectra snapshots (flat updates);
* ``dragon``    -- vanilla Muon in the regime where max logits explode;
* ``guardrail`` -- MuonClip on the dragon's settings: max logit held at tau;
* ``lifecycle`` -- MuonClip with weight decay and a decaying lr: the clip switches itself off.

Optional roles (drawn when present): ``dragon_adamw`` (AdamW on the dragon's settings) and
``efficiency_<optimizer>`` runs for the loss-vs-tokens chart.

When :mod:`muonclip.reproduce.presets` provides ``STORY_RUNS`` (and ``QUICK_OVERRIDES``),
the plan is built from it, so the story always draws the runs the reproduction presets
define. Without it a built-in plan on the ``small`` preset is used.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from ..lab.config import TrainConfig, apply_overrides, config_hash, get_preset

__all__ = ["StoryRun", "story_plan", "REQUIRED_ROLES"]

REQUIRED_ROLES = ("adamw", "muon", "dragon", "guardrail", "lifecycle")


@dataclass(frozen=True)
class StoryRun:
    """One run of the plan: ``label`` names the cache directory, ``roles`` what the story uses it for."""

    label: str
    cfg: TrainConfig
    roles: tuple[str, ...]
    description: str = ""
    overrides: tuple[str, ...] = field(default=())

    @property
    def config_hash(self) -> str:
        return config_hash(self.cfg)


# ----------------------------------------------------------------- built-in plan (fallback)

_SPECTRA = ["run.spectra_every=25"]
_QUICK_BASE = ["model.d_model=64", "model.n_layer=2", "model.n_head=4", "model.seq_len=64",
               "run.batch_size=8", "run.spectra_every=10", "run.eval_every=50", "run.eval_batches=2"]

# label, roles, description, overrides (full), overrides (quick)
_BUILTIN = [
    ("adamw", ("adamw", "dragon_adamw"), "AdamW (lr 3e-3, no weight decay)",
     ["optim.optimizer=adamw", "optim.weight_decay=0", *_SPECTRA],
     ["optim.optimizer=adamw", "optim.weight_decay=0", "run.steps=150"]),
    ("muon", ("muon", "dragon"), "vanilla Muon (lr 0.02, no weight decay, no clip)",
     ["optim.optimizer=muon", "optim.weight_decay=0", *_SPECTRA],
     ["optim.optimizer=muon", "optim.weight_decay=0", "run.steps=150"]),
    ("guardrail", ("guardrail",), "MuonClip on the dragon's settings (tau 50; quick: 15)",
     ["optim.optimizer=muonclip", "optim.weight_decay=0", "optim.qk_clip_tau=50", *_SPECTRA],
     ["optim.optimizer=muonclip", "optim.weight_decay=0", "optim.qk_clip_tau=15", "run.steps=150"]),
    ("lifecycle", ("lifecycle",), "MuonClip, weight decay 0.1, cosine lr (tau 50; quick: 10)",
     ["optim.optimizer=muonclip", "optim.weight_decay=0.1", "optim.qk_clip_tau=50", "schedule.kind=cosine",
      "run.steps=800", *_SPECTRA],
     ["optim.optimizer=muonclip", "optim.weight_decay=0.1", "optim.qk_clip_tau=10", "schedule.kind=cosine",
      "run.steps=200"]),
]


def _builtin_plan(quick: bool) -> list[StoryRun]:
    base = get_preset("small")
    plan = []
    for label, roles, desc, full, short in _BUILTIN:
        overrides = (_QUICK_BASE + short) if quick else full
        plan.append(StoryRun(label, apply_overrides(base, overrides), roles, desc, tuple(overrides)))
    return plan


# ----------------------------------------------------------------- plan from the reproduction presets


def _roles_for(label: str, preset: str, optimizer: str) -> tuple[str, ...]:
    p, o, lab = preset.lower(), optimizer.lower(), label.lower()
    if p == "spectra" or "spectra" in lab:
        return ("adamw",) if o == "adamw" else ("muon",)
    if p == "dragon" or "dragon" in lab:
        if o == "adamw":
            return ("dragon_adamw",)
        if o == "muonclip":
            return ("guardrail",)
        return ("dragon",)
    if p == "guardrail" or "guardrail" in lab:
        return ("guardrail",)
    if p == "lifecycle" or "lifecycle" in lab:
        return ("lifecycle",)
    if p == "efficiency" or "efficiency" in lab:
        return (f"efficiency_{o}",)
    return (lab,)


def _preset_plan(module, quick: bool) -> list[StoryRun]:
    quick_overrides = getattr(module, "QUICK_OVERRIDES", {}) or {}
    plan: list[StoryRun] = []
    for entry in module.STORY_RUNS:
        label, preset, optimizer, overrides = entry[:4]
        ov = list(overrides or [])
        if optimizer:
            ov = [f"optim.optimizer={optimizer}", *ov]
        if quick:
            # A run's own quick list (e.g. "guardrail": the dragon's plus a lower tau) wins over its preset's.
            ov = ov + list(quick_overrides.get(label, quick_overrides.get(preset, [])))
        cfg = apply_overrides(get_preset(preset), ov)
        desc = f"preset {preset}, {optimizer}"
        plan.append(StoryRun(label, cfg, _roles_for(label, preset, optimizer or cfg.optim.optimizer), desc, tuple(ov)))
    # Any required role the presets do not name is filled by the nearest stand-in.
    have = {r for run in plan for r in run.roles}
    stand_in = {"muon": "dragon", "dragon": "muon", "adamw": "dragon_adamw", "lifecycle": "guardrail"}
    for role in REQUIRED_ROLES:
        if role not in have and stand_in.get(role) in have:
            for i, run in enumerate(plan):
                if stand_in[role] in run.roles:
                    plan[i] = StoryRun(run.label, run.cfg, run.roles + (role,), run.description, run.overrides)
                    break
    return plan


def _presets_module():
    try:
        module = importlib.import_module("muonclip.reproduce.presets")
    except ImportError:
        return None
    return module if getattr(module, "STORY_RUNS", None) else None


def story_plan(quick: bool = False, *, use_presets: bool = True) -> list[StoryRun]:
    """The runs of the story (each a :class:`StoryRun`), quick or full.

    Every role of :data:`REQUIRED_ROLES` is covered by some run of the returned plan.
    """
    module = _presets_module() if use_presets else None
    plan = _preset_plan(module, quick) if module is not None else _builtin_plan(quick)
    if quick:
        # The quick story draws loss-vs-tokens from the dragon runs (same settings, three optimizers)
        # instead of training the separate efficiency runs: it keeps --quick within minutes.
        plan = [run for run in plan if not all(r.startswith("efficiency_") for r in run.roles)]
    have = {r for run in plan for r in run.roles}
    missing = [r for r in REQUIRED_ROLES if r not in have]
    if missing:
        # The presets' plan is incomplete: complete it from the built-in one.
        for run in _builtin_plan(quick):
            extra = tuple(r for r in run.roles if r in missing)
            if extra:
                plan.append(StoryRun(run.label, run.cfg, extra, run.description, run.overrides))
                missing = [r for r in missing if r not in extra]
    return plan
