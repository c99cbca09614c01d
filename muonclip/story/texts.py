"""The fixed prose of report.html: chapter openings, what to look at, captions, and the background K2 gives.

Nothing here states a measured number: sentences with numbers are built in
:mod:`muonclip.story.chapters` from the runs.
"""
from __future__ import annotations

__all__ = ["INTROS", "LOOK", "CAPTIONS", "ALTERNATIVES"]

# The opening paragraph of a chapter, by anchor.
INTROS = {
    "singular": (
        "A weight matrix maps vectors in and out; its <i>singular values</i> say how much it stretches each of "
        "its independent directions. If a few are large and the rest small, the matrix effectively uses only a "
        "few directions. The <i>normalised spectral entropy</i> of the singular values is 1 when all directions "
        "are used equally and 0 when one direction dominates."),
    "bridge": (
        "Chapter 1 watched singular values; the rest of the story watches attention logits. They are the same "
        "thing seen twice. A head's logit is q&middot;k/&radic;d with q = W<sub>q</sub>x<sub>i</sub> and "
        "k = W<sub>k</sub>x<sub>j</sub> (RoPE only rotates them), so |logit| &le; |x<sub>i</sub>| "
        "|x<sub>j</sub>| &middot; &sigma;<sub>1</sub>(W<sub>q</sub>)&middot;&sigma;<sub>1</sub>(W<sub>k</sub>)"
        "/&radic;d. "
        "The inputs are RMS-normalised, so their norms are held near &radic;d<sub>model</sub> times the norm's "
        "gain: what can grow without limit is the product of the two largest singular values. The runs track "
        "the spectra of the whole W<sub>q</sub> and W<sub>k</sub> of each layer (every head's block of rows is "
        "bounded by them)."),
    "dragon": (
        "An attention head scores each query against each key with a dot product q&middot;k/&radic;d, the "
        "<i>logit</i>, before the softmax. If the query and key weights keep growing, so do the logits; the "
        "softmax saturates and training can spike or diverge (Kimi K2 saw max logits above 1000 with vanilla "
        "Muon)."),
    "rogue": (
        "A <i>rogue head</i> is one attention head whose logits run away while its neighbours stay calm. If only "
        "a few heads misbehave, a fix that touches a whole layer (or every layer, like a lower learning rate) "
        "pays for those few everywhere; a fix per head leaves the healthy ones alone. That is why K2 clips per "
        "head: it measured how few heads were ever clipped."),
    "guardrail": (
        "After each optimizer step, QK-Clip takes every head whose max logit S passed &tau; and rescales its "
        "query and key weights by &radic;(&tau;/S) each, so that head's logit on that batch is brought back to "
        "&tau;. Healthy heads are not touched."),
    "lifecycle": (
        "A guardrail that fired forever would be a permanent change to training. K2 saw QK-Clip act early, while "
        "the logits first grow, and then fall silent once weight decay and the decaying learning rate hold the "
        "weights back on their own."),
    "tradeoff": (
        "Capping logits caps how peaked a softmax can be. Does that hurt a task that needs sharp attention? We "
        "built one: each prompt holds one keyword among distractor words, and the model must answer with the "
        "tool that keyword names. The same tiny GPT, from the same initialisation and batches, is trained with "
        "MuonClip at a deliberately low &tau; and with vanilla Muon. We then measure, on fixed probe prompts, "
        "how much attention the answer position pays to the keyword versus each distractor (the head with the "
        "widest margin), and the accuracy on held-out prompts."),
    "k2": (
        "The Kimi K2 report shows its case with two charts: the max logit over training for each optimizer, and "
        "the loss against tokens. These are the same two charts for our runs."),
}

# What to look at, first thing in each chapter (by anchor).
LOOK = {
    "singular": "the shape of the spectrum: AdamW's falls off after a few directions, Muon's stays flat.",
    "bridge": "the dashed lines (the bound) and the solid ones (the measured max logit) climb together.",
    "dragon": "where the red line crosses the dashed &tau; line, and how far above it it ends; move the slider to "
              "scrub through the steps.",
    "rogue": "how few bars are red at any step (the heads clipped then); pick a head to see when it was clipped.",
    "guardrail": "the green line stops at &tau; while vanilla Muon (faded) keeps climbing; the orange bars below "
                 "are the heads clipped at each step.",
    "lifecycle": "the orange ticks and bars (clips) bunch early, then stop while the line drops under &tau;.",
    "tradeoff": "the orange bar (the keyword); turn the logit scale down to see what a lower cap does to it.",
    "k2": "the order of the lines: Muon's max logit above AdamW's, MuonClip's held down.",
}

# The caption of each figure, by file.
CAPTIONS = {
    "adamw_singular_distortion.gif": (
        "AdamW: the singular values of one weight over training (3-D surface; index of the singular value, step, "
        "value)."),
    "adam_vs_muon.gif": "The same weight under AdamW and Muon: sorted singular values divided by the largest.",
    "spectral_entropy.png": (
        "Normalised spectral entropy of every tracked weight (thin) and their mean (thick): AdamW vs Muon."),
    "singular_values_goal.gif": (
        "Applied-update spectra divided by their mean (a perfectly flat spectrum is 1 everywhere, the dotted "
        "line): Muon's flat vs AdamW's peaked."),
    "logit_bridge.png": (
        "Per layer: the measured max logit (solid) and &sigma;<sub>1</sub>(W<sub>q</sub>)&middot;"
        "&sigma;<sub>1</sub>(W<sub>k</sub>)/&radic;d (dashed: the bound for inputs of norm 1), at each spectra "
        "snapshot, log scale."),
    "dragon.png": ("Vanilla Muon's max logit against the dragon preset's &tau; (from its config): the safe zone "
                   "below, the danger zone above."),
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
    "max_logits.png": "Max logit over training for every optimizer (log scale), against the MuonClip run's own &tau;.",
    "loss_vs_tokens.png": "Training loss (smoothed) and validation loss against tokens.",
    "l0.png": "SAE L0 over training, Adam vs Muon (log scale).",
}

# How each preset's tau was chosen: the rule in words (the values come from each run's config;
# the presets and their searches are in muonclip/reproduce/presets.py).

# Why K2 clipped rather than normalised or soft-capped (after Su Jianlin's QK-Clip post and the K2 report).
ALTERNATIVES = (
    "<b>Why clip, and not something else?</b> K2 weighed two known fixes. <i>QK-Norm</i> normalises every query "
    "and key before the dot product, which bounds the logit; but K2 uses multi-head latent attention (MLA), whose "
    "cache holds a compressed latent from which keys are never materialised at inference (the key projection is "
    "folded into the query side), so there is no key vector to normalise. <i>Logit soft-capping</i> "
    "(c&middot;tanh(l/c)) bounds what the softmax sees, but not the growth of W<sub>q</sub> and W<sub>k</sub> "
    "behind it: the raw dot products keep growing under the cap. QK-Clip acts on the weights themselves, only "
    "for the heads that need it, after the optimizer step, and works with MLA (how each attention layout is "
    "scaled: docs/reference.md, QK-Clip).")
