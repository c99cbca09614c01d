"""Sparse autoencoders on the lab's models: activations, the SAE, training, plots, Adam vs Muon.

Entry points::

    from muonclip.sae import QUICK, run_sae, run_compare, compare_markdown, plot_l0, save_l0_png
    summary = run_sae("runs/tiny", QUICK, "runs/sae")          # collect + train + summary.json
    result = run_compare("runs/tiny", QUICK, "runs/sae-cmp")   # Adam and Muon on one buffer
    print(compare_markdown(result))
"""
from .config import DEFAULT, QUICK, SAEConfig, load_sae_config, save_sae_config
from .model import SparseAutoencoder
from .train import SAE_METRIC_FIELDS, evaluate_sae, load_sae, run_sae, train_sae

__all__ = [
    "DEFAULT", "QUICK", "SAEConfig", "load_sae_config", "save_sae_config", "SparseAutoencoder",
    "SAE_METRIC_FIELDS", "evaluate_sae", "load_sae", "run_sae", "train_sae",
    "run_compare", "compare_markdown", "plot_l0", "save_l0_png",
]


def __getattr__(name: str):  # plots/compare import matplotlib lazily
    if name in ("run_compare", "compare_markdown"):
        from . import compare
        return getattr(compare, name)
    if name in ("plot_l0", "save_l0_png"):
        from . import plots
        return getattr(plots, name)
    raise AttributeError(name)
