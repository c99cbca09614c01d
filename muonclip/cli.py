"""The `muonclip` command line: subcommands for the demo, the benchmark and the lab."""
from __future__ import annotations

import argparse
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="muonclip",
        description="MuonClip: Muon with exact QK-Clip, a CPU-scale training lab and a measured story.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="the main job (what `make demo` runs)")
    demo.set_defaults(func=_cmd_demo)
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
