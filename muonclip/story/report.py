"""``report.html``: one self-contained page (images inline as data URIs) with the narrative,
every figure and the numbers measured in the runs. Every sentence that states a result is
built from ``numbers`` (see :mod:`muonclip.story.figures`), so it says what the runs show."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

__all__ = ["write_report", "build_html", "build_sections", "report_sections"]

_MIME = {".png": "image/png", ".gif": "image/gif"}


def _f(x: Any, fmt: str = "{:.1f}", none: str = "n/a") -> str:
    if x is None:
        return none
    try:
        return fmt.format(x)
    except (TypeError, ValueError):
        return html.escape(str(x))


def _e(text: Any) -> str:
    return html.escape(str(text))


class _Page:
    def __init__(self, out_dir: Path, manifest: dict) -> None:
        self.out_dir, self.manifest, self.parts, self.shown = out_dir, manifest, [], []
        self.sections: dict[str, list[str]] = {"intro": self.parts}

    def add(self, text: str) -> None:
        self.parts.append(text)

    def p(self, text: str) -> None:
        self.parts.append(f"<p>{text}</p>")

    def h2(self, text: str, anchor: str) -> None:
        self.parts = self.sections.setdefault(anchor, [])
        self.parts.append(f'<h2 id="{anchor}">{_e(text)}</h2>')

    def figure(self, name: str, caption: str) -> None:
        path = self.out_dir / name
        if not path.exists():
            self.parts.append(f'<p class="missing">({_e(name)} was not produced: see "Problems" below.)</p>')
            return
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        runs = self.manifest.get(name, {}).get("runs", [])
        prov = "; ".join(f"run {r['run_id']} (config {r['config_hash']}, git {str(r.get('git_sha') or '?')[:12]})"
                         for r in runs)
        self.shown.append(name)
        self.parts.append(
            f'<figure id="fig-{_e(path.stem)}"><img src="data:{_MIME[path.suffix]};base64,{data}" '
            f'alt="{_e(caption)}" data-file="{_e(name)}">'
            f"<figcaption><b>{_e(name)}</b>: {caption}"
            + (f'<br><span class="prov">{_e(prov)}</span>' if prov else "") + "</figcaption></figure>")

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        head = "".join(f"<th>{_e(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;
color:#1d2330;line-height:1.55}
h1{font-size:1.9em;margin-bottom:.2em}h2{margin-top:2.2em;border-bottom:1px solid #dde3ea;padding-bottom:.2em}
figure{margin:1.2em 0;padding:.6em;background:#f7f9fb;border:1px solid #e3e8ee;border-radius:6px}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{font-size:.9em;color:#3b4656;margin-top:.4em}.prov{font-family:monospace;font-size:.8em;color:#7a8594}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #d5dce4;padding:.3em .6em;text-align:left}
th{background:#eef2f6}.num{font-weight:600}.missing,.problems{color:#a02020}.lead{font-size:1.08em}
nav a{margin-right:.8em}code{background:#eef2f6;padding:0 .2em;border-radius:3px}
"""


def _n(x: Any, fmt: str = "{:.1f}") -> str:
    return f'<span class="num">{_f(x, fmt)}</span>'


def build_sections(out_dir: Path, numbers: dict, errors: dict, manifest: dict) -> dict[str, str]:
    """The report as HTML fragments keyed by section anchor (intro, singular, dragon, rogue,
    guardrail, lifecycle, tradeoff, k2, runs and, if anything failed, problems)."""
    pg = _Page(out_dir, manifest)
    mode = numbers.get("mode", "full")
    plan = numbers.get("plan", [])
    pg.add("<h1>AdamW &rarr; Muon &rarr; MuonClip, measured</h1>")
    pg.p('<span class="lead">Every picture and every number on this page comes from training runs made by '
         "<code>muonclip story</code> on this machine"
         + (" in <b>quick</b> mode (shortened runs: the shapes are there, the magnitudes are small)" if mode == "quick"
            else "") + ". Each figure names the runs it was drawn from (run id, config hash, git commit).</span>")
    pg.add('<nav><a href="#singular">singular values</a><a href="#dragon">the dragon</a><a href="#rogue">rogue heads</a>'
           '<a href="#guardrail">the guardrail</a><a href="#lifecycle">lifecycle</a><a href="#tradeoff">trade-off</a>'
           '<a href="#k2">K2-style charts</a><a href="#runs">runs</a></nav>')

    # ------------------------------------------------------------------ 1. singular values
    pg.h2("1. Singular values: what an optimizer does to a matrix", "singular")
    s = numbers.get("adamw_surface")
    pg.p("A weight matrix maps vectors in and out; its <i>singular values</i> say how much it stretches each of its "
         "independent directions. If a few are large and the rest small, the matrix effectively uses only a few "
         "directions. The <i>normalised spectral entropy</i> of the singular values is 1 when all directions are "
         "used equally and 0 when one direction dominates.")
    if s:
        pg.p(f"Under AdamW, the tracked matrix whose spectrum ended least flat was <code>{_e(s['param'])}</code>: its "
             f"largest singular value was {_n(s['top_over_median_first'])}&times; the median one at the first snapshot "
             f"and {_n(s['top_over_median_last'])}&times; at step {s['step_last']}, with normalised entropy "
             f"{_n(s['entropy_last'], '{:.3f}')}.")
    pg.figure("adamw_singular_distortion.gif", "AdamW: the singular values of one weight over training (3-D surface; "
              "index of the singular value, step, value).")
    s = numbers.get("adam_vs_muon")
    if s:
        flatter = "flatter" if s["entropy_muon"] > s["entropy_adamw"] else "not flatter"
        pg.p(f"Side by side on the same matrix, Muon's weight spectrum is {flatter}: normalised entropy "
             f"{_n(s['entropy_param_muon'], '{:.3f}')} (Muon) vs {_n(s['entropy_param_adamw'], '{:.3f}')} (AdamW) at "
             f"step {s['step_last']}. Averaged over all {s['n_matrices']} tracked matrices: "
             f"{_n(s['entropy_muon'], '{:.3f}')} vs {_n(s['entropy_adamw'], '{:.3f}')}.")
    pg.figure("adam_vs_muon.gif", "The same weight under AdamW and Muon: sorted singular values divided by the largest.")
    pg.figure("spectral_entropy.png", "Normalised spectral entropy of every tracked weight (thin) and their mean "
              "(thick): AdamW vs Muon.")
    s = numbers.get("update_goal")
    if s:
        pg.p("Why: Muon orthogonalises each update (Newton&ndash;Schulz), so the <i>update</i> it applies has nearly "
             "equal singular values, while AdamW's update inherits the gradient's few dominant directions. Measured "
             f"update entropy, averaged over snapshots and matrices: {_n(s['update_entropy_muon'], '{:.3f}')} (Muon) vs "
             f"{_n(s['update_entropy_adamw'], '{:.3f}')} (AdamW).")
    pg.figure("singular_values_goal.gif", "Applied-update spectra divided by their mean (a perfectly flat spectrum "
              "is 1 everywhere, the dotted line): Muon's flat vs AdamW's peaked.")

    # ------------------------------------------------------------------ 2. the dragon
    pg.h2("2. The dragon: exploding attention logits", "dragon")
    s = numbers.get("dragon")
    pg.p("An attention head scores each query against each key with a dot product q&middot;k/&radic;d, the "
         "<i>logit</i>, before the softmax. If the query and key weights keep growing, so do the logits; the softmax "
         "saturates and training can spike or diverge (Kimi K2 saw max logits above 1000 with vanilla Muon).")
    if s:
        crossed = (f"It first passed &tau; = {_f(s['tau'], '{:g}')} at step {s['first_above_tau']}."
                   if s["first_above_tau"] else f"It stayed below &tau; = {_f(s['tau'], '{:g}')} in this run.")
        adam = (f" AdamW on the same settings peaked at {_n(s['adamw_peak'])} and ended at {_n(s['adamw_final'])}."
                if s.get("adamw_final") is not None else "")
        pg.p(f"Vanilla Muon (no weight decay, no clip): the max logit over all heads started at {_n(s['start'])}, "
             f"peaked at {_n(s['peak'])} (step {s['peak_step']}) and ended at {_n(s['final'])} after {s['steps']} steps, "
             f"{_n(s['growth'])}&times; its start. {crossed}{adam}")
    pg.figure("dragon.png", "Vanilla Muon's max logit against the safe (below &tau;) and danger (above &tau;) zones.")
    pg.figure("dragon.gif", "The same, step by step.")

    # ------------------------------------------------------------------ 3. rogue heads
    pg.h2("3. Rogue heads", "rogue")
    s = numbers.get("rogue_heads")
    if s:
        vals = ", ".join(_f(v) for v in s["values"])
        pg.p(f"Not every head grows. At step {s['step']} ({_e(s['why'])}), layer {s['layer']}'s heads had max logits "
             f"[{vals}]: {_n(s['above'], '{:d}')} of {s['heads_per_layer']} above &tau; = {_f(s['tau'], '{:g}')} "
             f"({s['above_all_layers']} of {s['heads_total']} heads over all layers). Over the whole MuonClip run "
             f"{_n(s['heads_ever'], '{:d}')} of {s['heads_total']} heads ever passed &tau;. QK-Clip acts on exactly "
             "those heads and leaves the others bit-for-bit untouched.")
    pg.figure("rogue_heads.png", "Per-head max logits at the chosen step: all layers (cells above &tau; outlined) "
              "and the chosen layer's heads as bars.")

    # ------------------------------------------------------------------ 4. guardrail
    pg.h2("4. The guardrail: QK-Clip", "guardrail")
    s = numbers.get("guardrail")
    pg.p("After each optimizer step, QK-Clip takes every head whose max logit S passed &tau; and rescales its query "
         "and key weights by &radic;(&tau;/S) each, so that head's logit lands exactly on &tau;. Healthy heads are "
         "not touched.")
    if s:
        if s["first_clip"] is not None:
            pg.p(f"Same settings as the dragon, with MuonClip at &tau; = {_f(s['tau'], '{:g}')}: the first clip "
                 f"came at step {s['first_clip']}; it clipped on {_n(s['clip_steps'], '{:d}')} of {s['steps']} steps. "
                 f"After the first clip the largest logit measured was {_n(s['max_after_first_clip'])} (the logit is "
                 f"measured in the forward pass before that step's clip, so one step of growth shows above &tau;); it "
                 f"ended at {_n(s['final'])}, against {_n(s['muon_final'])} for vanilla Muon. Final training loss "
                 f"{_n(s['final_loss'], '{:.3f}')} with the clip vs {_n(s['muon_final_loss'], '{:.3f}')} without"
                 + (f"; validation loss {_n(s['final_val'], '{:.3f}')} vs {_n(s['muon_final_val'], '{:.3f}')}."
                    if s.get("final_val") is not None and s.get("muon_final_val") is not None else "."))
        else:
            pg.p(f"In this run no head reached &tau; = {_f(s['tau'], '{:g}')} (max logit ended at {_n(s['final'])}), "
                 "so the clip never fired: the guardrail costs nothing when it is not needed.")
    pg.figure("guardrail.gif", "MuonClip's max logit (green) held at &tau;, over vanilla Muon (faded); below, the "
              "number of heads clipped at each step.")

    # ------------------------------------------------------------------ 5. lifecycle
    pg.h2("5. The guardrail's life: active, then self-stabilised", "lifecycle")
    s = numbers.get("lifecycle")
    if s:
        if s["first_clip"] is None:
            pg.p(f"With weight decay {s['weight_decay']:g} and a {s['schedule']} schedule, no head reached "
                 f"&tau; = {_f(s['tau'], '{:g}')} in {s['steps']} steps: the clip never fired.")
        else:
            tail = (f"After step {s['last_clip']} it never fired again: the run <b>self-stabilised</b>, ending at a max "
                    f"logit of {_n(s['final'])} ({_n(s['final_over_tau'], '{:.2f}')}&times;&tau;)."
                    if s["stabilised"] else
                    f"It was still firing near the end (last clip at step {s['last_clip']} of {s['steps']}): this run "
                    "did not reach the self-stabilised phase; a longer run with decaying lr is needed to see it.")
            pg.p(f"K2 saw the clip active early in training, then switch itself off as weight decay and the "
                 f"decaying learning rate pulled logits back under &tau;. Here (weight decay {s['weight_decay']:g}, "
                 f"{s['schedule']} lr, &tau; = {_f(s['tau'], '{:g}')}), the phases found in the data: the guardrail "
                 f"was active from step {_n(s['first_clip'], '{:d}')} to step {_n(s['last_clip'], '{:d}')} "
                 f"({_n(100 * s['active_fraction'], '{:.0f}')}% of the run; it clipped on {s['clip_steps']} steps). "
                 f"{tail} {s['heads_ever']} of {s['heads_total']} heads were clipped at some point.")
    pg.figure("qk_clip_lifecycle.gif", "The whole run with its phases shaded from the data (first and last clip).")

    # ------------------------------------------------------------------ 6. trade-off
    pg.h2("6. The trade-off, measured", "tradeoff")
    s = numbers.get("tradeoff")
    pg.p("Capping logits caps how peaked a softmax can be. Does that hurt a task that needs sharp attention? We "
         "built one: each prompt holds one keyword among distractor words, and the model must answer with the tool "
         "that keyword names. The same tiny GPT, from the same initialisation and batches, is trained with MuonClip at "
         "a deliberately low &tau; and with vanilla Muon. We then measure, on fixed probe prompts, how much attention "
         "the answer position pays to the keyword versus each distractor (the head with the widest margin), and the "
         "accuracy on held-out prompts.")
    if s and "muonclip" in s and "muon" in s:
        c, m = s["muonclip"], s["muon"]
        pg.table(["", "accuracy", "attention on keyword", "on each distractor", "margin", "max logit (final)",
                  "steps to 90%", "loss (final)"],
                 [[_e(x["label"]), _f(x["accuracy"], "{:.1%}"), _f(x["keyword_attention"], "{:.3f}"),
                   _f(x["distractor_attention"], "{:.3f}"), _f(x["margin"], "{:.3f}"), _f(x["max_logit"]),
                   _f(x["steps_to_90"], "{:d}", "not reached"), _f(x["loss"], "{:.4f}")] for x in (c, m)])
        pg.p(f"<b>What the data shows:</b> {_e(s.get('conclusion', ''))}")
    pg.figure("qk_clip_tradeoff.gif", "Top: attention from the answer position over one probe prompt (keyword in "
              "orange). Bottom: keyword vs distractor attention and accuracy over training.")
    pg.figure("qk_clip_tradeoff.png", "Accuracy and attention over training for both arms.")

    # ------------------------------------------------------------------ 7. K2-style
    pg.h2("7. K2-style charts", "k2")
    s = numbers.get("max_logits")
    if s:
        pg.p("Final / peak max logit: " + "; ".join(f"{_e(k)} {_f(v['final'])} / {_f(v['peak'])}" for k, v in s.items())
             + ".")
    pg.figure("max_logits.png", "Max logit over training for every optimizer (log scale).")
    s = numbers.get("loss_vs_tokens")
    if s:
        src = ("the efficiency runs (each optimizer at its chosen learning rate)" if s.get("_source") == "efficiency"
               else "the dragon runs (same model, data and settings for the three optimizers)")
        pg.p(f"Loss against tokens, from {src}. Final validation loss: "
             + "; ".join(f"{_e(k)} {_f(v['final_val'], '{:.3f}')} after {v['tokens']:,} tokens"
                         for k, v in s.items() if not k.startswith("_")) + ".")
    pg.figure("loss_vs_tokens.png", "Training loss (smoothed) and validation loss against tokens.")
    if (out_dir / "l0.png").exists():
        s = numbers.get("l0") or {}
        pg.p("Sparse autoencoders trained with Adam and with Muon on the same activations: L0 is the number of active "
             "latents per token (log scale). Final L0: " + "; ".join(f"{_e(k)} {_f(v['final_l0'], '{:.2f}')}"
                                                                      for k, v in s.items()) + ".")
        pg.figure("l0.png", "SAE L0 over training, Adam vs Muon (log scale).")

    # ------------------------------------------------------------------ runs and problems
    pg.h2("Runs", "runs")
    pg.table(["label", "used for", "run id", "config hash", "git", "seconds (0 = cached)"],
             [[_e(r["label"]), _e(", ".join(r["roles"])), f"<code>{_e(r['run_id'])}</code>", _e(r["config_hash"]),
               _e(str(r.get("git_sha") or "?")[:12]), _f(r.get("seconds"))] for r in plan])
    pg.p("Regenerate with <code>muonclip story --out DIR</code> (add <code>--quick</code> for the short version); "
         "runs are cached by config hash, so a second call only re-draws.")
    if errors:
        pg.h2("Problems", "problems")
        pg.add('<ul class="problems">' + "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in errors.items()) + "</ul>")
    return {k: "\n".join(v) for k, v in pg.sections.items()}


def build_html(out_dir: Path, numbers: dict, errors: dict, manifest: dict) -> str:
    body = "\n".join(build_sections(out_dir, numbers, errors, manifest).values())
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<link rel=\"icon\" href=\"data:,\"><title>MuonClip: the story, measured</title>"
            f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")


def write_report(out_dir: str | Path, numbers: dict, errors: dict | None = None) -> Path:
    from ..lab.io import atomic_write_text

    out_dir = Path(out_dir)
    mpath = out_dir / "figures.json"
    manifest = json.loads(mpath.read_text(encoding="utf-8")) if mpath.exists() else {}
    return atomic_write_text(out_dir / "report.html", build_html(out_dir, numbers, errors or {}, manifest))


def report_sections(out_dir: str | Path, numbers: dict | None = None) -> dict[str, str]:
    """Sections of the report of an existing story folder (for the notebook)."""
    out_dir = Path(out_dir)
    if numbers is None:
        numbers = json.loads((out_dir / "numbers.json").read_text(encoding="utf-8"))
    mpath = out_dir / "figures.json"
    manifest = json.loads(mpath.read_text(encoding="utf-8")) if mpath.exists() else {}
    return build_sections(out_dir, numbers, {}, manifest)
