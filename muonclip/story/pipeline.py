"""``muonclip story``: get the story's runs, draw every figure, write the report.

    result = run_story("runs/story", cache_dir="runs/cache", quick=True)
    print(result.report)

The story plans, reads and draws: its runs, the trade-off experiment and the SAEs are trained
first, all at once on every core (:mod:`.training`), by :mod:`muonclip.reproduce`
(:func:`~muonclip.reproduce.runner.ensure_run`, :func:`~muonclip.reproduce.tradeoff.ensure_tradeoff`)
and cached by config hash, so a second call with the same plan only re-draws. Progress goes to
stderr: an overall bar plus one line per run (with the time left) or figure.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..io import atomic_write_text
from ..lab import apply_overrides
from ..lab.rundir import load_run
from ..reproduce import tradeoff
from ..reproduce.runner import ensure_run, ensure_sae_compare
from ..sae import QUICK
from ..sae.config import sae_config_hash
from ..viz.style import fmt_g
from .figures import FIGURES
from .report import write_report
from .runs import story_plan
from .training import default_workers, story_jobs, train_jobs

__all__ = ["StoryResult", "run_story", "STORY_FILES"]

# Every file a complete story writes (plus l0.png when the SAE chapter is drawn).
STORY_FILES = (
    "adamw_singular_distortion.gif", "adam_vs_muon.gif", "spectral_entropy.png", "singular_values_goal.gif",
    "logit_bridge.png", "dragon.png", "dragon.gif", "rogue_heads.png", "guardrail.gif", "qk_clip_lifecycle.gif",
    "qk_clip_cap.png", "qk_clip_per_layer.png", "qk_clip_tradeoff.gif", "qk_clip_tradeoff.png",
    "qk_clip_tradeoff_sweep.png", "max_logits.png", "loss_vs_tokens.png",
    "report.html", "numbers.json", "figures.json",
)


@dataclass
class StoryResult:
    out_dir: Path
    report: Path
    numbers: dict[str, Any]
    files: list[Path]
    errors: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def _sae_config(quick: bool):
    """The SAE comparison's config: the SAE module's QUICK, shorter still in a quick story."""
    if quick:
        return apply_overrides(QUICK, ["steps=150", "n_tokens=16384", "n_eval_tokens=2048"])
    return QUICK


# The run the SAEs read, by role: the no-decay guardrail, else the dragon.
SAE_SOURCE_ROLES = ("dragon_clip", "dragon")


def _sae_source(plan: list) -> Any:
    """The plan's run the SAEs read (the first of :data:`SAE_SOURCE_ROLES` it has)."""
    for role in SAE_SOURCE_ROLES:
        item = next((item for item in plan if role in item.roles), None)
        if item is not None:
            return item
    return None


def _sae_stage(runs: dict, cache_dir: Path, quick: bool, log: Callable[[str], None]):
    """Adam vs Muon SAEs on the no-decay guardrail run's activations (cached)."""
    source = next(runs[role] for role in SAE_SOURCE_ROLES if runs.get(role))
    cfg = _sae_config(quick)
    out, _ = ensure_sae_compare(source.run_dir, cfg, cache_dir, log=log)
    dirs = {opt: out / opt for opt in ("adam", "muon") if (out / opt / "metrics.jsonl").exists()}
    prov = f"SAE {out.name} on run {source.run_id} | config {sae_config_hash(cfg)} | git {source.git_sha[:12]}"
    info = {"label": "sae", "roles": ["sae"], "run_id": out.name, "config_hash": sae_config_hash(cfg),
            "git_sha": source.git_sha, "description": f"Adam vs Muon SAEs on {source.run_id}"}
    return dirs, prov, info


def run_story(out_dir: str | Path = "runs/story", *, cache_dir: str | Path = "runs/cache", quick: bool = False,
              progress: bool | None = None, log: Callable[[str], None] | None = None,
              sae: bool = True, plan: list | None = None, threads: int | None = 1,
              workers: int | None = None) -> StoryResult:
    """Everything the story needs, from runs to ``out_dir/report.html``.

    ``plan`` (a list of :class:`~muonclip.story.runs.StoryRun`) replaces :func:`story_plan`.
    ``threads``: torch CPU threads of this process and of each training worker (default 1: on
    a shared 2-core machine, two threads of these small models stall whenever another process
    takes a core; None keeps torch's setting here and gives each worker 1). Restored afterwards.
    ``workers``: training processes (default: the cores, divided by ``threads``; 1 trains here,
    one job after another).
    """
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    if workers is None:
        workers = max(1, default_workers() // (threads or 1))
    try:
        return _run_story(out_dir, cache_dir=cache_dir, quick=quick, progress=progress, log=log, sae=sae,
                          plan=plan, workers=workers, threads=threads or 1)
    finally:
        torch.set_num_threads(before)


def _train_stage(plan: list, cache_dir: Path, quick: bool, sae: bool, workers: int, threads: int,
                 say: Callable[[str], None]) -> dict[str, Any]:
    """Train everything the story lacks, on ``workers`` processes (:mod:`.training`); a failed
    run or trade-off raises (after the others finished and were cached), a failed SAE is
    reported in the result's ``errors``."""
    from ..lab.train import run_info

    source = _sae_source(plan) if sae else None
    jobs = story_jobs([(item.label, item.cfg) for item in plan], cache_dir,
                      tradeoff_cfg=tradeoff.QUICK if quick else tradeoff.FULL, sweep=tradeoff.sweep_plan(quick),
                      sae=(source.label, source.cfg, _sae_config(quick)) if source is not None else None,
                      git_sha=run_info(plan[0].cfg)["git_sha"] if plan else None)
    stage = train_jobs(jobs, workers=workers, threads=threads, log=say)
    if jobs:
        say(f"training done in {stage['wall']:.0f} s wall time ({sum(stage['cpu'].values()):.0f} s of CPU time "
            f"on {min(workers, len(jobs))} worker(s))")
    fatal = {name: err for name, err in stage["errors"].items() if name != "SAE"}
    if fatal:
        raise RuntimeError("training failed: " + "; ".join(f"{n}: {e}" for n, e in fatal.items()))
    return stage


def _run_story(out_dir, *, cache_dir, quick, progress, log, sae, plan, workers, threads) -> StoryResult:
    out_dir, cache_dir = Path(out_dir), Path(cache_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    show = sys.stderr.isatty() if progress is None else progress
    plan = story_plan(quick) if plan is None else plan
    n_stages = len(plan) + 2 + int(sae) + len(FIGURES) + 1
    bar = tqdm(total=n_stages, desc="story", unit="stage", disable=not show, dynamic_ncols=True, leave=True)

    def say(msg: str) -> None:
        if log is not None:
            log(msg)
        elif show:
            tqdm.write(f"[story] {msg}", file=sys.stderr)
        else:
            print(f"[story] {msg}", file=sys.stderr, flush=True)

    timings: dict[str, float] = {}
    t_all, cpu_here = time.perf_counter(), time.process_time()
    say(f"the {'quick' if quick else 'full'} story: {len(plan)} runs, the trade-off experiment and its sweep"
        + (", the SAEs" if sae else ""))
    stage = _train_stage(plan, cache_dir, quick, sae, workers, threads, say)
    trained = stage["seconds"]
    runs: dict[str, Any] = {}
    plan_info = []
    for i, item in enumerate(plan, 1):
        bar.set_description(f"story: run {item.label}")
        say(f"run {i}/{len(plan)}: {item.label} ({', '.join(item.roles)}; config {item.config_hash})")
        t0 = time.perf_counter()
        run_dir = ensure_run(item.cfg, cache_dir, item.label, progress=show, log=say)
        timings[f"run:{item.label}"] = trained.get(f"run {item.label}", time.perf_counter() - t0)
        data = load_run(run_dir, item.label)
        for role in item.roles:
            runs[role] = data
        plan_info.append({"label": item.label, "roles": list(item.roles), "run_id": data.run_id,
                          "config_hash": data.config_hash, "git_sha": data.git_sha, "description": item.description,
                          "seconds": round(timings[f"run:{item.label}"], 1)})
        bar.update(1)

    bar.set_description("story: trade-off experiment")
    tcfg = tradeoff.QUICK if quick else tradeoff.FULL
    say(f"trade-off experiment (tool selection, tau {fmt_g(tcfg.tau)} vs no clip, {tcfg.steps} steps x 2)")
    t0 = time.perf_counter()
    git_sha = next(iter(runs.values())).git_sha if runs else None
    tbar = tqdm(total=2 * tcfg.steps, desc="trade-off", unit="step", disable=not show, leave=False,
                dynamic_ncols=True)
    tradeoff_result, tradeoff_dir = tradeoff.ensure_tradeoff(tcfg, cache_dir, git_sha=git_sha, progress=tbar.update)
    tbar.close()

    def record(label: str, run_dir: Path, cfg, result: dict, description: str, started: float) -> None:
        timings[label] = trained.get(label, time.perf_counter() - started)  # the stage's job of that name
        plan_info.append({"label": label, "roles": [label.replace("-", "_")], "run_id": run_dir.name,
                          "config_hash": cfg.hash(), "git_sha": result.get("git_sha"), "description": description,
                          "seconds": round(timings[label], 1)})
        bar.update(1)

    record("tradeoff", tradeoff_dir, tcfg, tradeoff_result, "synthetic tool-selection task, MuonClip (low tau) vs Muon",
           t0)
    bar.set_description("story: trade-off sweep")
    sweep_cfg, sweep_taus, sweep_lens = tradeoff.sweep_plan(quick)
    say(f"trade-off sweep (tau {sweep_taus} x prompt lengths {sweep_lens}, {sweep_cfg.steps} steps each)")
    t0 = time.perf_counter()
    sweep_result, sweep_dir = tradeoff.ensure_tradeoff_sweep(sweep_cfg, cache_dir, sweep_taus, sweep_lens,
                                                             git_sha=git_sha)
    record("tradeoff-sweep", sweep_dir, sweep_cfg, sweep_result, "tau x prompt length sweep of the tool-selection task",
           t0)

    opts: dict[str, Any] = {"quick": quick, "tradeoff": tradeoff_result, "tradeoff_sweep": sweep_result}
    errors: dict[str, str] = {}
    if sae:
        bar.set_description("story: SAE")
        t0 = time.perf_counter()
        try:
            if "SAE" in stage["errors"]:
                raise RuntimeError(stage["errors"]["SAE"])
            dirs, prov, info = _sae_stage(runs, cache_dir, quick, say)
            opts["sae_dirs"], opts["sae_provenance"], opts["sae_source"] = dirs, prov, info
        except Exception as exc:  # the SAE is an extra chapter: report, keep going
            errors["sae"] = str(exc) if "SAE" in stage["errors"] else f"{type(exc).__name__}: {exc}"
            say(f"SAE stage failed: {errors['sae']}")
        timings["sae"] = trained.get("SAE", time.perf_counter() - t0)
        bar.update(1)

    numbers: dict[str, Any] = {}
    manifest: dict[str, Any] = {}
    key = _story_key(plan_info, quick, opts, Path(cache_dir))
    previous = _previous(out_dir, key)
    for spec in FIGURES:
        bar.set_description(f"story: figure {spec.key}")
        missing = [r for r in spec.roles if r not in runs]
        if missing:
            errors[spec.key] = f"missing runs for roles {missing}"
            bar.update(1)
            continue
        if spec.key in previous["numbers"] and all((out_dir / f).exists() for f in spec.files
                                                   if f in previous["manifest"]):
            say(f"figure {spec.key}: up to date")
            numbers[spec.key] = previous["numbers"][spec.key]
            manifest.update({f: previous["manifest"][f] for f in spec.files if f in previous["manifest"]})
            bar.update(1)
            continue
        say(f"figure {spec.key}: {', '.join(spec.files)}")
        t0 = time.perf_counter()
        try:
            value = spec.fn(runs, out_dir, opts)
        except Exception as exc:
            if spec.optional:
                say(f"optional figure {spec.key} skipped: {exc}")
            else:
                errors[spec.key] = f"{type(exc).__name__}: {exc}"
                say(f"figure {spec.key} FAILED: {errors[spec.key]}\n{traceback.format_exc()}")
            value = None
        timings[f"figure:{spec.key}"] = time.perf_counter() - t0
        if value is not None:
            numbers[spec.key] = value
            for name in spec.files:
                if (out_dir / name).exists():
                    used = [p for p in plan_info if any(spec.uses(r) for r in p["roles"])]
                    if spec.key == "loss_vs_tokens" and not used:  # no efficiency runs: drawn from these
                        used = [p for p in plan_info if set(p["roles"]) & {"dragon", "dragon_adamw", "dragon_clip"}]
                    if spec.key == "l0" and opts.get("sae_source"):
                        used = [opts["sae_source"]]
                    manifest[name] = {"figure": spec.key, "runs": used}
        bar.update(1)

    bar.set_description("story: report")
    numbers["plan"] = plan_info
    numbers["mode"] = "quick" if quick else "full"
    numbers["story_key"] = key
    _write_json(out_dir / "numbers.json", numbers)
    _write_json(out_dir / "figures.json", manifest)
    report = write_report(out_dir, numbers, errors)
    bar.update(1)
    bar.close()
    timings["total"] = time.perf_counter() - t_all
    files = sorted(p for p in out_dir.iterdir() if p.is_file())
    # CPU time: this process's and the training workers' (on a busy machine the wall time says little)
    cpu = time.process_time() - cpu_here + sum(stage["cpu"].values())
    say(f"done in {timings['total']:.0f} s ({cpu:.0f} s of CPU time): {len(files)} files in {out_dir}")
    return StoryResult(out_dir, report, numbers, files, errors, timings)


# The code the figures and their numbers come from: changed code redraws every figure.
_DRAWING_CODE = ("viz/*.py", "story/*.py", "reproduce/results/*.py", "lab/rundir.py")


def _code_digest() -> str:
    """Digest of the drawing code (:data:`_DRAWING_CODE`)."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for pattern in _DRAWING_CODE:
        for path in sorted(root.glob(pattern)):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


# The files of a run (or trade-off, or SAE) directory that figures are drawn from.
_CONTENT_FILES = ("summary.json", "metrics.jsonl", "spectra.npz", "result.json", "compare.json")


def _content_digest(directory: Path) -> str:
    """sha256 of the files figures read in ``directory``: a run retrained under the same name,
    or a cache swapped for another, changes it."""
    digest = hashlib.sha256()
    for name in _CONTENT_FILES:
        path = directory / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _story_key(plan_info: list[dict], quick: bool, opts: dict, cache_dir: Path) -> str:
    """Identity of everything the figures are drawn from: run ids and their contents, mode, SAE
    dirs and their contents, drawing code."""
    sae_dirs = [Path(d) for d in (opts.get("sae_dirs") or {}).values()]
    parts = {"runs": sorted(p["run_id"] for p in plan_info), "quick": quick, "code": _code_digest(),
             "contents": sorted(_content_digest(cache_dir / p["run_id"]) for p in plan_info),
             "sae": sorted(str(d.name) for d in sae_dirs),
             "sae_parent": sorted({str(d.parent.name) for d in sae_dirs}),
             "sae_contents": sorted(_content_digest(d) for d in sae_dirs)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _previous(out_dir: Path, key: str) -> dict:
    """Numbers and manifest of an earlier story in ``out_dir`` drawn from exactly the same inputs."""
    try:
        numbers = json.loads((out_dir / "numbers.json").read_text(encoding="utf-8"))
        manifest = json.loads((out_dir / "figures.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"numbers": {}, "manifest": {}}
    if numbers.get("story_key") != key:
        return {"numbers": {}, "manifest": {}}
    return {"numbers": numbers, "manifest": manifest}


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
