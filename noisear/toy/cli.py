"""`python -m noisear demo [TESTBED]`: the embedded CPU demo (see docs/demo.md). Testbeds: digits (the default:
8x8 digits, the class is the prompt) and layout (a digit placed on a 16x16 canvas by a token prompt that may leave
the place open; prompts held out from the priors)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

TESTBEDS = ("digits", "layout")


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="NoiseAR end to end on small CPU testbeds (digits, layout): markdown table, labelled grid, plot",
        description="Score every noise source of a testbed (Gaussian, Gaussian + prompt-mean shift and its "
        "exaggerations, golden re-denoise, NoiseAR priors of two training seeds at temperature 1 and 0.5, the DPO "
        "prior, ...) against the Gaussian of matched std and against the prompt-mean bar, judged by a classifier "
        "that was never a training reward, with the shipped checkpoints (or --retrain them first). digits: "
        "scikit-learn's 8x8 digits, the class is the prompt. layout: a digit in a quadrant of a 16x16 canvas, "
        "token prompts through a small text encoder, scored on prompts the priors never trained on.",
    )
    demo.add_argument("testbed", nargs="?", default="digits", choices=TESTBEDS, help="which testbed (default: digits)")
    demo.add_argument(
        "--out", default=None, help="folder for table.md, grid.png and plot.png (default: demo-out, demo-out/layout)"
    )
    demo.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)), help="evaluation seeds (default: 1 to 10)")
    demo.add_argument(
        "--samples",
        type=int,
        default=None,
        help="samples per seed (digits: a multiple of 10, default 1000; layout: a multiple of 20, default 600)",
    )
    demo.add_argument(
        "--permutations",
        type=int,
        default=100,
        help="permutations of the paired significance test (default 100: smallest p 0.01)",
    )
    demo.add_argument("--checkpoints", default=None, help="checkpoint folder (default: the shipped ones of the testbed)")
    demo.add_argument(
        "--retrain",
        action="store_true",
        help="rebuild every checkpoint of the testbed from scratch into --checkpoints first (minutes on 2 cores)",
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


def testbed(name: str):
    """The testbed called ``name`` (noisear.toy.demo.Testbed)."""
    if name == "layout":
        from .testbed_layout import LayoutTestbed

        return LayoutTestbed()
    from .testbed_digits import DigitsTestbed

    return DigitsTestbed()


def run_demo(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    chosen = testbed(args.testbed)
    directory = Path(args.checkpoints) if args.checkpoints else chosen.directory
    if args.retrain:
        chosen.retrain(directory, args.resume, recorded_command(sys.argv[1:]))
    out = Path(args.out) if args.out else Path("demo-out") / ("" if args.testbed == "digits" else args.testbed)
    paths = chosen.run(directory, out, seeds=args.seeds, samples=args.samples, permutations=args.permutations)
    print(Path(paths["table"]).read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(path) for path in paths.values()))
    return 0
