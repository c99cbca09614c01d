"""The guardrail search: candidate presets judged on the four K2-like targets over seeds and NS precisions.

    python -m muonclip.reproduce.search --candidate base --candidate long \\
        --seeds 3 --precision fp32 --precision bf16 --workers 2

Each candidate is the ``guardrail`` preset plus overrides (:data:`CANDIDATES`, or ``NAME=KEY=V,KEY=V``
on the command line). For every seed and Newton-Schulz precision it trains vanilla Muon,
MuonClip and (for the tau rule) AdamW on the same model into a run cache keyed by config hash,
then prints one row per candidate and precision: each target as median (min-max) over seeds and
met only where every seed meets it (the same :func:`~.results.guardrail_seed_numbers` and
:func:`~.results.guardrail_targets` that docs/results.md prints). ``--json`` keeps every
per-seed number, ``--figure`` draws the slack of every MuonClip run against lr and tau.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..io import atomic_write_text
from ..lab import TrainConfig, apply_overrides, get_preset
from ..lab.rundir import load_run
from ..viz.slack import slack_figure
from . import presets
from .pool import train_missing
from .results import CAP_MAX, guardrail_seed_numbers, guardrail_targets, peak_max_logit, slack_decomposition
from .runner import ensure_run, seed_label
from .sections.base import environment

__all__ = ["Candidate", "CANDIDATES", "candidate_jobs", "judge_candidate", "slack_of_candidate", "main"]


@dataclass(frozen=True)
class Candidate:
    """The guardrail preset plus ``overrides``; ``tau_over_adamw``: the tau rule (tau = this x
    the AdamW arm's peak max logit on the same model and seed), or None to keep the preset's tau."""

    name: str
    overrides: tuple[str, ...] = ()
    tau_over_adamw: float | None = None


# The candidates measured in docs/guardrail-search.md (the #26 rows); more can be given as
# NAME=KEY=VALUE,KEY=VALUE on the command line.
CANDIDATES: dict[str, Candidate] = {c.name: c for c in (
    Candidate("base"),
)}

ARMS = ("adamw", "muon", "muonclip")
_ADAMW_TAU = 26.7


# Keys an arm never reads, left out of its config so that one run (one config hash) serves every
# candidate that differs only in them: AdamW never reads the Muon lr; only MuonClip clips.
_UNREAD = {"adamw": ("optim.lr=", "optim.qk_clip_window="), "muon": ("optim.qk_clip_window=",)}


def _config(c: Candidate, optimizer: str, seed: int, precision: str, tau: float | None = None) -> TrainConfig:
    mine = [o for o in c.overrides if not o.startswith(_UNREAD.get(optimizer, ()))]
    over = [f"optim.optimizer={optimizer}", *mine, f"run.seed={seed}", f"optim.ns_precision={precision}"]
    if optimizer == "adamw":
        # AdamW never reads tau, and the preset's tau is derived from these very runs: a fixed value
        # keeps their config hash from following it (26.7: the preset's tau when they were first cached).
        over.append(f"optim.qk_clip_tau={_ADAMW_TAU:g}")
    if tau is not None:
        over.append(f"optim.qk_clip_tau={tau:.6g}")
    return apply_overrides(get_preset("guardrail"), over)


def _label(c: Candidate, optimizer: str, seed: int, precision: str) -> str:
    return seed_label(f"search-{c.name}-{optimizer}-{precision}", seed, -1)


def _adamw_tau(c: Candidate, seed: int, cache: Path) -> float:
    """The rule's tau on ``seed``: ``tau_over_adamw`` x the AdamW arm's peak (AdamW runs fp32
    and has no Newton-Schulz, so one AdamW run serves both precisions)."""
    cfg = _config(c, "adamw", seed, "fp32")
    rows = load_run(ensure_run(cfg, cache, _label(c, "adamw", seed, "fp32"), progress=False)).rows
    return c.tau_over_adamw * peak_max_logit(rows)


def candidate_jobs(c: Candidate, seeds: Sequence[int], precisions: Sequence[str], cache: Path,
                   *, stage: str, arms: Sequence[str] = ("muon", "muonclip")) -> list[tuple[str, TrainConfig]]:
    """The runs of one stage: ``"adamw"`` (what the tau rule needs) or ``"optim"`` (``arms`` on
    each seed and precision; needs the AdamW stage's runs when tau follows AdamW)."""
    jobs = []
    for seed in seeds:
        if stage == "adamw":
            if c.tau_over_adamw is not None:
                jobs.append((_label(c, "adamw", seed, "fp32"), _config(c, "adamw", seed, "fp32")))
            continue
        tau = _adamw_tau(c, seed, cache) if c.tau_over_adamw is not None else None
        for p in precisions:
            for opt in arms:
                jobs.append((_label(c, opt, seed, p), _config(c, opt, seed, p, tau)))
    return jobs


def _seed_run(c: Candidate, optimizer: str, seed: int, precision: str, cache: Path) -> tuple[TrainConfig, Any]:
    """``(config, RunData)`` of one arm of ``c`` on ``seed``, tau by the candidate's rule."""
    tau = _adamw_tau(c, seed, cache) if c.tau_over_adamw is not None else None
    cfg = _config(c, optimizer, seed, precision, tau)
    return cfg, load_run(ensure_run(cfg, cache, _label(c, optimizer, seed, precision), progress=False))


def _slack_numbers(cfg: TrainConfig, clip_run: Any) -> dict[str, Any]:
    """A MuonClip run's tau, lr and slack decomposition."""
    tau = cfg.optim.qk_clip_tau
    return {"tau": tau, "lr": cfg.optim.lr, "slack": slack_decomposition(clip_run.rows, tau)}


def slack_of_candidate(c: Candidate, seeds: Sequence[int], precision: str, cache: Path) -> dict[str, Any]:
    """The slack decomposition of every MuonClip run of one candidate (no Muon arm needed)."""
    per_seed = [{"seed": seed, **_slack_numbers(*_seed_run(c, "muonclip", seed, precision, cache))} for seed in seeds]
    return {"candidate": c.name, "overrides": list(c.overrides), "precision": precision, "per_seed": per_seed}


def slack_rows(results: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown rows of :func:`slack_of_candidate` results: one per run."""
    def f(d, part, stat):
        return f"{d[part][stat]:.3f}" if d and d.get(part) else "n/a"

    return [f"| {r['candidate']} | {s['seed']} | {s['lr']:g} | {s['tau']:.4g} | {f(s['slack'], 'growth', 'p90')} / "
            f"{f(s['slack'], 'growth', 'max')} | {f(s['slack'], 'batch', 'p90')} / {f(s['slack'], 'batch', 'max')} | "
            + (f"{s['slack']['worst']['excess']:.3f} = {s['slack']['worst']['growth']:.3f} x "
               f"{s['slack']['worst']['batch']:.3f}" if s["slack"] else "no clip") + " |"
            for r in results for s in r["per_seed"]]


SLACK_HEAD = ("| candidate | seed | lr | tau | growth p90 / max | batch p90 / max | "
              "worst row: excess = growth x batch |\n|---|---|---|---|---|---|---|")


def judge_candidate(c: Candidate, seeds: Sequence[int], precision: str, cache: Path) -> dict[str, Any]:
    """Per-seed numbers and the targets' verdicts of one candidate in one precision."""
    per_seed = []
    for seed in seeds:
        _, muon = _seed_run(c, "muon", seed, precision, cache)
        cfg, clip = _seed_run(c, "muonclip", seed, precision, cache)
        tau = cfg.optim.qk_clip_tau
        numbers = {**guardrail_seed_numbers(muon.rows, clip.rows, tau), **_slack_numbers(cfg, clip)}
        if c.tau_over_adamw is not None:
            numbers["adamw_peak"] = tau / c.tau_over_adamw
        per_seed.append({"seed": seed, **numbers})
    verdicts = guardrail_targets(per_seed, label=f"{c.name} {precision}", seeds=list(seeds))
    return {"candidate": c.name, "overrides": list(c.overrides), "tau_over_adamw": c.tau_over_adamw,
            "precision": precision, "per_seed": per_seed, "targets": [v.to_dict() for v in verdicts]}


def _parse_candidate(text: str) -> Candidate:
    if text in CANDIDATES:
        return CANDIDATES[text]
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(
            f"unknown candidate {text!r}: give one of {', '.join(CANDIDATES)} or NAME=KEY=VALUE,KEY=VALUE")
    over, rule = [], None
    for item in filter(None, rest.split(",")):
        if item.startswith("tau_over_adamw="):
            rule = float(item.split("=", 1)[1])
        else:
            over.append(item)
    cand = Candidate(name, tuple(over), rule)
    _config(cand, "muonclip", 0, "fp32", 1.0 if rule else None)  # unknown keys fail here, before training
    return cand


def table_rows(results: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown rows: candidate, precision, then each target's measured text and whether it is met."""
    rows = []
    for r in results:
        t = {v["name"].split(": ", 1)[1]: v for v in r["targets"]}
        cells = [next(v for k, v in t.items() if k.startswith(prefix))
                 for prefix in ("Muon peak", "heads ever clipped", "cap after", "final val loss")]
        taus = sorted({round(s["tau"], 2) for s in r["per_seed"]})
        rows.append(f"| {r['candidate']} | {' '.join(r['overrides']) or '(preset)'} | "
                    f"{'/'.join(f'{x:g}' for x in taus)} | {r['precision']} | {len(r['per_seed'])} | "
                    + " | ".join(f"{v['measured']}{'' if v['met'] else ' ✗'}" for v in cells) + " |")
    return rows


TABLE_HEAD = ("| candidate | overrides | tau | NS | seeds | Muon peak (>= 2.5 tau) | heads clipped (<= 25%) | "
              "cap (<= 1.10 tau) | val loss vs Muon (<= +1%) |\n|---|---|---|---|---|---|---|---|---|")


def main(argv: Sequence[str] | None = None, log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(prog="python -m muonclip.reproduce.search", description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidate", action="append", type=_parse_candidate, required=True,
                    help=f"one of {', '.join(CANDIDATES)}, or NAME=KEY=VALUE,... (tau_over_adamw=X: tau rule)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    ap.add_argument("--first-seed", type=int, default=0, help="start the seeds here (default 0)")
    ap.add_argument("--precision", action="append", choices=("fp32", "bf16"), help="NS precision (repeatable; "
                    "default fp32 and bf16)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=Path("runs/search"))
    ap.add_argument("--json", type=Path, help="write every per-seed number here")
    ap.add_argument("--figure", type=Path, help="draw every MuonClip run's slack against lr and tau here (PNG)")
    ap.add_argument("--slack-only", action="store_true",
                    help="train only the MuonClip arms and report their one-step slack (no targets)")
    args = ap.parse_args(argv)
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    presets.register_presets()
    precisions = args.precision or ["fp32", "bf16"]
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    t0 = time.perf_counter()
    arms = ("muonclip",) if args.slack_only else ("muon", "muonclip")
    for stage in ("adamw", "optim"):
        jobs = [j for c in args.candidate
                for j in candidate_jobs(c, seeds, precisions, args.cache, stage=stage, arms=arms)]
        train_missing(jobs, args.cache, workers=args.workers, threads=1, log=log)
    judge = slack_of_candidate if args.slack_only else judge_candidate
    results = [judge(c, seeds, p, args.cache) for c in args.candidate for p in precisions]
    print(SLACK_HEAD if args.slack_only else TABLE_HEAD)
    print("\n".join((slack_rows if args.slack_only else table_rows)(results)))
    log(f"[search] {len(results)} row(s) in {time.perf_counter() - t0:.0f} s")
    if args.json:
        given = argv if argv is not None else sys.argv[1:]
        record = {"command": "python -m muonclip.reproduce.search " + " ".join(given),
                  "environment": environment(), "results": results}
        atomic_write_text(args.json, json.dumps(record, indent=1) + "\n")
    if args.figure:
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        slack_figure(slack_points(results), cap=CAP_MAX).savefig(args.figure, dpi=110)
    return results


def slack_points(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per MuonClip run (candidate, precision, seed): its lr, tau and slack factors."""
    return [{"lr": s["lr"], "tau": s["tau"], "growth": (s["slack"] or {}).get("growth"),
             "batch": (s["slack"] or {}).get("batch"), "worst": (s["slack"] or {}).get("worst"),
             "label": f"{r['candidate']} {r['precision']} seed {s['seed']}"}
            for r in results for s in r["per_seed"]]


if __name__ == "__main__":
    main()
