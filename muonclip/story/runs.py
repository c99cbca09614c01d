"""Which training runs the story needs: the reproduction presets' ``STORY_RUNS``, each given roles.

The story speaks in *roles*, each one lab run:

* ``adamw``     -- AdamW with spectra snapshots (singular-value pictures, loss reference);
* ``muon``      -- vanilla Muon with spectra snapshots (flat updates);
* ``dragon``    -- vanilla Muon in the regime where max logits explode;
* ``guardrail`` -- MuonClip on the dragon's settings: max logit held at tau;
* ``lifecycle`` -- MuonClip with weight decay and a decaying lr: the clip switches itself off.

Optional roles (drawn when present): ``dragon_adamw`` (AdamW on the dragon's settings) and
``efficiency_<optimizer>`` runs for the loss-vs-tokens chart.

The plan is built from :data:`muonclip.reproduce.presets.STORY_RUNS` (and its
``QUICK_OVERRIDES``), so the story always draws the runs the reproduction presets define.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..lab import TrainConfig, apply_overrides, config_hash, get_preset
from ..reproduce import presets

__all__ = ["StoryRun", "story_plan", "REQUIRED_ROLES"]

REQUIRED_ROLES = ("adamw", "muon", "dragon", "guardrail", "lifecycle")
# A required role no preset run names is played by the run of its stand-in role.
_STAND_IN = {"muon": "dragon", "dragon": "muon", "adamw": "dragon_adamw", "lifecycle": "guardrail"}


@dataclass(frozen=True)
class StoryRun:
    """One run of the plan: ``label`` names the cache directory, ``roles`` what the story uses it for."""

    label: str
    cfg: TrainConfig
    roles: tuple[str, ...]
    description: str = ""
    overrides: tuple[str, ...] = field(default=())
    preset: str = ""  # the named preset the config starts from (before ``overrides``)

    @property
    def config_hash(self) -> str:
        return config_hash(self.cfg)


def _roles_for(label: str, preset: str, optimizer: str) -> tuple[str, ...]:
    p, o, lab = preset.lower(), optimizer.lower(), label.lower()
    if p == "spectra" or "spectra" in lab:
        return ("adamw",) if o == "adamw" else ("muon",)
    if p == "guardrail" or "guardrail" in lab:
        if o == "muon":
            return ("guardrail_muon",)
        return ("guardrail_layer",) if "layer" in lab else ("guardrail",)
    if p == "dragon" or "dragon" in lab:
        if o == "adamw":
            return ("dragon_adamw",)
        if o == "muonclip":
            return ("dragon_clip",)
        return ("dragon",)
    if p == "lifecycle" or "lifecycle" in lab:
        return ("lifecycle",)
    if p == "efficiency" or "efficiency" in lab:
        return (f"efficiency_{o}",)
    return (lab,)


def story_plan(quick: bool = False) -> list[StoryRun]:
    """The runs of the story (each a :class:`StoryRun`), quick or full.

    Every role of :data:`REQUIRED_ROLES` is covered by some run of the returned plan.
    """
    plan: list[StoryRun] = []
    for entry in presets.STORY_RUNS:
        label, preset, optimizer, overrides = entry[:4]
        ov = list(overrides or [])
        if optimizer:
            ov = [f"optim.optimizer={optimizer}", *ov]
        if quick:
            # A run's own quick list (e.g. "guardrail": the dragon's plus a lower tau) wins over its preset's.
            ov = ov + list(presets.QUICK_OVERRIDES.get(label, presets.QUICK_OVERRIDES.get(preset, [])))
        cfg = apply_overrides(get_preset(preset), ov)
        desc = f"preset {preset}, {optimizer}"
        plan.append(StoryRun(label, cfg, _roles_for(label, preset, optimizer or cfg.optim.optimizer), desc, tuple(ov),
                             preset))
    if quick:
        # The quick story draws loss-vs-tokens from the dragon runs (same settings, three optimizers)
        # instead of training the separate efficiency runs: it keeps --quick within minutes.
        plan = [run for run in plan if not all(r.startswith("efficiency_") for r in run.roles)]
    for role in REQUIRED_ROLES:
        have = {r for run in plan for r in run.roles}
        if role in have:
            continue
        i = next((i for i, run in enumerate(plan) if _STAND_IN.get(role) in run.roles), None)
        if i is None:
            raise ValueError(f"the reproduction presets' STORY_RUNS have no run for the story's {role!r} role")
        run = plan[i]
        plan[i] = replace(run, roles=run.roles + (role,))
    return plan
