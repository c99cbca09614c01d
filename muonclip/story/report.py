"""``report.html``: one self-contained page with the narrative, every figure and the measured numbers.

Images are inline as data URIs. Every sentence that states a result is built from
``numbers`` (see :mod:`muonclip.story.figures`, which takes them from
:mod:`muonclip.reproduce.results`), so it says what the runs show; numbers are formatted by
:mod:`muonclip.viz.style` like docs/results.md. A number that docs/results.md also prints
carries ``data-q="KEY"`` (e.g. ``dragon.muon.peak``), so the two can be compared.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from ..io import atomic_write_text
from ..viz.style import DIGITS, fmt, fmt_g, fmt_pct

__all__ = ["write_report", "build_html", "build_sections", "report_sections"]

_MIME = {".png": "image/png", ".gif": "image/gif"}


# The opening paragraph of a chapter, by anchor.
_INTROS = {
    "singular": (
        "A weight matrix maps vectors in and out; its <i>singular values</i> say how much it stretches each of "
        "its independent directions. If a few are large and the rest small, the matrix effectively uses only a "
        "few directions. The <i>normalised spectral entropy</i> of the singular values is 1 when all directions "
        "are used equally and 0 when one direction dominates."),
    "dragon": (
        "An attention head scores each query against each key with a dot product q&middot;k/&radic;d, the "
        "<i>logit</i>, before the softmax. If the query and key weights keep growing, so do the logits; the "
        "softmax saturates and training can spike or diverge (Kimi K2 saw max logits above 1000 with vanilla "
        "Muon)."),
    "guardrail": (
        "After each optimizer step, QK-Clip takes every head whose max logit S passed &tau; and rescales its "
        "query and key weights by &radic;(&tau;/S) each, so that head's logit on that batch is brought back to "
        "&tau;. Healthy heads are not touched."),
    "tradeoff": (
        "Capping logits caps how peaked a softmax can be. Does that hurt a task that needs sharp attention? We "
        "built one: each prompt holds one keyword among distractor words, and the model must answer with the "
        "tool that keyword names. The same tiny GPT, from the same initialisation and batches, is trained with "
        "MuonClip at a deliberately low &tau; and with vanilla Muon. We then measure, on fixed probe prompts, "
        "how much attention the answer position pays to the keyword versus each distractor (the head with the "
        "widest margin), and the accuracy on held-out prompts."),
}


# The caption of each figure, by file.
_CAPTIONS = {
    "adamw_singular_distortion.gif": (
        "AdamW: the singular values of one weight over training (3-D surface; index of the singular value, step, "
        "value)."),
    "adam_vs_muon.gif": "The same weight under AdamW and Muon: sorted singular values divided by the largest.",
    "spectral_entropy.png": (
        "Normalised spectral entropy of every tracked weight (thin) and their mean (thick): AdamW vs Muon."),
    "singular_values_goal.gif": (
        "Applied-update spectra divided by their mean (a perfectly flat spectrum is 1 everywhere, the dotted "
        "line): Muon's flat vs AdamW's peaked."),
    "dragon.png": "Vanilla Muon's max logit against the safe (below &tau;) and danger (above &tau;) zones.",
    "dragon.gif": "The same, step by step.",
    "rogue_heads.png": (
        "Left: every head's peak max logit over the whole run divided by &tau;, largest first (red: ever "
        "clipped). Right: the steps at which each clipped head was clipped."),
    "guardrail.gif": (
        "MuonClip's max logit (green) held at &tau;, over vanilla Muon (faded); below, the number of heads "
        "clipped at each step."),
    "qk_clip_lifecycle.gif": "The whole run with its phases shaded from the data (first and last clip).",
    "qk_clip_tradeoff.gif": (
        "Top: attention from the answer position over one probe prompt (keyword in orange). Bottom: keyword vs "
        "distractor attention and accuracy over training."),
    "qk_clip_tradeoff.png": "Accuracy and attention over training for both arms.",
    "qk_clip_tradeoff_sweep.png": (
        "Held-out accuracy, attention on the keyword and held-out loss for every &tau; (columns; none = vanilla "
        "Muon) and prompt length (rows)."),
    "qk_clip_cap.png": (
        "Max logit / &tau; before each step (line) and the clipped heads' max logit / &tau; on the same batch "
        "right after the clip (dots)."),
    "qk_clip_per_layer.png": (
        "Per-layer clipping: each healthy head it shrank, with the product of the factors applied to it."),
    "max_logits.png": "Max logit over training for every optimizer (log scale).",
    "loss_vs_tokens.png": "Training loss (smoothed) and validation loss against tokens.",
    "l0.png": "SAE L0 over training, Adam vs Muon (log scale).",
}


def _f(x: Any, digits: int = 1, none: str = "n/a") -> str:
    return html.escape(fmt(x, digits, none=none))


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

    def figure(self, name: str) -> None:
        """The image ``name`` inline, with its caption (``_CAPTIONS``) and the runs it was drawn from."""
        caption = _CAPTIONS[name]
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

    def chapter(self, title: str, anchor: str, numbers: Any) -> Any:
        """Open a chapter (heading, then its opening paragraph from ``_INTROS``); returns ``numbers``."""
        self.h2(title, anchor)
        if anchor in _INTROS:
            self.p(_INTROS[anchor])
        return numbers

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
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
td,th{border:1px solid #d5dce4;padding:.3em .6em;text-align:left}
th{background:#eef2f6}.num{font-weight:600}.missing,.problems{color:#a02020}.lead{font-size:1.08em}
nav a{margin-right:.8em}code{background:#eef2f6;padding:0 .2em;border-radius:3px}
"""


def _n(x: Any, digits: int = 1, *, q: str | None = None, text: str | None = None) -> str:
    """A measured number in bold; ``q`` names it when docs/results.md prints it too; ``text``
    replaces the default formatting (``fmt(x, digits)``)."""
    attr = f' data-q="{q}"' if q else ""
    return f'<span class="num"{attr}>{_f(x, digits) if text is None else html.escape(text)}</span>'


def _q(x: Any, q: str, digits: int = 1) -> str:
    """A number docs/results.md prints too, in the running text (not bold)."""
    return f'<span data-q="{q}">{_f(x, digits)}</span>'


def _tau(x: Any, q: str | None = None) -> str:
    return f'<span data-q="{q}">{_e(fmt_g(x))}</span>' if q else _e(fmt_g(x))


def _intro(pg: _Page, numbers: dict) -> None:
    """Title, lead paragraph and navigation."""
    mode = numbers.get("mode", "full")
    pg.add("<h1>AdamW &rarr; Muon &rarr; MuonClip, measured</h1>")
    pg.p('<span class="lead">Every picture and every number on this page comes from training runs made by '
         "<code>muonclip story</code> on this machine"
         + (" in <b>quick</b> mode (shortened runs: the shapes are there, the magnitudes are small)" if mode == "quick"
            else "") + ". Each figure names the runs it was drawn from (run id, config hash, git commit).</span>")
    pg.add('<nav><a href="#singular">singular values</a><a href="#dragon">the dragon</a>'
           '<a href="#rogue">rogue heads</a><a href="#guardrail">the guardrail</a><a href="#lifecycle">lifecycle</a>'
           '<a href="#tradeoff">trade-off</a>'
           '<a href="#k2">K2-style charts</a><a href="#runs">runs</a></nav>')


def _singular(pg: _Page, numbers: dict) -> None:
    """Chapter 1. singular values."""
    entropy = DIGITS["entropy"]
    s = pg.chapter("1. Singular values: what an optimizer does to a matrix", "singular", numbers.get("adamw_surface"))
    if s:
        pg.p(f"Under AdamW, the tracked matrix whose spectrum ended least flat was <code>{_e(s['param'])}</code>: its "
             f"largest singular value was {_n(s['top_over_median_first'])}&times; the median one at the first snapshot "
             f"and {_n(s['top_over_median_last'])}&times; at step {s['step_last']}, with normalised entropy "
             f"{_n(s['entropy_last'], DIGITS['entropy'])}.")
    pg.figure("adamw_singular_distortion.gif")
    s = numbers.get("adam_vs_muon")
    if s:
        flatter = "flatter" if s["entropy_muon"] > s["entropy_adamw"] else "not flatter"
        pg.p(f"Side by side on the same matrix, Muon's weight spectrum is {flatter}: normalised entropy "
             f"{_n(s['entropy_param_muon'], entropy)} (Muon) vs {_n(s['entropy_param_adamw'], entropy)} (AdamW) at "
             f"step {s['step_last']}. Averaged over all {s['n_matrices']} tracked matrices: "
             f"{_n(s['entropy_muon'], entropy)} vs {_n(s['entropy_adamw'], entropy)}.")
    pg.figure("adam_vs_muon.gif")
    pg.figure("spectral_entropy.png")
    s = numbers.get("update_goal")
    if s:
        pg.p("Why: Muon orthogonalises each update (Newton&ndash;Schulz), so the <i>update</i> it applies has nearly "
             "equal singular values, while AdamW's update inherits the gradient's few dominant directions. Measured "
             f"update entropy, averaged over snapshots and matrices: {_n(s['update_entropy_muon'], entropy)} (Muon) "
             f"vs {_n(s['update_entropy_adamw'], entropy)} (AdamW).")
    pg.figure("singular_values_goal.gif")


def _dragon(pg: _Page, numbers: dict) -> None:
    """Chapter 2. the dragon."""
    s = pg.chapter("2. The dragon: exploding attention logits", "dragon", numbers.get("dragon"))
    if s:
        crossed = (f"It first passed &tau; = {_tau(s['tau'])} at step {_f(s['first_above_tau'])}."
                   if s["first_above_tau"] else f"It stayed below &tau; = {_tau(s['tau'])} in this run.")
        adam = (f" AdamW on the same settings peaked at {_n(s['adamw_peak'], q='dragon.adamw.peak')} and ended at "
                f"{_n(s['adamw_final'], q='dragon.adamw.final')}." if s.get("adamw_final") is not None else "")
        pg.p(f"Vanilla Muon (no weight decay, no clip): the max logit over all heads started at "
             f"{_n(s['start'], DIGITS['initial_logit'], q='dragon.muon.start')} at step 1, peaked at "
             f"{_n(s['peak'], q='dragon.muon.peak')} (step {_f(s['peak_step'])}, "
             f"{_n(s['growth'], DIGITS['growth'], q='dragon.muon.growth')}&times; its start) and ended at "
             f"{_n(s['final'], q='dragon.muon.final')} after {_f(s['steps'])} steps. {crossed}{adam}")
    pg.figure("dragon.png")
    pg.figure("dragon.gif")


def _rogue(pg: _Page, numbers: dict) -> None:
    """Chapter 3. rogue heads."""
    s = pg.chapter("3. Rogue heads", "rogue", numbers.get("rogue_heads"))
    if s:
        top = "; ".join(f"L{h[0]}H{h[1]} {_f(r, 2)}&times;&tau;" for h, r, _ in s["top"][:3])
        healthy = s.get("healthy_max_peak_over_tau")
        pg.p(f"Kimi K2 argues for clipping <i>per head</i> because few heads go rogue: it clipped 12.7% of its "
             f"heads ever. In our guardrail run (&tau; = {_tau(s['tau'], 'guardrail.tau')}, weight decay and a "
             f"cosine schedule as K2 had), {_n(s['heads_ever'], q='guardrail.heads_ever')} of "
             f"{_q(s['heads_total'], 'guardrail.heads_total')} heads were ever clipped "
             f"({_n(s['fraction'], text=fmt_pct(s['fraction']))}), counted over the whole run of "
             f"{_f(s['steps'])} steps. The largest peaks: {top}."
             + (f" Every other head peaked at or below {_f(healthy, 2)}&times;&tau; and was never touched."
                if healthy is not None else ""))
    pg.figure("rogue_heads.png")


def _guardrail(pg: _Page, numbers: dict) -> None:
    """Chapter 4. the guardrail."""
    s = pg.chapter("4. The guardrail: QK-Clip", "guardrail", numbers.get("guardrail"))
    if s and s["first_clip"] is None:
        pg.p(f"In this run no head reached &tau; = {_tau(s['tau'])} (max logit ended at {_n(s['final'])}), "
             "so the clip never fired: the guardrail costs nothing when it is not needed.")
    elif s:
        loss = DIGITS["loss"]
        pg.p(f"On the same preset, vanilla Muon's max logit grew {_n(s['muon_growth'], DIGITS['growth'])}&times; "
             f"to {_n(s['muon_peak'])} ({_f(s['muon_peak'] / s['tau'], 2)}&times;&tau;). MuonClip at &tau; = "
             f"{_tau(s['tau'])} first clipped at step {_q(s['first_clip'], 'guardrail.first_clip')} and clipped on "
             f"{_n(s['clip_steps'], q='guardrail.clip_steps')} of {_q(s['steps'], 'guardrail.steps')} steps; "
             f"after the first clip the max logit stayed at or below "
             f"{_n(s['cap'], DIGITS['ratio'], q='guardrail.cap')}&times;&tau;. Final validation loss "
             f"{_n(s['final_val'], loss, q='guardrail.final_val')} with the clip against "
             f"{_n(s['muon_final_val'], loss, q='guardrail.muon_final_val')} without.")
    pg.figure("guardrail.gif")
    c = numbers.get("cap")
    if c and c.get("cap") is not None:
        land = c.get("landing")
        pg.p(f"<b>The cap.</b> The logit the clip reacts to comes from the forward pass before the step, so every "
             f"point after the first clip shows what one step of updates does to heads just put on &tau;: the "
             f"one-step slack, at most {_n(c['slack'], DIGITS['ratio'])} of &tau; here."
             + (f" On the clipping step's own batch, the clipped weights put those heads at "
                f"{_f(land['min'], 3)}&ndash;{_f(land['max'], 3)}&times;&tau; (median {_f(land['median'], 3)}); "
                "the rest of the way to exactly &tau; is that same step's update, which the clip's factor (computed "
                "before the update, as in K2) does not see." if land else ""))
        pg.figure("qk_clip_cap.png")
    pl = numbers.get("per_layer")
    if pl:
        loss = DIGITS["loss"]
        pg.p("<b>Per head, not per layer.</b> A naive implementation scales every head of a layer by the layer's "
             "worst factor. Same preset and seed, <code>optim.qk_clip_granularity=layer</code>:")
        pg.table(["", "per head (K2)", "per layer"], [
            ["heads ever clipped", f"{_f(pl['heads_ever_head'])} / {_f(pl['heads_total'])}",
             f"{_f(pl['heads_ever_layer'])} / {_f(pl['heads_total'])}"],
            ["healthy heads shrunk (at or below &tau; while their layer was clipped)", "0",
             f"{_n(pl['healthy_shrunk'])} ({_f(pl['events'])} head-steps)"],
            ["median factor per event / smallest total factor", "&ndash;",
             f"{_f(pl['median_gamma'], 3)} / {_f(pl['min_total_factor'], 3)}"],
            ["attention entropy of those heads (nats)", _f(pl["entropy_head"], 3), _f(pl["entropy_layer"], 3)],
            ["final validation loss", _f(pl["val_head"], loss), _f(pl["val_layer"], loss)]])
        pg.figure("qk_clip_per_layer.png")


def _lifecycle(pg: _Page, numbers: dict) -> None:
    """Chapter 5. the lifecycle."""
    s = pg.chapter("5. The guardrail's life: active, then self-stabilised", "lifecycle", numbers.get("lifecycle"))
    if s:
        if s["first_clip"] is None:
            pg.p(f"With weight decay {_tau(s['weight_decay'])} and a {_e(s['schedule'])} schedule, no head reached "
                 f"&tau; = {_tau(s['tau'])} in {_f(s['steps'])} steps: the clip never fired.")
        else:
            tail = (f"After step {_f(s['last_clip'])} it never fired again: the run <b>self-stabilised</b>, ending "
                    f"at a max logit of {_n(s['final'])} "
                    f"({_n(s['final_over_tau'], DIGITS['ratio'], q='lifecycle.final_over_tau')}&times;&tau;)."
                    if s["stabilised"] else
                    f"It was still firing near the end (last clip at step {_f(s['last_clip'])} of "
                    f"{_q(s['steps'], 'lifecycle.steps')}): this "
                    "run did not reach the self-stabilised phase; a longer run with decaying lr is needed to see it.")
            pg.p(f"K2 saw the clip active early in training, then switch itself off as weight decay and the "
                 "decaying learning rate pulled logits back under &tau;. Here (weight decay "
                 f"{_tau(s['weight_decay'])}, {_e(s['schedule'])} lr, &tau; = {_tau(s['tau'], 'lifecycle.tau')}), "
                 "the phases found in the data: "
                 f"the guardrail was active from step {_n(s['first_clip'], q='lifecycle.first_clip')} to step "
                 f"{_n(s['last_clip'], q='lifecycle.last_clip')} "
                 f"({_n(s['active_fraction'], text=fmt_pct(s['active_fraction'], 0))} of the run; it clipped on "
                 f"{_f(s['clip_steps'])} steps). {tail} {_q(s['heads_ever'], 'lifecycle.heads_ever')} of "
                 f"{_q(s['heads_total'], 'lifecycle.heads_total')} heads were clipped at some point.")
    pg.figure("qk_clip_lifecycle.gif")


def _tradeoff(pg: _Page, numbers: dict) -> None:
    """Chapter 6. the trade-off experiment."""
    s = pg.chapter("6. The trade-off, measured", "tradeoff", numbers.get("tradeoff"))
    if s and "muonclip" in s and "muon" in s:
        c, m = s["muonclip"], s["muon"]
        pg.table(["", "accuracy", "attention on keyword", "on each distractor", "margin", "max logit (final)",
                  "steps to 90%", "loss (final)"],
                 [[_e(x["label"]), _e(fmt_pct(x["accuracy"])), _f(x["keyword_attention"], 3),
                   _f(x["distractor_attention"], 3), _f(x["margin"], 3), _f(x["max_logit"]),
                   _f(x["steps_to_90"], none="not reached"), _f(x["loss"], DIGITS["loss"])] for x in (c, m)])
        pg.p(f"<b>What the data shows:</b> {_e(s.get('conclusion', ''))}")
    pg.figure("qk_clip_tradeoff.gif")
    pg.figure("qk_clip_tradeoff.png")
    w = numbers.get("tradeoff_sweep")
    if w:
        edges = [(n, w["edge"].get(str(n))) for n in w["seq_lens"]]
        costly = [f"{n} words: from &tau; = {_e(fmt_g(e))} down" for n, e in edges if e is not None]
        loss_costly = [f"{n} words: from &tau; = {_e(fmt_g(e))} down" for n, e in
                       ((n, w.get("loss_edge", {}).get(str(n))) for n in w["seq_lens"]) if e is not None]
        pg.p("<b>Finding the edge.</b> The same task swept over &tau; (down to "
             f"{_e(fmt_g(min(t for t in w['taus'] if t is not None)))}, and no clip) and over difficulty: the "
             f"keyword hides among {', '.join(str(n) for n in w['seq_lens'])} words. "
             + ("Accuracy fell more than 2 points below the unclipped arm at " + "; ".join(costly) + ". "
                if costly else "No &tau; of the sweep cost more than 2 points of accuracy at any length. ")
             + ("The cost shows first in held-out loss (more than 0.01 nats above no clip) at "
                + "; ".join(loss_costly) + ": with a low cap the model still answers right, but less surely, "
                "and its attention on the keyword drops." if loss_costly else ""))
        pg.figure("qk_clip_tradeoff_sweep.png")


def _k2(pg: _Page, numbers: dict) -> None:
    """Chapter 7. K2-style charts."""
    s = pg.chapter("7. K2-style charts", "k2", numbers.get("max_logits"))
    if s:
        keys = {"AdamW": "dragon.adamw", "Muon": "dragon.muon"}
        pg.p("Final / peak max logit: " + "; ".join(
            f"{_e(k)} {_q(v['final'], keys[k] + '.final')} / {_q(v['peak'], keys[k] + '.peak')}" if k in keys
            else f"{_e(k)} {_f(v['final'])} / {_f(v['peak'])}" for k, v in s.items()) + ".")
    pg.figure("max_logits.png")
    s = numbers.get("loss_vs_tokens")
    if s:
        src = ("the efficiency runs (each optimizer at its chosen learning rate)" if s.get("_source") == "efficiency"
               else "the dragon runs (same model, data and settings for the three optimizers)")
        keys = ({"AdamW": "efficiency.adamw", "Muon": "efficiency.muon", "MuonClip": "efficiency.muonclip"}
                if s.get("_source") == "efficiency" else
                {"AdamW": "dragon.adamw", "Muon": "dragon.muon"})

        def val(k: str, v: float) -> str:  # a number results.md prints too carries its key
            return _q(v, keys[k] + ".final_val", DIGITS["loss"]) if k in keys else _f(v, DIGITS["loss"])

        pg.p(f"Loss against tokens, from {src}. Final validation loss: "
             + "; ".join(f"{_e(k)} {val(k, v['final_val'])} after "
                         f"{_f(v['tokens'])} tokens" for k, v in s.items() if not k.startswith("_")) + ".")
    pg.figure("loss_vs_tokens.png")
    if (pg.out_dir / "l0.png").exists():
        s = numbers.get("l0") or {}
        pg.p("Sparse autoencoders trained with Adam and with Muon on the same activations: L0 is the number of active "
             "latents per token (log scale). Final L0: " + "; ".join(f"{_e(k)} {_f(v['final_l0'], 2)}"
                                                                      for k, v in s.items()) + ".")
        pg.figure("l0.png")


def _runs(pg: _Page, numbers: dict, errors: dict) -> None:
    """Chapter: the runs and any problems."""
    plan = numbers.get("plan", [])
    pg.h2("Runs", "runs")
    pg.table(["label", "used for", "run id", "config hash", "git", "seconds (0 = cached)"],
             [[_e(r["label"]), _e(", ".join(r["roles"])), f"<code>{_e(r['run_id'])}</code>", _e(r["config_hash"]),
               _e(str(r.get("git_sha") or "?")[:12]), _f(r.get("seconds"))] for r in plan])
    pg.p("Regenerate with <code>muonclip story --out DIR</code> (add <code>--quick</code> for the short version); "
         "runs are cached by config hash, so a second call only re-draws.")
    if errors:
        pg.h2("Problems", "problems")
        pg.add('<ul class="problems">' + "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in errors.items())
               + "</ul>")


_CHAPTERS = (_intro, _singular, _dragon, _rogue, _guardrail, _lifecycle, _tradeoff, _k2)


def build_sections(out_dir: Path, numbers: dict, errors: dict, manifest: dict) -> dict[str, str]:
    """The report as HTML fragments keyed by section anchor (intro, singular, dragon, rogue,
    guardrail, lifecycle, tradeoff, k2, runs and, if anything failed, problems)."""
    pg = _Page(out_dir, manifest)
    for chapter in _CHAPTERS:
        chapter(pg, numbers)
    _runs(pg, numbers, errors)
    return {k: "\n".join(v) for k, v in pg.sections.items()}


def build_html(out_dir: Path, numbers: dict, errors: dict, manifest: dict) -> str:
    body = "\n".join(build_sections(out_dir, numbers, errors, manifest).values())
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<link rel=\"icon\" href=\"data:,\"><title>MuonClip: the story, measured</title>"
            f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")


def write_report(out_dir: str | Path, numbers: dict, errors: dict | None = None) -> Path:
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
