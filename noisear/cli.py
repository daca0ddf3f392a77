"""`python -m noisear COMMAND ...`: one entry point; each feature module registers its own commands.

A module in COMMAND_MODULES defines ``register(subparsers)``, which adds its parsers and sets
``run=function(args) -> int`` on each. Heavy imports stay inside the run functions.

Errors: a user error (USER_ERRORS: bad input, settings or files, a missing package, a file the system
refuses) is printed as one line, ``error: ...``, with exit status 2; Ctrl-C exits with 130; any other
exception is a bug: its traceback is printed with a line that says so, exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from pathlib import Path

from .config import NoiseARError, printable

COMMAND_MODULES = ("noisear.cli", "noisear.train.cli", "noisear.toy.cli")
# The errors a user can fix: the library's own (every one derives from noisear.config.NoiseARError), OSError (a
# file or folder the system refuses: missing, no permission, disk full) and ImportError (a package or plugin
# module that is not installed).
USER_ERRORS = (NoiseARError, OSError, ImportError)


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is bad input the user can fix (see USER_ERRORS) rather than a bug."""
    return isinstance(err, USER_ERRORS)


def user_message(err: BaseException) -> str:
    """One line for a user error: its message, or for an OSError what the system said about which file."""
    if isinstance(err, OSError) and err.strerror:
        target = f": {err.filename}" if err.filename is not None else ""
        return f"{err.strerror}{target}"
    return str(err) or type(err).__name__


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
    except KeyboardInterrupt as err:
        print(printable(f"interrupted: {err}" if str(err) else "interrupted"), file=sys.stderr)
        return 130
    except Exception as err:
        if is_user_error(err):
            print(f"error: {printable(user_message(err))}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(
            f"error: this is a bug ({type(err).__name__}), not a problem with your input: please report it with the "
            f"command and the traceback above (if the traceback ends in a plugin you gave, e.g. --scorer, look there first)",
            file=sys.stderr,
        )
        return 1
