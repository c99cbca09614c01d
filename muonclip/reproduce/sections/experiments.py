"""The trade-off and field sections: a low tau against a task that needs sharp attention; where the field went.

Neither trains lab runs through the reproduction's seeds: the trade-off sweep is one seed (its
own cache, :mod:`muonclip.reproduce.tradeoff`), the field comparison reads its committed result
(:mod:`muonclip.reproduce.field`), which has its own seeds.
"""
from __future__ import annotations

import json
from pathlib import Path

from ...viz import clip_charts
from ...viz.style import fmt, fmt_g
from .. import results
from ..runner import Runner
from .base import Section, ratio

__all__ = ["FIELD_RESULT", "section_tradeoff", "section_field"]


# ----------------------------------------------------------------------------- the trade-off sweep


def section_tradeoff(rn: Runner) -> Section:
    from .. import tradeoff

    cfg, taus, lens = tradeoff.sweep_plan(rn.quick)
    rn.log(f"[reproduce] tradeoff sweep: taus {taus} x prompt lengths {lens}")
    result, run_dir = tradeoff.ensure_tradeoff_sweep(cfg, rn.cache, taus, lens)
    s = Section("tradeoff", "The trade-off: where a low tau starts to cost accuracy",
                commands=[f"python -m muonclip reproduce --only tradeoff   # cached in {rn.cache.name}/{run_dir.name}"])
    edge = results.tradeoff_edge(result)
    loss_edge = results.tradeoff_edge(result, "eval_loss", margin=0.01)
    labels = ["none" if t is None else fmt_g(t) for t in taus]
    md = ["| words | " + " | ".join(f"tau {x}" for x in labels) + " |", "|---|" + "---|" * len(taus)]
    for key, name in (("accuracy", "held-out accuracy"), ("keyword_attention", "attention on the keyword"),
                      ("eval_loss", "held-out loss"), ("max_logit", "max logit")):
        grid = results.tradeoff_sweep_grid(result, key)
        md.append(f"| **{name}** |" + " |" * len(taus))
        md += [f"| {n} | " + " | ".join(fmt(v, 3) for v in grid[i]) + " |" for i, n in enumerate(lens)]
    s.extra_md.append(f"Synthetic tool selection ({cfg.n_tools} tools, {cfg.n_distractors} distractor words, "
                      f"{cfg.steps} steps, d_model {cfg.d_model}, {cfg.n_layer} layers x {cfg.n_head} heads); the "
                      "keyword hides among more words as the prompt grows. One arm per cell, same init and "
                      "batches (one seed: this sweep is not run over `--seeds`); tau 'none' is vanilla Muon.\n\n"
                      + "\n".join(md))
    for n in lens:
        s.table.append((f"{n} words: largest tau whose accuracy is > 2 points below no clip",
                        fmt_g(edge[n], none="none (no tau of the sweep cost accuracy)")))
        s.table.append((f"{n} words: largest tau whose held-out loss is > 0.01 nats above no clip",
                        fmt_g(loss_edge[n], none="none")))
    s.table.append(("sweep wall time (s)", fmt(result["seconds"], 0)))
    s.figures["tradeoff_sweep"] = clip_charts.tradeoff_sweep_figure(
        lens, taus, {"held-out accuracy": results.tradeoff_sweep_grid(result, "accuracy"),
                     "attention on the keyword": results.tradeoff_sweep_grid(result, "keyword_attention"),
                     "held-out loss": results.tradeoff_sweep_grid(result, "eval_loss")},
        title="QK-Clip tau against prompt length")
    return s


# ----------------------------------------------------------------------------- the field comparison (#16)

FIELD_RESULT = "docs/data/field-comparison.json"


def _tokens(x: float | None) -> str:
    return "n/a" if x is None else f"{int(round(x)):,}"


def section_field(rn: Runner) -> Section:
    """The field comparison's table, from its committed result (``muonclip.reproduce.field``)."""
    s = Section("field", "Where the field went: per-head Muon, NorMuon, cautious decay, orthogonalisers")
    path = Path(FIELD_RESULT)
    if not path.exists():
        s.extra_md.append(f"`{FIELD_RESULT}` is missing: run `python -m muonclip.reproduce.field --out runs/field` "
                          "and copy its field.json there.")
        return s
    data = json.loads(path.read_text(encoding="utf-8"))
    s.commands.append(f"python -m muonclip.reproduce.field --out runs/field --device {data['device']} --jobs 12")
    md = ["| arm | what | lr (best of sweep) | final val loss (mean ± half-range, seeds) | tokens to AdamW's "
          "final loss (mean ± half-range) | vs AdamW | dragon: peak max logit (seeds) |",
          "|---|---|---|---|---|---|---|"]
    for name, row in data["table"].items():
        fv, tk = row["final_val_loss"], row["tokens_to_baseline"]
        dragon = row.get("dragon_peak_max_logit")
        md.append(f"| {name} | {data['arms'][name]} | {fmt_g(data['best_lr'][name])} | {fmt(fv['mean'], 4)} ± "
                  f"{fmt(fv['spread'], 4)} ({row['seeds']}) | {_tokens(tk['mean'])} ± {_tokens(tk['spread'])}"
                  + (f" ({tk['missing']} seed(s) never reached it)" if tk["missing"] else "")
                  + f" | {ratio(row['tokens_vs_baseline'])}x | "
                  + (", ".join(fmt(v, 1) for v in dragon["values"]) if dragon else "-") + " |")
    sweep = ["| arm | final val loss at each lr |", "|---|---|"]
    sweep += [f"| {n} | " + ", ".join(f"lr {lr}: {fmt(v, 4)}" for lr, v in sw.items()) + " |"
              for n, sw in data["sweep_final_val_loss"].items()]
    s.extra_md.extend([
        f"Measured on {data['device_name']} (torch {data['torch']}), {len(data['seeds'])} seeds on the "
        "`efficiency` preset (each arm at its best lr of a 4-point sweep on seed 0) and "
        f"{len(data['dragon_seeds'])} on `dragon` (lr 0.02, no decay). Every Muon arm runs `--optimizer muon` "
        "(no clip). The result file is `docs/data/field-comparison.json`; its numbers come from "
        "`muonclip.reproduce.results.field_table`.\n\n" + "\n".join(md),
        "The lr sweep (seed 0):\n\n" + "\n".join(sweep),
    ])
    best = min((r["final_val_loss"]["mean"], n) for n, r in data["table"].items())
    s.table.append(("lowest mean final val loss", f"{best[1]} ({fmt(best[0], 4)})"))
    return s
