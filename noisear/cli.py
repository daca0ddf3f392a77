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
import unicodedata
from pathlib import Path

COMMAND_MODULES = ("noisear.cli", "noisear.train.cli", "noisear.toy.cli")
# The errors a user can fix. The library's own: noisear.io.NoiseARError (checkpoint, dataset, training and
# evaluation errors derive from it) and the three that predate it; OSError (a file or folder the system refuses:
# missing, no permission, disk full) and ImportError (a package or plugin module that is not installed).
# Looked up in sys.modules: an error of a module that was never imported cannot have been raised.
USER_ERRORS = (
    ("noisear.io", "NoiseARError"),
    ("noisear.config", "NoiseARConfigError"),
    ("noisear.model", "NoiseARInputError"),
    ("noisear.mixing", "NoiseMixingError"),
)


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is bad input the user can fix (see USER_ERRORS) rather than a bug."""
    if isinstance(err, (OSError, ImportError)):
        return True
    classes = tuple(getattr(sys.modules[module], name) for module, name in USER_ERRORS if module in sys.modules)
    return isinstance(err, classes)


def printable(text: object) -> str:
    """``text`` with control, bidi-override and other invisible format characters (newlines included) written
    as escapes, so that a file or folder name cannot rewrite the terminal or reorder what is shown."""
    return "".join(
        (repr(ch)[1:-1] if ch.isascii() else f"\\u{ord(ch):04x}") if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch
        for ch in str(text)
    )


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
