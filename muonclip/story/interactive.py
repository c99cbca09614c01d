"""The data behind report.html's controls: per-step series of a run, per-head logits, a measured attention row.

The figure functions of :mod:`muonclip.story.figures` call these with the loaded runs and keep
the result in their numbers (under ``"interactive"``); :mod:`muonclip.story.widgets` embeds it
in the page as JSON. Everything comes from the run's metrics rows through
:mod:`muonclip.reproduce.results` (or from the trade-off result), nothing is typed in, and
values keep full precision so a test can compare a readout with ``metrics.jsonl``.
"""
from __future__ import annotations

from typing import Any

from ..lab.rundir import RunData
from ..reproduce import results

__all__ = ["tau_drawn", "step_series", "head_series", "attention_row"]


def tau_drawn(run: RunData, role: str) -> dict[str, Any]:
    """What a figure records about the tau it drew: the value and the run whose config it came
    from (checked against that run's config.json by the tests)."""
    if run.tau is None:
        raise ValueError(f"run {run.run_id} ({role}) has no optim.qk_clip_tau in its config")
    return {"tau": run.tau, "run_id": run.run_id, "role": role}


def step_series(run: RunData, label: str) -> dict[str, Any]:
    """One run's per-step max logit, heads clipped and lr (``steps[i]`` is the step of each value)."""
    steps, max_logit = results.series(run.rows, "max_logit")
    by_step = {int(r["step"]): r for r in run.rows}
    return {"label": label, "run_id": run.run_id, "tau": run.tau, "optimizer": run.optimizer,
            "steps": [int(s) for s in steps], "max_logit": [float(v) for v in max_logit],
            "n_clipped": [int(by_step[int(s)].get("n_clipped", 0) or 0) for s in steps],
            "lr": [float(by_step[int(s)].get("lr", 0.0) or 0.0) for s in steps]}


def head_series(run: RunData) -> dict[str, Any]:
    """Every head's max logit at every step and which heads the clip scaled at each step
    (:func:`~muonclip.reproduce.results.clip_raster`), for the rogue-heads controls."""
    tau = run.tau
    names = results.head_names(run.rows)
    steps, clipped_heads, raster = results.clip_raster(run.rows, tau)
    index = {h: i for i, h in enumerate(names)}
    clipped = [[index[h] for h, on in zip(clipped_heads, row, strict=True) if on] for row in raster.tolist()]
    return {"run_id": run.run_id, "tau": tau, "steps": steps,
            "heads": [f"L{li}H{hi}" for li, hi in names],
            "logits": [[float(v) for layer in r["max_logits"] for v in layer] for r in run.rows],
            "clipped": clipped}


def attention_row(result: dict) -> dict[str, Any]:
    """The trade-off's measured attention rows (answer position over probe prompt 0, the head
    with the widest keyword margin) at each arm's last snapshot: the what-if control rescales
    their logits, known up to a constant as log(p), which softmax ignores."""
    arms = []
    for arm in result["arms"]:
        last = arm["snapshots"][-1]
        arms.append({"label": arm["label"], "optimizer": arm["optimizer"], "step": int(last["step"]),
                     "best_head": list(last["best_head"]), "attention": [float(p) for p in last["probe_attention"]]})
    return {"run_id": result.get("run_id"), "config_hash": result.get("config_hash"),
            "tokens": list(result["probe_text"]), "keyword_pos": int(result["probe_keyword_pos"]), "arms": arms}
