"""`python -m noisear COMMAND ...`: one entry point; each feature module registers its own commands.

A module in COMMAND_MODULES defines ``register(subparsers)``, which adds its parsers and sets
``run=function(args) -> int`` on each. Heavy imports stay inside the run functions.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

COMMAND_MODULES = ("noisear.cli", "noisear.train.cli", "noisear.toy.cli")


def register(subparsers: argparse._SubParsersAction) -> None:
    """The checkpoint commands: inspect and convert."""
    inspect = subparsers.add_parser(
        "inspect",
        help="print a checkpoint's variant, config, parameter count and dtype",
        description="Read a NoiseAR checkpoint (.safetensors or the published model.pth) safely "
        "(no code is unpickled), validate every tensor and print what it holds.",
    )
    inspect.add_argument("file", help="path to a .safetensors or .pth checkpoint")
    inspect.set_defaults(run=run_inspect)

    convert = subparsers.add_parser(
        "convert",
        help="convert a published model.pth into .safetensors with its config",
        description="Convert a NoiseAR checkpoint (e.g. the authors' model.pth) into our .safetensors "
        "format; tensors are copied bit for bit and the config is stored in the metadata.",
    )
    convert.add_argument("source", help="input checkpoint (.pth or .safetensors)")
    convert.add_argument("target", help="output path ending in .safetensors")
    convert.set_defaults(run=run_convert)


def run_inspect(args: argparse.Namespace) -> int:
    from .io import describe

    info = describe(args.file)
    lines = {
        "file": f"{info['file']} ({info['size_mb']:.1f} MiB)",
        "variant": info["variant"],
        "parameters": f"{info['parameters']:,}",
        "dtype": ", ".join(info["dtypes"]),
        **vars(info["config"]),
        "family": info["config"].family_key or "(unknown)",  # published checkpoints: the one their shapes say
    }
    for name, value in lines.items():
        print(f"{name:<17}{value}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from .io import convert

    config = convert(args.source, args.target)
    print(f"wrote {args.target} ({config.variant} variant)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    prog = "noisear" if Path(sys.argv[0]).name == "noisear" else "python -m noisear"  # the pip-installed command or not
    parser = argparse.ArgumentParser(
        prog=prog,
        description="NoiseAR: learned, prompt-conditioned initial noise for diffusion models. "
        f"Run `{prog} COMMAND --help` for the options of a command.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, ImportError) as err:  # every NoiseAR error is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
