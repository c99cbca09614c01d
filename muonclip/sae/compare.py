"""Adam vs Muon SAEs on the same activations: ``compare.json``, a markdown table, ``l0.png``.

Layout of ``OUT`` after :func:`run_compare`::

    OUT/activations.pt          one buffer, shared
    OUT/adam/, OUT/muon/        SAE directories (config, metrics.jsonl, checkpoint, summary)
    OUT/compare.json            {"setup": {...}, "saes": {"adam": summary, "muon": summary}}
    OUT/compare.md              compare_markdown(result)
    OUT/l0.png                  save_l0_png of both

Both SAEs share everything but the optimizer: seed (so the same initial dictionary and
batch order), L1 coefficient and warm-up, steps, lr schedule. Muon's matrix lr is
``muon_lr`` (``None``: the same ``lr`` as Adam; MuonClip's ``rms_match`` update scale is
meant to make one lr fit both).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..io import atomic_write_json, atomic_write_text
from .config import SAEConfig
from .plots import save_l0_png
from .train import run_sae

__all__ = ["run_compare", "write_compare", "load_compare", "compare_markdown", "COMPARE_ROWS"]

# (summary key, row label, format) of the markdown table, in order.
COMPARE_ROWS = (
    ("l0_start", "L0 at step 1 (random init)", "{:.1f}"),
    ("l0_final", "L0, last training batch", "{:.2f}"),
    ("eval_l0", "L0, held-out tokens", "{:.2f}"),
    ("eval_fve", "FVE, held-out tokens", "{:.3f}"),
    ("eval_mse", "MSE per entry, held-out (normalised units)", "{:.4f}"),
    ("dead_frac_final", "dead latents (no firing in the last window)", "{:.1%}"),
    ("eval_dead_frac", "latents never firing on held-out tokens", "{:.1%}"),
    ("loss_recovered", "LM loss recovered with the SAE spliced in", "{:.3f}"),
    ("time", "training wall time (s)", "{:.1f}"),
)


def run_compare(run_dir: str | Path, cfg: SAEConfig, out_dir: str | Path, *,
                optimizers: Sequence[str] = ("adam", "muon"), progress: bool | None = None,
                log: Callable[[str], None] | None = None, tensorboard: bool = True) -> dict[str, Any]:
    """Train one SAE per optimizer on one shared activation buffer; write compare.json,
    compare.md and l0.png to ``out_dir``; return the result dict."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buffer_path = out_dir / "activations.pt"
    saes: dict[str, Any] = {}
    for opt in optimizers:
        log(f"training the {opt} SAE")
        saes[opt] = run_sae(run_dir, cfg.replace(optimizer=opt), out_dir / opt, buffer_path=buffer_path,
                            progress=progress, log=log, tensorboard=tensorboard)
    return write_compare(run_dir, cfg, out_dir, saes)


def write_compare(run_dir: str | Path, cfg: SAEConfig, out_dir: str | Path,
                  saes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Write compare.json, compare.md and l0.png for finished SAEs ``out_dir/<optimizer>``
    (``saes``: their summaries) trained from ``cfg`` on ``run_dir``; return the result."""
    out_dir = Path(out_dir)
    saes = dict(saes)
    first = next(iter(saes.values()))
    setup = {
        "layer": first["layer"], "d_sae": first["d_sae"], "kind": cfg.kind, "steps": cfg.steps,
        "batch_size": cfg.batch_size, "n_tokens": cfg.n_tokens, "n_eval_tokens": cfg.n_eval_tokens,
        "l1_coeff": cfg.l1_coeff, "l1_warmup_steps": cfg.l1_warmup_steps, "k": cfg.k, "lr": cfg.lr,
        "muon_lr": cfg.muon_lr_resolved, "seed": cfg.seed, "buffer": first["buffer"],
    }
    run_json = Path(run_dir) / "config.json"
    if run_json.is_file():
        model = json.loads(run_json.read_text(encoding="utf-8")).get("model", {})
        setup["model"] = {k: model.get(k) for k in ("d_model", "n_layer", "n_head", "seq_len")}
    result = {"setup": setup, "saes": saes}
    atomic_write_json(out_dir / "compare.json", result)
    atomic_write_text(out_dir / "compare.md", compare_markdown(result))
    save_l0_png({opt: out_dir / opt for opt in saes}, out_dir / "l0.png")
    return result


def load_compare(path: str | Path) -> dict[str, Any]:
    """A ``compare.json`` (or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "compare.json"
    return json.loads(path.read_text(encoding="utf-8"))


def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


def compare_markdown(result: Mapping[str, Any]) -> str:
    """The side-by-side table of a :func:`run_compare` result (markdown, ends with a newline)."""
    saes = result["saes"]
    s = result.get("setup", {})
    names = {"adam": "Adam", "muon": "Muon"}
    cols = list(saes)
    lines = []
    if s:
        model = s.get("model") or {}
        shape = (f"{model.get('n_layer')}-layer d_model {model.get('d_model')} lab model, " if model else "")
        sparsity = (f"ReLU + L1 (coefficient {s.get('l1_coeff')}, warm-up {s.get('l1_warmup_steps')} steps)"
                    if s.get("kind") == "l1" else f"TopK (k = {s.get('k')})")
        lines.append(
            f"SAE on the residual stream after block {s.get('layer')} of a {shape}{s.get('d_sae')} latents, "
            f"{sparsity}; {s.get('steps')} steps of {s.get('batch_size')} activations from a buffer of "
            f"{s.get('n_tokens')} (held-out: {s.get('n_eval_tokens')} validation-split tokens). "
            f"Adam lr {s.get('lr')}; Muon matrix lr {s.get('muon_lr')} (biases: AdamW at {s.get('lr')}). "
            f"Same seed, initial dictionary and batch order.")
        lines.append("")
    lines.append("| | " + " | ".join(names.get(c, c) for c in cols) + " |")
    lines.append("|---|" + "---:|" * len(cols))
    for key, label, fmt in COMPARE_ROWS:
        lines.append(f"| {label} | " + " | ".join(_fmt(saes[c].get(key), fmt) for c in cols) + " |")
    return "\n".join(lines) + "\n"
