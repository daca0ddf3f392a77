"""The shipped toy checkpoints: where each testbed's live, how they are saved and loaded, and the stage runner
that --retrain rebuilds them with (recording the command, budgets and timings in MANIFEST.md).

Toy networks are .safetensors with their config dataclass as JSON metadata; the NoiseAR priors go through
noisear.save / noisear.load; a tensor (a prompt-mean shift, a baseline's weights) is one "value" tensor.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..io import write_atomically

ROOT = Path(__file__).parent / "checkpoints"
DEFAULT_DIR = ROOT  # the digits testbed's (the default demo)
FILES = {  # the digits testbed's
    "classifier": "classifier.safetensors",
    "reward": "reward.safetensors",
    "denoiser": "denoiser.safetensors",
    "pixel_prior": "pixel_prior.safetensors",
    "denoiser_method1": "denoiser_method1.safetensors",
    "prompt_mean_shift": "prompt_mean_shift.safetensors",
    "prior": "noisear_prior.safetensors",
    "prior_seed1": "noisear_prior_seed1.safetensors",
    "prior_dpo": "noisear_prior_dpo.safetensors",
}
LAYOUT_DIR = ROOT / "layout"
LAYOUT_FILES = {
    "judge": "judge.safetensors",
    "reward": "reward.safetensors",
    "denoiser": "denoiser.safetensors",
    "prompt_mean": "prompt_mean.safetensors",
    "prior_no_ar": "noisear_prior_no_ar.safetensors",
    "prior": "noisear_prior.safetensors",
    "prior_seed1": "noisear_prior_seed1.safetensors",
    "prior_dpo": "noisear_prior_dpo.safetensors",
}
HELD_OUT_FILE = "held_out.json"  # the held-out figures recorded by --retrain
MANIFEST_FILE = "MANIFEST.md"


class ToyCheckpointError(FileNotFoundError):
    """A toy checkpoint that is missing or does not fit its network."""


def missing(path: Path, testbed: str) -> ToyCheckpointError:
    command = "python -m noisear demo" + ("" if testbed == "digits" else f" {testbed}")
    return ToyCheckpointError(f"missing toy checkpoint {path}; run `{command} --retrain` to rebuild the checkpoints")


def save_net(module: torch.nn.Module, path: Path, config: object | None = None) -> None:
    """Parameters (no buffers that are functions of the config) as safetensors, config as JSON metadata."""
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items() if not k.endswith(".mask")}
    metadata = {"config": json.dumps(asdict(config) if config is not None else {})}
    write_atomically(path, lambda temporary: save_file(state, str(temporary), metadata=metadata))


def save_with_config(module: torch.nn.Module, path: Path) -> None:
    """:func:`save_net` with the module's own ``config`` (every toy network carries one)."""
    save_net(module, path, module.config)


def load_net(cls: type, config_cls: type | None, path: Path, testbed: str = "digits") -> torch.nn.Module:
    """Rebuild ``cls(config)`` from a file written by :func:`save_net`, in eval mode."""
    if not path.is_file():
        raise missing(path, testbed)
    with safe_open(str(path), framework="pt") as handle:
        config = json.loads((handle.metadata() or {}).get("config", "{}"))
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    module = cls(config_cls(**config)) if config_cls is not None else cls()
    missing_keys, unexpected = module.load_state_dict(state, strict=False)
    missing_keys = [k for k in missing_keys if not k.endswith(".mask")]
    if missing_keys or unexpected:
        raise ToyCheckpointError(f"{path.name} does not fit {cls.__name__}: missing {missing_keys}, unexpected {unexpected}")
    return module.train(False)


def load_tensors(path: Path, testbed: str = "digits") -> dict[str, torch.Tensor]:
    """Every tensor of a file written by :func:`save_tensors`."""
    if not path.is_file():
        raise missing(path, testbed)
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def save_tensors(values: dict[str, torch.Tensor], path: Path) -> None:
    write_atomically(path, lambda temporary: save_file({k: v.contiguous() for k, v in values.items()}, str(temporary)))


def load_tensor(path: Path, testbed: str = "digits") -> torch.Tensor:
    """The one tensor ("value") of a file written by :func:`save_tensor`."""
    return load_tensors(path, testbed)["value"]


def save_tensor(value: torch.Tensor, path: Path) -> None:
    save_tensors({"value": value}, path)


def load_held_out(directory: Path) -> dict[str, Any]:
    """The held-out figures recorded by --retrain ({} when absent)."""
    path = Path(directory) / HELD_OUT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


class Stages:
    """Runs --retrain's stages into ``directory``: each builds, saves and times one checkpoint of ``files``; with
    ``resume`` a stage whose checkpoint exists is loaded instead. ``notes`` go into MANIFEST.md."""

    def __init__(self, directory: Path, files: dict[str, str], resume: bool) -> None:
        self.directory, self.files, self.resume = Path(directory), files, resume
        self.directory.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}
        self.notes: dict[str, str] = {}

    def path(self, name: str) -> Path:
        return self.directory / self.files[name]

    def run(self, name: str, build: Callable[[], Any], save: Callable[[Any, Path], None], load: Callable[[Path], Any]) -> Any:
        path = self.path(name)
        if self.resume and path.is_file():
            return load(path)
        start = time.perf_counter()
        result = build()
        save(result, path)
        self.timings[name] = time.perf_counter() - start
        print(f"[retrain] {name}: {self.timings[name]:.0f} s", file=sys.stderr)
        return result

    def manifest(self, title: str, budgets: object, command: str) -> None:
        """MANIFEST.md: the command, the budgets, the time per stage, the file sizes (project-relative names only)."""
        lines = [
            f"# {title}",
            "",
            "Made by our own training code with:",
            "",
            f"    {command}",
            "",
            f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, "
            f"{torch.get_num_threads()} threads",
            "",
            "| file | bytes | stage seconds |",
            "|---|---|---|",
        ]
        for name, file in self.files.items():
            path = self.directory / file
            size = path.stat().st_size if path.is_file() else 0
            seconds = f"{self.timings[name]:.0f}" if name in self.timings else "(kept)"
            lines.append(f"| {file} | {size:,} | {seconds} |")
        lines += [
            "",
            *(f"- {key}: {value}" for key, value in self.notes.items()),
            "",
            "Budgets:",
            "",
            "```json",
            json.dumps(asdict(budgets), indent=1),
            "```",
            "",
        ]
        (self.directory / MANIFEST_FILE).write_text("\n".join(lines), encoding="utf-8")
