"""`python -m noisear demo`: the embedded CPU demo on scikit-learn's digits (see docs/demo.md)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="NoiseAR end to end on 8x8 digits on the CPU: markdown table, labelled grid, plot",
        description="Score every noise source (Gaussian, Gaussian + prompt-mean shift, golden re-denoise, two "
        "NoiseAR priors at temperature 1 and 0.5, blends, the blog's Methods 1 and 2, the DPO prior) "
        "against the Gaussian of matched std, on a class-conditional diffusion model of scikit-learn's "
        "digits, with the shipped checkpoints (or --retrain them first).",
    )
    demo.add_argument("--out", default="demo-out", help="folder for table.md, grid.png and plot.png (default: demo-out)")
    demo.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)), help="evaluation seeds (default: 1 to 10)")
    demo.add_argument(
        "--samples", type=int, default=1000, help="samples per seed, a multiple of 10 (100 per class at the default 1000)"
    )
    demo.add_argument(
        "--permutations",
        type=int,
        default=100,
        help="permutations of the paired significance test (default 100: smallest p 0.01)",
    )
    demo.add_argument("--checkpoints", default=None, help="checkpoint folder (default: the shipped noisear/toy/checkpoints)")
    demo.add_argument(
        "--retrain",
        action="store_true",
        help="rebuild every checkpoint from scratch into --checkpoints first (< 15 min on 2 cores)",
    )
    demo.add_argument(
        "--resume", action="store_true", help="with --retrain: keep checkpoints that already exist (continue an interrupted run)"
    )
    demo.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: these networks are too small to gain from more, and "
        "extra threads stall badly when the cores are shared)",
    )
    demo.set_defaults(run=run_demo)


def recorded_command(argv: list[str]) -> str:
    """The command line as MANIFEST.md records it: an absolute path is cut to its last part (the folder's name),
    so the manifest names no machine's directories."""

    def portable(arg: str) -> str:
        option, sep, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        return option + sep + (Path(value).name if Path(value).is_absolute() else value)

    return "python -m noisear " + " ".join(shlex.quote(portable(arg)) for arg in argv)


def run_demo(args: argparse.Namespace) -> int:
    import torch

    from .checkpoints import DEFAULT_DIR, retrain

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    directory = Path(args.checkpoints) if args.checkpoints else DEFAULT_DIR
    if args.retrain:
        retrain(directory, resume=args.resume, command=recorded_command(sys.argv[1:]))
    from .demo import run

    paths = run(directory, Path(args.out), seeds=args.seeds, samples=args.samples, permutations=args.permutations)
    print(Path(paths["table"]).read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(path) for path in paths.values()))
    return 0
