"""Checkpoint I/O: our safetensors (config in the metadata) and the published `model.pth` files.

Nothing here unpickles arbitrary objects: `.pth` files go through `torch.load(weights_only=True)`,
and every tensor is checked against the config (name, shape, dtype, finite values) before use.
"""
from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import NoiseARConfig, NoiseARConfigError
from .model import NoiseAR

FORMAT_NAME = "noisear"
FORMAT_VERSION = "1"
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
WRAPPER_KEYS = ("state_dict", "model")  # training scripts often nest the weights under one of these
KEY_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


class NoiseARCheckpointError(ValueError):
    """A file that is not a usable NoiseAR checkpoint. The message says what was expected."""


# Writing files ------------------------------------------------------------------------------------
def file_mode() -> int:
    """Permissions open() gives a new file: 0o666 minus the process umask (0o644 under umask 022).

    safetensors writes 0o600 whatever the umask, so a ComfyUI running as another user could not read
    our files. The umask is read from /proc (os.umask would change it for every thread meanwhile).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """``write(temporary)`` to a hidden ``.NAME.*.tmp`` file next to ``path``, give it :func:`file_mode`
    permissions, then rename it onto ``path``.

    Readers never see a half-written ``path``; on any exception (Ctrl-C included) the temporary file
    is removed. Only a killed process leaves one behind (hidden, ending in .tmp). Returns ``path``.
    """
    path = Path(path)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        os.chmod(temporary, file_mode())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def _reason(err: Exception) -> str:
    """A reader's exception as one short line (torch's weights_only errors span many lines of advice)."""
    text = str(err)
    detail = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
    return " ".join((detail.group(1) if detail else text).split())[:300] or type(err).__name__


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as err:  # safetensors raises its own error types for every kind of damage
        raise NoiseARCheckpointError(
            f"{path.name} is not a readable safetensors file (truncated or corrupt?): {_reason(err)}") from None
    return state, metadata


def _read_pickle(path: Path) -> dict:
    try:
        mmap = zipfile.is_zipfile(path)  # the legacy (non-zip) format cannot be memory-mapped
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:
        code = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if isinstance(err, pickle.UnpicklingError) and code:
            raise NoiseARCheckpointError(
                f"refused to load {path.name}: it holds Python objects other than tensors ({code.group(1)}), "
                f"which could run code. Nothing was executed; only plain state dicts of tensors are accepted "
                f"(torch.load weights_only=True). Get the file from its original source.") from None
        raise NoiseARCheckpointError(
            f"{path.name} is not a readable PyTorch checkpoint (truncated or corrupt?): {_reason(err)}") from None
    if not isinstance(loaded, dict):
        raise NoiseARCheckpointError(f"{path.name} holds a {type(loaded).__name__}, not a state dict")
    return loaded


def _unwrap(state: dict, name: str) -> dict[str, torch.Tensor]:
    """Take the weights out of a {'state_dict': ...} / {'model': ...} wrapper and strip wrapper prefixes."""
    for key in WRAPPER_KEYS:
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    clean = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise NoiseARCheckpointError(f"{name}: entry '{key}' is a {type(value).__name__}, not a tensor")
        for prefix in KEY_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        clean[key] = value
    return clean


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], NoiseARConfig]:
    """Read and validate a checkpoint: (state dict on the CPU, config). Raises NoiseARCheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise NoiseARCheckpointError(f"no such checkpoint file: {path}")
    if path.suffix == ".safetensors":
        state, metadata = _read_safetensors(path)
    elif path.suffix in PICKLE_SUFFIXES:
        state, metadata = _read_pickle(path), {}
    else:
        raise NoiseARCheckpointError(
            f"{path.name}: unknown checkpoint type '{path.suffix}'; expected .safetensors or {', '.join(PICKLE_SUFFIXES)}")
    state = _unwrap(state, path.name)
    try:
        if "noisear_config" in metadata:
            config = NoiseARConfig.from_json(metadata["noisear_config"])
        else:
            config = NoiseARConfig.from_state_dict(state)
    except NoiseARConfigError as err:
        raise NoiseARCheckpointError(f"{path.name}: {err}") from None
    validate_state_dict(state, config, path.name)
    return state, config


def validate_state_dict(state: dict[str, torch.Tensor], config: NoiseARConfig, name: str = "checkpoint") -> None:
    """Every expected key present with its shape, no extra key, floating and finite values."""
    with torch.device("meta"):
        expected = {key: tuple(value.shape) for key, value in NoiseAR(config).state_dict().items()}
    missing = [key for key in expected if key not in state]
    extra = [key for key in state if key not in expected]
    problems = [f"missing '{key}' (expected shape {list(expected[key])})" for key in missing]
    problems += [f"unexpected '{key}' (shape {list(state[key].shape)})" for key in extra]
    for key, shape in expected.items():
        if key in state and tuple(state[key].shape) != shape:
            problems.append(f"'{key}' has shape {list(state[key].shape)}, expected {list(shape)}")
    if problems:
        raise NoiseARCheckpointError(
            f"{name} does not match a NoiseAR {config.variant} network: " + "; ".join(problems))
    for key, value in state.items():
        if not value.is_floating_point():
            raise NoiseARCheckpointError(f"{name}: '{key}' has dtype {value.dtype}, expected a floating type")
        if value.numel() and not torch.isfinite(torch.stack(torch.aminmax(value))).all():  # NaN propagates; no copy
            raise NoiseARCheckpointError(f"{name}: '{key}' contains NaN or infinite values; the file is damaged")


def load(path: str | os.PathLike, device: str | torch.device | None = None,
         dtype: torch.dtype | None = None) -> NoiseAR:
    """Load a NoiseAR checkpoint (.safetensors or published .pth) into an eval-mode model.

    The network is built without memory and takes the file's tensors as they are, so loading
    needs about the weights' size in RAM.
    """
    state, config = read_checkpoint(path)
    with torch.device("meta"):
        model = NoiseAR(config)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()


def save(model: NoiseAR, path: str | os.PathLike) -> None:
    """Write ``model`` as .safetensors with its config in the metadata."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise NoiseARCheckpointError(f"save writes .safetensors files only; got '{path.name}'")
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "noisear_config": model.config.to_json()}
    write_atomically(path, lambda temporary: save_file(state, str(temporary), metadata=metadata))


def convert(source: str | os.PathLike, target: str | os.PathLike) -> NoiseARConfig:
    """Checkpoint (e.g. published model.pth) -> .safetensors with config; tensors bit-identical."""
    if Path(target).suffix != ".safetensors":
        raise NoiseARCheckpointError(f"convert writes .safetensors files only; got '{Path(target).name}'")
    state, config = read_checkpoint(source)
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "noisear_config": config.to_json()}
    state = {key: value.contiguous() for key, value in state.items()}
    write_atomically(target, lambda temporary: save_file(state, str(temporary), metadata=metadata))
    return config


def describe(path: str | os.PathLike) -> dict:
    """What `inspect` prints: variant, config, parameter count, dtypes, file size."""
    state, config = read_checkpoint(path)
    with torch.device("meta"):
        buffers = {name for name, _ in NoiseAR(config).named_buffers()}
    return {
        "file": str(path),
        "variant": config.variant,
        "config": config,
        "parameters": sum(value.numel() for key, value in state.items() if key not in buffers),
        "dtypes": sorted({str(value.dtype).removeprefix("torch.") for value in state.values()}),
        "size_mb": Path(path).stat().st_size / 2 ** 20,
    }
