"""The `muonclip` command line: subcommands for the demo, the benchmark and the lab.

Each subcommand imports what it runs inside its handler, on purpose: `muonclip --help` and
`muonclip presets` then start without loading the training, story or plotting stacks, and
optional extras (matplotlib, transformers) load only for the subcommands that use them.
"""
from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
from pathlib import Path

from . import reproduce as _reproduce  # noqa: F401  (registers the story's presets: the lab knows none)
from .config import ConfigError, apply_overrides
from .lab.presets import get_preset, list_presets

# The sections of `muonclip reproduce` (muonclip.reproduce.sections.SECTION_NAMES, which a test
# keeps equal: importing it here would load matplotlib for every command).
REPRODUCE_SECTIONS = ["dragon", "guardrail", "lifecycle", "spectra", "efficiency", "tradeoff", "field"]

REPO_ROOT = Path(__file__).resolve().parent.parent


def _cmd_bench(args: argparse.Namespace) -> int:
    script = REPO_ROOT / "benchmarks" / "optimizer_step.py"
    if not script.exists():
        print("benchmarks/ ships with the source checkout, not the installed package", file=sys.stderr)
        return 2
    sys.argv = [str(script), *args.rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _cmd_demo(args: argparse.Namespace) -> int:
    """The main job: the full story (runs cached in runs/cache, report in runs/story)."""
    print("muonclip demo: the MuonClip story, drawn from measured runs (cached runs are reused)", flush=True)
    args.quick, args.cache, args.out, args.no_sae, args.threads = False, "runs/cache", "runs/story", False, None
    return _cmd_story(args)


def _cmd_story(args: argparse.Namespace) -> int:
    import time

    from .story.pipeline import run_story

    t0 = time.perf_counter()
    try:
        result = run_story(args.out, cache_dir=args.cache, quick=args.quick, sae=not args.no_sae,
                           threads=args.threads or 1)
    except (OSError, ValueError) as exc:  # an unwritable --out or --cache, a damaged cached file
        print(f"muonclip story: error: {exc}", file=sys.stderr)
        return 2
    print(f"story: {len(result.files)} files in {result.out_dir} ({time.perf_counter() - t0:.0f} s)")
    for name, err in result.errors.items():
        print(f"story: problem with {name}: {err}", file=sys.stderr)
    print(f"report: {result.report.resolve()}", flush=True)
    return 0 if result.ok else 1


def _cmd_train(args: argparse.Namespace) -> int:
    from .io import LockedError
    from .lab import DataError
    from .lab.checkpoint import CheckpointError
    from .lab.distributed import launched_rank
    from .lab.resume import resume_config
    from .lab.train import train

    overrides = list(args.set or [])
    try:
        if args.resume:
            if args.preset or args.optimizer or args.data or args.hf_dataset:
                raise ConfigError("--resume takes its config from the run directory; use only --set run.steps=N etc.")
            if args.out or args.force:
                raise ConfigError("--resume RUN_DIR trains in RUN_DIR; it takes neither --out nor --force")
            run_dir = Path(args.resume)
            cfg = resume_config(run_dir, overrides)
        else:
            if not args.out:
                raise ConfigError("--out RUN_DIR is required (or --resume RUN_DIR)")
            run_dir = Path(args.out)
            if (run_dir / "checkpoint.pt").exists() and not args.force:
                raise ConfigError(f"{run_dir} already holds a run; --resume it, pick another --out, or --force")
            if args.optimizer:
                overrides.append(f"optim.optimizer={args.optimizer}")
            if args.data:
                overrides.append(f"data.source={args.data}")
            if args.hf_dataset:
                overrides.append(f"data.hf_dataset={args.hf_dataset}")
            cfg = apply_overrides(get_preset(args.preset or "tiny"), overrides)
        nproc = getattr(args, "nproc", 1)
        if nproc != 1 and "LOCAL_RANK" not in os.environ:  # relaunch as N torchrun workers
            from .lab.distributed import launch

            if nproc < 1 or cfg.run.batch_size % nproc:
                raise ConfigError(f"--nproc {nproc} must be >= 1 and divide run.batch_size={cfg.run.batch_size}")
            return launch(nproc, args.argv)
        summary = train(cfg, run_dir, resume=bool(args.resume),
                        progress=None if not args.no_progress else False)
    except (ConfigError, DataError, CheckpointError, LockedError, ImportError) as exc:
        print(f"muonclip train: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the run directory cannot be created or written
        print(f"muonclip train: error: cannot write the run: {exc}", file=sys.stderr)
        return 2
    if launched_rank() == 0:  # one summary line, from rank 0
        print(json.dumps(summary))
    return 0


def _cmd_sae(args: argparse.Namespace) -> int:
    from .lab import DataError
    from .lab.checkpoint import CheckpointError
    from .sae import DEFAULT, QUICK

    overrides = list(args.set or [])
    try:
        if args.resume:
            conflicting = (args.run, args.out, args.preset, args.quick, args.layer is not None,
                           args.optimizer, args.kind)
            if any(conflicting):
                raise ConfigError("--resume takes its config from the SAE directory; use only --set steps=N etc.")
            from .sae.train import resume_sae_config, train_sae

            cfg = resume_sae_config(args.resume, overrides)
            result = train_sae(cfg, args.resume, resume=True, progress=None if not args.no_progress else False)
            if result.get("complete"):
                from .sae.plots import save_l0_png

                save_l0_png([Path(args.resume)], Path(args.resume) / "l0.png")
            print(json.dumps(result))
            return 0
        if not args.run:
            raise ConfigError("--run RUN_DIR (a `muonclip train` run directory) is required")
        if not args.out:
            raise ConfigError("--out SAE_DIR is required (or --resume SAE_DIR)")
        out = Path(args.out)
        done = (out / "checkpoint.pt").exists() or (out / "compare.json").exists()
        if done and not args.force:
            raise ConfigError(f"{out} already holds an SAE; --resume it, pick another --out, or --force")
        if args.force:
            from .sae.train import clear_sae_dir

            clear_sae_dir(out)
        if args.layer is not None:
            overrides.append(f"layer={args.layer}")
        if args.kind:
            overrides.append(f"kind={args.kind}")
        if args.optimizer:
            if args.preset == "compare":
                raise ConfigError("--preset compare trains both optimizers; drop --optimizer")
            overrides.append(f"optimizer={args.optimizer}")
        cfg = apply_overrides(QUICK if args.quick else DEFAULT, overrides)
        progress = None if not args.no_progress else False
        if args.preset == "compare":
            from .sae.compare import compare_markdown, run_compare

            result = run_compare(args.run, cfg, out, progress=progress)
            print(compare_markdown(result))
            print(f"wrote {out / 'compare.json'}, {out / 'compare.md'} and {out / 'l0.png'}")
            return 0
        from .sae.plots import save_l0_png
        from .sae.train import run_sae

        summary = run_sae(args.run, cfg, out, progress=progress)
        save_l0_png([out], out / "l0.png")
    except (ConfigError, DataError, CheckpointError) as exc:
        print(f"muonclip sae: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the SAE directory cannot be created or written
        print(f"muonclip sae: error: cannot write the SAE: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .lab import ConfigError, DataError
    from .reproduce.report import main as reproduce_main

    try:
        path = reproduce_main(only=args.only, quick=args.quick, cache=args.cache, out=args.out,
                              threads=args.threads, determinism=not args.no_determinism_check,
                              seeds=args.seeds, workers=args.workers)
    except (ConfigError, DataError, ValueError, OSError) as exc:
        print(f"muonclip reproduce: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    for name, description in list_presets():
        print(f"{name:12s} {description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="muonclip",
        description="MuonClip: Muon with exact QK-Clip, a CPU-scale training lab and a measured story.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo", help="the main job (what `make demo` runs)",
        description="The full story on the embedded default corpus: `muonclip story` with its defaults. Trains "
                    "every run the story needs into runs/cache (runs whose config hash matches are reused; a "
                    "killed run is trained again, as the story's presets checkpoint only at the end), draws each "
                    "figure from the measured runs, and writes "
                    "runs/story/report.html. For a shortened version, run `muonclip story --quick`.",
    )
    demo.set_defaults(func=_cmd_demo)
    st = sub.add_parser(
        "story", help="train/reuse the story's runs and draw every figure, GIF and report.html",
        description="Run the reproduction presets (reusing cached runs whose config hash matches), draw the "
                    "story's figures and GIFs from the measured runs, and write OUT/report.html.",
    )
    st.add_argument("--quick", action="store_true", help="shortened runs (a few minutes on 2 cores)")
    st.add_argument("--cache", default="runs/cache", metavar="DIR", help="run cache (default: runs/cache)")
    st.add_argument("--out", default="runs/story", metavar="DIR", help="output folder (default: runs/story)")
    st.add_argument("--no-sae", action="store_true", help="skip the sparse-autoencoder L0 chapter")
    st.add_argument("--threads", type=_non_negative_int, metavar="N",
                    help="torch CPU threads (default 1: steadiest on a shared machine; 0 also means 1)")
    st.set_defaults(func=_cmd_story)
    tr = sub.add_parser(
        "train", help="train a lab model (see `muonclip presets`)",
        description="Train a small GPT on real text with AdamW, Muon or MuonClip. Writes config.json, "
                    "run.json, metrics.jsonl, tb/ (TensorBoard), spectra.npz and checkpoint.pt to RUN_DIR.",
    )
    tr.add_argument("--preset", help="named config (default: tiny); list them with `muonclip presets`")
    tr.add_argument("--optimizer", choices=["adamw", "muon", "muonclip"], help="override optim.optimizer")
    tr.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE",
                    help="override any config field (model.X: any GPTConfig field), e.g. --set steps=40 "
                         "--set optim.lr=0.01 --set model.mlp_ratio=4 (repeatable)")
    tr.add_argument("--data", metavar="PATH", help="train on a UTF-8 file or folder instead of the embedded corpus")
    tr.add_argument("--hf-dataset", metavar="NAME", help="a Hugging Face dataset (needs `datasets` and network)")
    tr.add_argument("--out", metavar="RUN_DIR", help="run directory to create")
    tr.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its last checkpoint")
    tr.add_argument("--force", action="store_true", help="overwrite an existing run in --out")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    tr.add_argument("--nproc", type=int, default=1, metavar="N",
                    help="data-parallel processes on this machine, launched with torchrun (gloo on CPU, "
                         "nccl on CUDA); each takes batch_size/N rows, rank 0 writes the run")
    tr.set_defaults(func=_cmd_train)
    sa = sub.add_parser(
        "sae", help="train a sparse autoencoder on a lab run's residual stream",
        description="Collect residual-stream activations of a trained lab run (after block --layer) and train "
                    "a sparse autoencoder on them. Writes config.json, sae.json, activations.pt, metrics.jsonl, "
                    "tb/, checkpoint.pt, summary.json and l0.png to SAE_DIR. --preset compare trains an Adam "
                    "and a Muon SAE on the same activations and writes compare.json/compare.md/l0.png.",
    )
    sa.add_argument("--run", metavar="RUN_DIR", help="a `muonclip train` run directory")
    sa.add_argument("--out", metavar="SAE_DIR", help="SAE directory to create")
    sa.add_argument("--quick", action="store_true", help="small config: seconds on the tiny run")
    sa.add_argument("--layer", type=int, help="read the residual stream after this block (default: middle)")
    sa.add_argument("--optimizer", choices=["adam", "muon"], help="override optimizer")
    sa.add_argument("--kind", choices=["l1", "topk"], help="ReLU + L1 penalty, or TopK")
    sa.add_argument("--preset", choices=["compare"], help="compare: Adam and Muon SAEs on the same activations")
    sa.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE",
                    help="override any SAE config field, e.g. --set l1_coeff=2 steps=2000 (repeatable)")
    sa.add_argument("--resume", metavar="SAE_DIR", help="continue this SAE from its last checkpoint")
    sa.add_argument("--force", action="store_true", help="overwrite an existing SAE in --out")
    sa.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    sa.set_defaults(func=_cmd_sae)
    rp = sub.add_parser(
        "reproduce", help="run the reproduction presets and write docs/results.md",
        description="Run the CPU-scale reproduction presets (dragon, guardrail, lifecycle, spectra, efficiency; "
                    "see `muonclip presets`), the QK-Clip trade-off sweep and the field comparison's table "
                    "through a run cache keyed by config hash, then write OUT/results.md "
                    "with the exact commands, the measured numbers, the targets met or missed, and PNG figures in "
                    "OUT/figures/. Complete cached runs are reused; interrupted ones are trained again (the presets "
                    "checkpoint only at the end). The full set takes ~20-40 "
                    "min on 2 CPU cores; --quick runs shortened versions in a few minutes.",
    )
    rp.add_argument("--only", action="append", metavar="NAME",
                    choices=REPRODUCE_SECTIONS,
                    help="only this section (repeatable); default: all, plus the SAE comparison if available")
    rp.add_argument("--quick", action="store_true", help="shortened runs (QUICK_OVERRIDES): a smoke test")
    rp.add_argument("--cache", default="runs/reproduce", metavar="DIR",
                    help="run cache directory (default: runs/reproduce)")
    rp.add_argument("--out", default="docs", metavar="DIR",
                    help="where results.md and figures/ go (default: docs)")
    rp.add_argument("--threads", type=_non_negative_int, default=1, metavar="N",
                    help="torch CPU threads (default 1: deterministic and fastest on a shared 2-core machine; "
                         "0 keeps torch's own setting)")
    rp.add_argument("--seeds", type=_positive_int, default=1, metavar="N",
                    help="run each chapter's arms on seeds 0..N-1 and report median (min-max), a target met only "
                         "where every seed meets it (default 1; the committed docs/results.md uses 3)")
    rp.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                    help="train the missing runs N at a time in worker processes, --threads threads each "
                         "(default 1)")
    rp.add_argument("--no-determinism-check", action="store_true",
                    help="skip training a short MuonClip run twice to check bit-for-bit determinism")
    rp.set_defaults(func=_cmd_reproduce)
    pr = sub.add_parser("presets", help="list the named training presets",
                        description="List every named training preset with what it trains; use one with "
                                    "`muonclip train --preset NAME` and change it with --set key=value.")
    pr.set_defaults(func=_cmd_presets)
    bench = sub.add_parser(
        "bench", help="optimizer step benchmark; extra args go to the script",
        description="Run benchmarks/optimizer_step.py: MuonClip in each precision against torch.optim.Muon and "
                    "AdamW, side by side in one process, with the CPU's bf16 capability, the NS5 FLOP bounds and "
                    "an AVX2-capped child. Prints one JSON line. Arguments after `bench` go to the script, e.g. "
                    "`muonclip bench --threads 2 --breakdown`; `python benchmarks/optimizer_step.py --help` "
                    "lists them.")
    bench.add_argument("rest", nargs=argparse.REMAINDER, metavar="ARGS",
                       help="arguments for benchmarks/optimizer_step.py")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # re-used by `train --nproc N`
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)
