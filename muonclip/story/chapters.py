"""The chapters of report.html: each opens with what to look at, then text built from ``numbers`` and its figures.

Every sentence that states a result is built from ``numbers`` (see :mod:`muonclip.story.figures`,
which takes them from :mod:`muonclip.reproduce.results`); every tau is the one its run's config
holds (``numbers[figure]["tau_drawn"]``). The interactive panels (:mod:`muonclip.story.widgets`)
take their data from ``numbers[figure]["interactive"]``.
"""
from __future__ import annotations

from typing import Any

from ..lab import get_preset
from ..reproduce import presets
from ..viz.style import COLORS, DIGITS, fmt_g, fmt_pct
from . import widgets
from .page import Page, e, f, n, q, tau
from .runs import story_plan
from .texts import ALTERNATIVES, INTROS, LOOK

__all__ = ["CHAPTERS", "chapter", "runs_section"]


def chapter(pg: Page, title: str, anchor: str) -> None:
    """Open a chapter: heading, what to look at, then its opening paragraph."""
    pg.h2(title, anchor)
    if anchor in LOOK:
        pg.p(f"<b>What to look at:</b> {LOOK[anchor]}", "look")
    if anchor in INTROS:
        pg.p(INTROS[anchor])


def _tau_origin(numbers: dict, run_id: str) -> tuple[str, float | None, bool] | None:
    """``(preset, the preset's own tau, whether --quick's overrides set the run's tau)`` of the
    run ``run_id``, from the story plan that made it (None if the plan does not name it)."""
    label = next((p["label"] for p in numbers.get("plan", []) if p.get("run_id") == run_id), None)
    run = next((r for r in story_plan(numbers.get("mode") == "quick") if r.label == label), None)
    if run is None:
        return None
    preset = run.preset
    overridden = any(o.startswith("optim.qk_clip_tau=") for o in run.overrides)
    try:
        base = get_preset(preset).optim.qk_clip_tau
    except (KeyError, ValueError):
        base = None
    return preset, base, overridden


def _tau_choice(numbers: dict, drawn: dict, key: str | None = None, extra: str = "") -> str:
    """How the run's tau (its config's value) was chosen: the preset's rule, and the quick
    overrides when they set it."""
    origin = _tau_origin(numbers, drawn["run_id"])
    text = f"<b>How &tau; = {tau(drawn['tau'], key)} was chosen.</b> It is the run's <code>optim.qk_clip_tau</code>"
    if origin is None:
        return f"<p>{text}.{extra}</p>"
    preset, base, overridden = origin
    # the presets' own account (muonclip/reproduce/presets.py), the one the results page prints too
    text += f" (preset <code>{e(preset)}</code>): {e(presets.TAU_RULES.get(preset, 'set by the preset'))}."
    if overridden and numbers.get("mode") == "quick":
        text += (f" These are the shortened <code>--quick</code> runs: their overrides set &tau; to "
                 f"{e(fmt_g(drawn['tau']))} so that the clip still has something to do in a few steps (the full "
                 f"preset's &tau; is {e(fmt_g(base))}).")
    elif overridden:
        text += (f" The story's plan sets it to {e(fmt_g(drawn['tau']))} for this run (the preset's default: "
                 f"{e(fmt_g(base))}).")
    return f"<p>{text}{extra}</p>"


def _panel(pg: Page, key: str, data: dict | None, tau_label: str) -> None:
    """A step-slider panel for ``key`` (dragon, guardrail, lifecycle) when its data is there."""
    if not pg.interactive or not data or not data.get("lines"):
        return
    pg.data[key] = {**data, "tau_label": tau_label}
    first = data["lines"][0]
    pg.add(widgets.step_panel(key, first["steps"], f"{key}: max logit per step with a step cursor",
                              note=f"Read from run {e(first['run_id'])}'s metrics; hover for values."))


def _intro(pg: Page, numbers: dict) -> None:
    """Title, lead paragraph and navigation."""
    quick = numbers.get("mode", "full") == "quick"
    pg.add("<h1>AdamW &rarr; Muon &rarr; MuonClip, measured</h1>")
    pg.p('<span class="lead">Every picture and every number on this page comes from training runs made by '
         "<code>muonclip story</code> on this machine"
         + (" in <b>quick</b> mode (shortened runs: the shapes are there, the magnitudes are small)" if quick else "")
         + ". The sliders and menus replay the runs' logged metrics step by step; each figure names the runs it "
           "was drawn from under <i>provenance</i>.</span>")
    pg.add('<nav><a href="#singular">singular values</a><a href="#bridge">spectra to logits</a>'
           '<a href="#dragon">the dragon</a><a href="#rogue">rogue heads</a><a href="#guardrail">the guardrail</a>'
           '<a href="#lifecycle">lifecycle</a><a href="#tradeoff">trade-off</a>'
           '<a href="#k2">K2-style charts</a><a href="#runs">runs</a></nav>')


def _singular(pg: Page, numbers: dict) -> None:
    entropy = DIGITS["entropy"]
    chapter(pg, "1. Singular values: what an optimizer does to a matrix", "singular")
    s = numbers.get("adamw_surface")
    if s:
        pg.p(f"Under AdamW, the tracked matrix whose spectrum ended least flat was <code>{e(s['param'])}</code>: its "
             f"largest singular value was {n(s['top_over_median_first'])}&times; the median one at the first snapshot "
             f"and {n(s['top_over_median_last'])}&times; at step {s['step_last']}, with normalised entropy "
             f"{n(s['entropy_last'], entropy)}.")
    pg.figure("adamw_singular_distortion.gif")
    s = numbers.get("adam_vs_muon")
    if s:
        flatter = "flatter" if s["entropy_muon"] > s["entropy_adamw"] else "not flatter"
        pg.p(f"Side by side on the same matrix, Muon's weight spectrum is {flatter}: normalised entropy "
             f"{n(s['entropy_param_muon'], entropy)} (Muon) vs {n(s['entropy_param_adamw'], entropy)} (AdamW) at "
             f"step {s['step_last']}. Averaged over all {s['n_matrices']} tracked matrices: "
             f"{n(s['entropy_muon'], entropy)} vs {n(s['entropy_adamw'], entropy)}.")
    pg.figure("adam_vs_muon.gif")
    pg.figure("spectral_entropy.png")
    s = numbers.get("update_goal")
    if s:
        pg.p("Why: Muon orthogonalises each update (Newton&ndash;Schulz), so the <i>update</i> it applies has nearly "
             "equal singular values, while AdamW's update inherits the gradient's few dominant directions. Measured "
             f"update entropy, averaged over snapshots and matrices: {n(s['update_entropy_muon'], entropy)} (Muon) "
             f"vs {n(s['update_entropy_adamw'], entropy)} (AdamW).")
    pg.figure("singular_values_goal.gif")


def _bridge(pg: Page, numbers: dict) -> None:
    chapter(pg, "2. From singular values to logits", "bridge")
    s = numbers.get("bridge")
    if s:
        parts = [f"{e(name)}: the bound grew {n(v['bound_growth'], DIGITS['growth'])}&times; and the measured max "
                 f"logit {n(v['measured_growth'], DIGITS['growth'])}&times; from step {f(v['step_first'])} to step "
                 f"{f(v['step_last'])}" for name, v in s.items()]
        ratios = "; ".join(f"{e(name)} {n(v['ratio_last'])}&times;" for name, v in s.items())
        width = next(iter(s.values()))["d_model"]
        pg.p("Largest layer of each run: " + "; ".join(parts) + ". At the last snapshot the measured max logit is "
             f"this many times the bound: {ratios}. The factor is the inputs' norms: two RMS-normalised inputs of "
             f"width {f(width)} at unit gain allow up to {f(width)}&times;. So the logits of the next chapters grow "
             "because &sigma;<sub>1</sub>(W<sub>q</sub>) and &sigma;<sub>1</sub>(W<sub>k</sub>) grow; QK-Clip acts "
             "on exactly these two matrices.")
    pg.figure("logit_bridge.png")


def _dragon(pg: Page, numbers: dict) -> None:
    chapter(pg, "3. The dragon: exploding attention logits", "dragon")
    s = numbers.get("dragon")
    if s:
        t = s["tau"]
        crossed = (f"It first passed &tau; at step {f(s['first_above_tau'])} and peaked at "
                   f"{q(s['peak'] / t, 'dragon.muon.peak_over_tau', 2)}&times;&tau;."
                   if s["first_above_tau"] else f"It stayed below &tau; in this run "
                                                f"(peak {f(s['peak'] / t, 2)}&times;&tau;).")
        pg.p(f"Vanilla Muon (no weight decay, no clip): the max logit over all heads started at "
             f"{n(s['start'], DIGITS['initial_logit'], q='dragon.muon.start')} at step 1, peaked at "
             f"{n(s['peak'], q='dragon.muon.peak')} (step {f(s['peak_step'])}, "
             f"{n(s['growth'], DIGITS['growth'], q='dragon.muon.growth')}&times; its start) and ended at "
             f"{n(s['final'], q='dragon.muon.final')} after {f(s['steps'])} steps. {crossed}")
        pg.add(_tau_choice(numbers, s["tau_drawn"], "dragon.tau"))
        if s.get("adamw_final") is not None:
            above = (f"it crosses &tau; too (first at step {f(s['adamw_first_above_tau'])}, peak "
                     f"{q(s['adamw_peak'] / t, 'dragon.adamw.peak_over_tau', 2)}&times;&tau;), later"
                     if s.get("adamw_first_above_tau") else
                     f"it stays under &tau; here (peak {q(s['adamw_peak'] / t, 'dragon.adamw.peak_over_tau', 2)}"
                     "&times;&tau;)")
            pg.p(f"<b>Why AdamW's logits grow too.</b> Nothing on this preset holds the weights back: no weight decay, "
                 "a constant learning rate and no QK-Norm, and sharper attention lowers the loss, so every optimizer "
                 "grows W<sub>q</sub> and W<sub>k</sub>. AdamW grows them more slowly: its update piles into the "
                 "gradient's few dominant directions (chapter 1) instead of moving every direction by the same "
                 "amount. Measured on the same preset: AdamW's max logit grew "
                 f"{n(s['adamw_growth'], DIGITS['growth'], q='dragon.adamw.growth')}&times; (from "
                 f"{f(s['adamw_start'], DIGITS['initial_logit'])} to a peak of "
                 f"{n(s['adamw_peak'], q='dragon.adamw.peak')}, final {n(s['adamw_final'], q='dragon.adamw.final')}"
                 f") against Muon's {f(s['growth'], DIGITS['growth'])}&times;; {above}.")
        _panel(pg, "dragon", s.get("interactive"), f"τ = {fmt_g(t)} (dragon preset)")
    pg.figure("dragon.png")
    pg.figure("dragon.gif", folded=pg.interactive)


def _rogue(pg: Page, numbers: dict) -> None:
    chapter(pg, "4. Rogue heads", "rogue")
    s = numbers.get("rogue_heads")
    if s:
        top = "; ".join(f"L{h[0]}H{h[1]} {f(r, 2)}&times;&tau;" for h, r, _ in s["top"][:3])
        healthy = s.get("healthy_max_peak_over_tau")
        pg.p(f"K2 clipped 12.7% of its heads ever. In our guardrail run (&tau; = {tau(s['tau'], 'guardrail.tau')}, "
             f"weight decay and a cosine schedule as K2 had), {n(s['heads_ever'], q='guardrail.heads_ever')} of "
             f"{q(s['heads_total'], 'guardrail.heads_total')} heads were ever clipped "
             f"({n(s['fraction'], text=fmt_pct(s['fraction']))}), counted over the whole run of "
             f"{f(s['steps'])} steps. The largest peaks: {top}."
             + (f" Every other head peaked at or below {f(healthy, 2)}&times;&tau; and was never touched."
                if healthy is not None else ""))
        d = s.get("interactive")
        if pg.interactive and d:
            pg.data["rogue"] = d
            start = f"L{s['top'][0][0][0]}H{s['top'][0][0][1]}" if s["top"] else d["heads"][0]
            pg.add(widgets.rogue_panel(d["steps"], d["heads"], start))
    pg.figure("rogue_heads.png")


def _guardrail(pg: Page, numbers: dict) -> None:
    chapter(pg, "5. The guardrail: QK-Clip", "guardrail")
    s = numbers.get("guardrail")
    if s and s["first_clip"] is None:
        pg.p(f"In this run no head reached &tau; = {tau(s['tau'])} (max logit ended at {n(s['final'])}), "
             "so the clip never fired: the guardrail costs nothing when it is not needed.")
    elif s:
        loss = DIGITS["loss"]
        pg.p(f"On the same preset, vanilla Muon's max logit grew {n(s['muon_growth'], DIGITS['growth'])}&times; "
             f"to {n(s['muon_peak'])} ({f(s['muon_peak'] / s['tau'], 2)}&times;&tau;). MuonClip at &tau; = "
             f"{tau(s['tau'])} first clipped at step {q(s['first_clip'], 'guardrail.first_clip')} and clipped on "
             f"{n(s['clip_steps'], q='guardrail.clip_steps')} of {q(s['steps'], 'guardrail.steps')} steps; "
             f"after the first clip the max logit stayed at or below "
             f"{n(s['cap'], DIGITS['ratio'], q='guardrail.cap')}&times;&tau;. Final validation loss "
             f"{n(s['final_val'], loss, q='guardrail.final_val')} with the clip against "
             f"{n(s['muon_final_val'], loss, q='guardrail.muon_final_val')} without.")
    if s:
        pg.add(_tau_choice(numbers, s["tau_drawn"], extra=(
            f" Measured: &tau; is {n(s['tau'] / s['muon_peak'], DIGITS['ratio'])} of vanilla Muon's peak on this "
            "preset." if s.get("muon_peak") else "")))
        _panel(pg, "guardrail", s.get("interactive"), f"τ = {fmt_g(s['tau'])}")
        pg.p(ALTERNATIVES)
    pg.figure("guardrail.gif", folded=pg.interactive)
    _cap_and_layer(pg, numbers)


def _slack_parts(d: dict | None) -> str:
    """The slack split into the update's growth and the next batch's variation (results.slack_decomposition)."""
    if not d:
        return ""
    w, r = d["worst"], DIGITS["ratio"]
    return (f" Split in two, for every clipped head: the same batch after the step's update puts it at up to "
            f"{f(d['growth']['max'], r)}&times;&tau; (that is the update, the <em>growth</em>), and the next batch, "
            f"read with the same weights, moves it by up to {f(d['batch']['max'], r)}&times; (the "
            f"<em>batch</em>); the excess is their product. The worst row, step {w['step']}, head "
            f"({w['head'][0]},{w['head'][1]}): {f(w['excess'], r)} = {f(w['growth'], r)} &times; "
            f"{f(w['batch'], r)}." + _slack_cause(d.get("growth_share_median"), w))


def _slack_cause(share: float | None, worst: dict) -> str:
    """Which part dominates the typical excess (the median share of the log-excess that growth
    explains) and which set the cap (the worst row's larger factor)."""
    if share is None:
        return ""
    typical = "the update" if share >= 0.5 else "the next batch"
    cap = "the next batch" if worst["batch"] > worst["growth"] else "the update"
    return (f" Over the rows that ended above &tau;, the update explains a median {fmt_pct(share, 0)} of the "
            f"excess, so a typical excess is {typical}; the cap itself is set by {cap}. In K2 a batch holds "
            "millions of tokens and the next one changes little; with a few thousand tokens a batch, a token pair "
            "seen only now and then can lift a head in one step.")


def _cap_and_layer(pg: Page, numbers: dict) -> None:
    c = numbers.get("cap")
    if c and c.get("cap") is not None:
        land = c.get("landing")
        pg.p(f"<b>The cap.</b> The logit the clip reacts to comes from the forward pass before the step, so every "
             f"point after the first clip shows what one step of updates does to heads just put on &tau;: the "
             f"one-step slack, at most {n(c['slack'], DIGITS['ratio'])} of &tau; here."
             + (f" On the clipping step's own batch, the clipped weights put those heads at "
                f"{f(land['min'], 3)}&ndash;{f(land['max'], 3)}&times;&tau; (median {f(land['median'], 3)}); "
                "the rest of the way to exactly &tau; is that same step's update, which the clip's factor (computed "
                "before the update, as in K2) does not see." if land else "")
             + _slack_parts(c.get("slack_parts")))
        pg.figure("qk_clip_cap.png")
    pl = numbers.get("per_layer")
    if pl:
        loss = DIGITS["loss"]
        pg.p("<b>Per head, not per layer.</b> A naive implementation scales every head of a layer by the layer's "
             "worst factor. Same preset and seed, <code>optim.qk_clip_granularity=layer</code>:")
        pg.table(["", "per head (K2)", "per layer"], [
            ["heads ever clipped", f"{f(pl['heads_ever_head'])} / {f(pl['heads_total'])}",
             f"{f(pl['heads_ever_layer'])} / {f(pl['heads_total'])}"],
            ["healthy heads shrunk (at or below &tau; while their layer was clipped)", "0",
             f"{n(pl['healthy_shrunk'])} ({f(pl['events'])} head-steps)"],
            ["median factor per event / smallest total factor", "&ndash;",
             f"{f(pl['median_gamma'], 3)} / {f(pl['min_total_factor'], 3)}"],
            ["attention entropy of those heads (nats)", f(pl["entropy_head"], 3), f(pl["entropy_layer"], 3)],
            ["final validation loss", f(pl["val_head"], loss), f(pl["val_layer"], loss)]])
        pg.figure("qk_clip_per_layer.png")


def _lifecycle(pg: Page, numbers: dict) -> None:
    chapter(pg, "6. The guardrail's life: active, then self-stabilised", "lifecycle")
    s = numbers.get("lifecycle")
    if s and s["first_clip"] is None:
        pg.p(f"With weight decay {tau(s['weight_decay'])} and a {e(s['schedule'])} schedule, no head reached "
             f"&tau; = {tau(s['tau'])} in {f(s['steps'])} steps: the clip never fired.")
    elif s:
        tail = (f"After step {f(s['last_clip'])} it never fired again: the run <b>self-stabilised</b>, ending "
                f"at a max logit of {n(s['final'])} "
                f"({n(s['final_over_tau'], DIGITS['ratio'], q='lifecycle.final_over_tau')}&times;&tau;)."
                if s["stabilised"] else
                f"It was still firing near the end (last clip at step {f(s['last_clip'])} of "
                f"{q(s['steps'], 'lifecycle.steps')}, ending at "
                f"{n(s['final_over_tau'], DIGITS['ratio'], q='lifecycle.final_over_tau')}&times;&tau;): this "
                "run did not reach the self-stabilised phase; a longer run with decaying lr is needed to see it.")
        pg.p(f"Here (weight decay {tau(s['weight_decay'])}, {e(s['schedule'])} lr, &tau; = "
             f"{tau(s['tau'], 'lifecycle.tau')}), the phases found in the data: "
             f"the guardrail was active from step {n(s['first_clip'], q='lifecycle.first_clip')} to step "
             f"{n(s['last_clip'], q='lifecycle.last_clip')} "
             f"({n(s['active_fraction'], text=fmt_pct(s['active_fraction'], 0))} of the run; it clipped on "
             f"{f(s['clip_steps'])} steps). {tail} {q(s['heads_ever'], 'lifecycle.heads_ever')} of "
             f"{q(s['heads_total'], 'lifecycle.heads_total')} heads were clipped at some point.")
    if s:
        pg.add(_tau_choice(numbers, s["tau_drawn"], extra=(
            f" Measured: the run's peak max logit was {n(s['peak'] / s['tau'], DIGITS['ratio'])}&times;&tau;.")))
        _panel(pg, "lifecycle", s.get("interactive"), f"τ = {fmt_g(s['tau'])}")
    pg.figure("qk_clip_lifecycle.gif", folded=pg.interactive)


def _tradeoff(pg: Page, numbers: dict) -> None:
    chapter(pg, "7. The trade-off, measured", "tradeoff")
    s = numbers.get("tradeoff")
    if s and "muonclip" in s and "muon" in s:
        c, m = s["muonclip"], s["muon"]
        pg.table(["", "accuracy", "attention on keyword", "on each distractor", "margin", "max logit (final)",
                  "steps to 90%", "loss (final)"],
                 [[e(x["label"]), e(fmt_pct(x["accuracy"])), f(x["keyword_attention"], 3),
                   f(x["distractor_attention"], 3), f(x["margin"], 3), f(x["max_logit"]),
                   f(x["steps_to_90"], none="not reached"), f(x["loss"], DIGITS["loss"])] for x in (c, m)])
        pg.p(f"<b>What the data shows:</b> {e(s.get('conclusion', ''))}")
    d = (s or {}).get("interactive")
    if pg.interactive and d:
        pg.data["tradeoff"] = d
        steps = ", ".join(f"{e(a['label'])} at step {a['step']}" for a in d["arms"])
        pg.p("<b>What if the cap were lower?</b> QK-Clip multiplies a head's logits by &gamma; = &tau;/S. Below, the "
             "measured attention row of the answer position (probe prompt 0, each arm's head with the widest keyword "
             "margin) is recomputed as softmax(&gamma;&middot;l). The row's logits l are known up to a constant as "
             "log p, which softmax ignores, so this is exact for that row; it is not a trained model.")
        pg.add(widgets.whatif_panel(d["arms"], f"Computed from the stored attention of trade-off run "
                                               f"{e(d['run_id'])} ({steps}); not trained."))
    pg.figure("qk_clip_tradeoff.gif")
    pg.figure("qk_clip_tradeoff.png")
    _sweep(pg, numbers.get("tradeoff_sweep"))


def _sweep(pg: Page, w: dict | None) -> None:
    if not w:
        return
    edges = [(k, w["edge"].get(str(k))) for k in w["seq_lens"]]
    costly = [f"{k} words: from &tau; = {e(fmt_g(x))} down" for k, x in edges if x is not None]
    loss_costly = [f"{k} words: from &tau; = {e(fmt_g(x))} down" for k, x in
                   ((k, w.get("loss_edge", {}).get(str(k))) for k in w["seq_lens"]) if x is not None]
    pg.p("<b>Finding the edge.</b> The same task swept over &tau; (down to "
         f"{e(fmt_g(min(t for t in w['taus'] if t is not None)))}, and no clip) and over difficulty: the "
         f"keyword hides among {', '.join(str(k) for k in w['seq_lens'])} words. "
         + ("Accuracy fell more than 2 points below the unclipped arm at " + "; ".join(costly) + ". "
            if costly else "No &tau; of the sweep cost more than 2 points of accuracy at any length. ")
         + ("The cost shows first in held-out loss (more than 0.01 nats above no clip) at "
            + "; ".join(loss_costly) + ": with a low cap the model still answers right, but less surely, "
            "and its attention on the keyword drops." if loss_costly else ""))
    pg.figure("qk_clip_tradeoff_sweep.png")


def _k2(pg: Page, numbers: dict) -> None:
    chapter(pg, "8. K2-style charts", "k2")
    s = numbers.get("max_logits")
    if s:
        keys = {"AdamW": "dragon.adamw", "Muon": "dragon.muon"}
        drawn = s["tau_drawn"]
        pg.p("Final / peak max logit: " + "; ".join(
            f"{e(k)} {q(v['final'], keys[k] + '.final')} / {q(v['peak'], keys[k] + '.peak')}" if k in keys
            else f"{e(k)} {f(v['final'])} / {f(v['peak'])}" for k, v in s["runs"].items())
             + f". The dashed line is &tau; = {e(fmt_g(drawn['tau']))}, the {e(drawn['role'].replace('_', '-'))} "
               f"run's own (run {e(drawn['run_id'])}).")
    pg.figure("max_logits.png")
    s = numbers.get("loss_vs_tokens")
    if s:
        eff = s.get("_source") == "efficiency"
        src = ("the efficiency runs (each optimizer at its chosen learning rate)" if eff
               else "the dragon runs (same model, data and settings for the three optimizers)")
        keys = ({"AdamW": "efficiency.adamw", "Muon": "efficiency.muon", "MuonClip": "efficiency.muonclip"} if eff
                else {"AdamW": "dragon.adamw", "Muon": "dragon.muon"})

        def val(k: str, v: float) -> str:  # a number results.md prints too carries its key
            return q(v, keys[k] + ".final_val", DIGITS["loss"]) if k in keys else f(v, DIGITS["loss"])

        pg.p(f"Loss against tokens, from {src}. Final validation loss: "
             + "; ".join(f"{e(k)} {val(k, v['final_val'])} after {f(v['tokens'])} tokens"
                         for k, v in s.items() if not k.startswith("_")) + ".")
    pg.figure("loss_vs_tokens.png")
    if (pg.out_dir / "l0.png").exists():
        s = numbers.get("l0") or {}
        pg.p("Sparse autoencoders trained with Adam and with Muon on the same activations: L0 is the number of active "
             "latents per token (log scale). Final L0: " + "; ".join(f"{e(k)} {f(v['final_l0'], 2)}"
                                                                      for k, v in s.items()) + ".")
        pg.figure("l0.png")


def runs_section(pg: Page, numbers: dict, errors: dict) -> None:
    """The runs table and any problems."""
    plan = numbers.get("plan", [])
    pg.h2("Runs", "runs")
    pg.table(["label", "used for", "run id", "config hash", "git", "seconds (0 = cached)"],
             [[e(r["label"]), e(", ".join(r["roles"])), f"<code>{e(r['run_id'])}</code>", e(r["config_hash"]),
               e(str(r.get("git_sha") or "?")[:12]), f(r.get("seconds"))] for r in plan])
    pg.p("Regenerate with <code>muonclip story --out DIR</code> (add <code>--quick</code> for the short version); "
         "runs are cached by config hash, so a second call only re-draws.")
    if errors:
        pg.h2("Problems", "problems")
        pg.add('<ul class="problems">' + "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in errors.items())
               + "</ul>")


def colors() -> dict[str, Any]:
    """The palette the page's script draws with (the figures' own, from viz.style)."""
    return dict(COLORS)


CHAPTERS = (_intro, _singular, _bridge, _dragon, _rogue, _guardrail, _lifecycle, _tradeoff, _k2)
