"""The `muonclip` command line: subcommands for the demo, the benchmark and the lab."""
from __future__ import annotations

import argparse
import json
import runpy
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _cmd_bench(args: argparse.Namespace) -> int:
    script = REPO_ROOT / "benchmarks" / "optimizer_step.py"
    if not script.exists():
        print("benchmarks/ ships with the source checkout, not the installed package", file=sys.stderr)
        return 2
    sys.argv = [str(script), *args.rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """The main job: until the story exists, the most complete thing is the optimizer benchmark."""
    print("muonclip demo: optimizer step benchmark (MuonClip vs torch.optim.Muon vs AdamW)", flush=True)
    args.rest = []
    return _cmd_bench(args)


def _cmd_train(args: argparse.Namespace) -> int:
    from .lab import ConfigError, DataError, apply_overrides, get_preset
    from .lab.checkpoint import CheckpointError
    from .lab.train import resume_config, train

    overrides = list(args.set or [])
    try:
        if args.resume:
            if args.preset or args.optimizer or args.data or args.hf_dataset:
                raise ConfigError("--resume takes its config from the run directory; use only --set run.steps=N etc.")
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
        summary = train(cfg, run_dir, resume=bool(args.resume),
                        progress=None if not args.no_progress else False)
    except (ConfigError, DataError, CheckpointError) as exc:
        print(f"muonclip train: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from .lab import list_presets

    for name, description in list_presets():
        print(f"{name:12s} {description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="muonclip",
        description="MuonClip: Muon with exact QK-Clip, a CPU-scale training lab and a measured story.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="the main job (what `make demo` runs)")
    demo.set_defaults(func=_cmd_demo)
    tr = sub.add_parser(
        "train", help="train a lab model (see `muonclip presets`)",
        description="Train a small GPT on real text with AdamW, Muon or MuonClip. Writes config.json, "
                    "run.json, metrics.jsonl, tb/ (TensorBoard), spectra.npz and checkpoint.pt to RUN_DIR.",
    )
    tr.add_argument("--preset", help="named config (default: tiny); list them with `muonclip presets`")
    tr.add_argument("--optimizer", choices=["adamw", "muon", "muonclip"], help="override optim.optimizer")
    tr.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE",
                    help="override any config field, e.g. --set steps=40 --set optim.lr=0.01 (repeatable)")
    tr.add_argument("--data", metavar="PATH", help="train on a UTF-8 file or folder instead of the embedded corpus")
    tr.add_argument("--hf-dataset", metavar="NAME", help="a Hugging Face dataset (needs `datasets` and network)")
    tr.add_argument("--out", metavar="RUN_DIR", help="run directory to create")
    tr.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its last checkpoint")
    tr.add_argument("--force", action="store_true", help="overwrite an existing run in --out")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    tr.set_defaults(func=_cmd_train)
    pr = sub.add_parser("presets", help="list the named training presets")
    pr.set_defaults(func=_cmd_presets)
    bench = sub.add_parser("bench", help="optimizer step benchmark; extra args go to the script")
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)
