"""A run folder: what a training run writes, the identity that decides whether a later command may resume it,
and the resume checkpoint's file format.

``OUT/`` of ``noisear train`` / ``dpo`` (noisear.train.loop.train) holds:

============================ ==================================================================================
``run.json``                 the run's identity (:func:`run_identity`), written once, before anything else
``checkpoint.safetensors``   resume state: every tensor (model, optimiser state, EMA, RNG states, the objective's
                             state) and, in the metadata, a JSON of the plain values; one file, written atomically
``log.jsonl``                training and validation records (strict JSON)
``prior.safetensors``        the final prior (noisear.load)
============================ ==================================================================================

The rules (docs/training.md, "Runs: resuming and overwriting"): a command whose identity equals ``run.json``'s
resumes that run (bitwise as if it had never stopped); anything else into that folder is refused before anything
is written, with what differs; an output never replaces an input (compared by file identity, through symlinks
and hard links); an output folder's name holds no control or bidi-override characters. Nothing here deletes or
moves an earlier result: starting afresh means a new output folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..config import NoiseARError
from ..io import write_atomically

RUN_FORMAT = "noisear-run-1"
CHECKPOINT_FORMAT = "noisear-train-checkpoint-2"
RUN_FILE, CHECKPOINT_FILE, LOG_FILE, PRIOR_FILE = "run.json", "checkpoint.safetensors", "log.jsonl", "prior.safetensors"
RUN_OUTPUTS = (RUN_FILE, CHECKPOINT_FILE, LOG_FILE, PRIOR_FILE)
LEGACY_CHECKPOINT = "checkpoint.pt"  # written by earlier versions with torch.save (a pickle); no longer read
# TrainConfig fields that may differ when a run resumes: where and how it reports, not what it computes. A
# change of device resumes the same run, but not bitwise (other kernels, other dropout masks on CUDA).
RESUMABLE = ("out_dir", "log_every", "val_every", "checkpoint_every", "progress", "device")


class TrainingError(NoiseARError):
    """A training run that cannot start, resume or go on as asked (settings, its output folder, a diverged
    loss). The message says what to do."""


# Names and files ------------------------------------------------------------------------------------------
def unsafe_characters(text: str) -> list[str]:
    """The control, bidi-override and invisible format characters in ``text`` (as U+XXXX)."""
    return [f"U+{ord(ch):04X}" for ch in text if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")]


def refuse_unsafe_name(path: str | os.PathLike, what: str = "output folder") -> None:
    """Refuse to create a folder whose name would rewrite a terminal or reorder what is shown."""
    found = unsafe_characters(os.fspath(path))
    if found:
        raise TrainingError(
            f"the {what} name holds control or bidi-override characters ({', '.join(sorted(set(found)))}); "
            f"they would garble or disguise every line that shows it. Choose a plain name"
        )


def same_object_key(path: str | os.PathLike) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` leads to, through symlinks; None when nothing is there. Two paths with
    the same key are the same file or folder (a symlink or a hard link). Whether a file's content changed is
    another question: noisear.io.file_identity."""
    try:
        status = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return status.st_dev, status.st_ino


def refuse_replacing_inputs(out_dir: Path, outputs: Iterable[str], inputs: Iterable[str | os.PathLike]) -> None:
    """No output may be an input: neither ``out_dir`` itself (e.g. the data folder) nor any of ``out_dir``'s
    ``outputs`` that exist may be the same file or folder as an input, however either is reached."""
    inputs = [Path(path) for path in inputs]
    known = {same_object_key(path): path for path in inputs if same_object_key(path) is not None}
    clash = known.get(same_object_key(out_dir)) if out_dir.exists() else None
    if clash is not None:
        raise TrainingError(
            f"the output folder {out_dir} is the input {clash} (the same folder); writing there would mix the run's "
            f"files into its input. Give another output folder"
        )
    for name in outputs:
        clash = known.get(same_object_key(out_dir / name))
        if clash is not None:
            raise TrainingError(
                f"{out_dir / name} is the input {clash} (the same file, reached through a link or the same path); "
                f"writing it would replace that input. Give another output folder"
            )


def prepare_out_dir(out_dir: Path, outputs: Iterable[str], inputs: Iterable[str | os.PathLike], create: bool) -> None:
    """Check an output folder before anything is written: a plain name, a folder (not a file), writable, no
    output name taken by a folder, no output that is an input. ``create``: make the folder (rank 0)."""
    refuse_unsafe_name(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise TrainingError(f"the output folder {out_dir} is an existing file; give a folder (new or existing)")
    refuse_replacing_inputs(out_dir, outputs, inputs)
    if create:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrainingError(f"cannot create the output folder {out_dir}: {err.strerror}") from None
    if out_dir.is_dir() and not os.access(out_dir, os.W_OK | os.X_OK):
        raise TrainingError(f"the output folder {out_dir} is not writable; give a folder you can write to")
    for name in outputs:
        path = out_dir / name
        if path.exists() and not path.is_file():
            raise TrainingError(f"{path} is not a file (a folder?); NoiseAR writes a file of that name there. Move it away")


# Identity -------------------------------------------------------------------------------------------------
def tensors_digest(tensors: dict[str, torch.Tensor | None]) -> str:
    """sha256 of named tensors: names, dtypes, shapes and bytes (None for an absent one)."""
    digest = hashlib.sha256()
    for name, value in sorted(tensors.items()):
        if value is None:
            digest.update(f"{name}:none;".encode())
            continue
        value = value.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{list(value.shape)};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def weights_digest(model: torch.nn.Module) -> str:
    """:func:`tensors_digest` of a module's state: where a run starts."""
    return tensors_digest(model.state_dict())


def callable_name(function: Any) -> str:
    """``module:qualified name`` of a function (or of a callable object's class)."""
    target = function if hasattr(function, "__qualname__") else type(function)
    return f"{getattr(target, '__module__', '?')}:{target.__qualname__}"


def run_identity(settings: dict[str, Any], network: dict[str, Any], start: str, objective: dict[str, Any]) -> dict[str, Any]:
    """What defines a run: the settings that shape its updates (TrainConfig less RESUMABLE), the network, the
    digest of its starting weights and the objective's identity (its data, method and options)."""
    return {
        "format": RUN_FORMAT,
        "settings": {key: value for key, value in settings.items() if key not in RESUMABLE},
        "network": network,
        "start": start,
        "objective": objective,
    }


def identity_digest(identity: dict[str, Any]) -> str:
    """sha256 of an identity: what a checkpoint records of the run it belongs to."""
    return "sha256:" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    return {prefix[:-1]: value}


def identity_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two identities, one readable item per setting."""
    before, now = _flat(saved), _flat(current)
    items = []
    if before.get("objective.method") != now.get("objective.method"):  # another method: its options do not compare
        items.append(f"the method ({before.get('objective.method')} there, {now.get('objective.method')} now)")
        before = {key: value for key, value in before.items() if not key.startswith("objective.")}
        now = {key: value for key, value in now.items() if not key.startswith("objective.")}
    for key in sorted(set(before) | set(now)):
        if before.get(key, "(none)") == now.get(key, "(none)"):
            continue
        if key == "start":
            items.append("the starting weights (another --init, --seed or network)")
        elif key.endswith("data"):
            items.append("the data (other shards, or shards changed since)")
        elif key.endswith("prompts") or key.endswith("reference"):
            items.append(f"{key.split('.')[-1]} (other tensors)")
        else:
            items.append(
                f"{key.split('.', 1)[-1]} {json.dumps(before.get(key, '(none)'))} there, {json.dumps(now.get(key, '(none)'))} now"
            )
    return items


@dataclass(frozen=True)
class RunFolder:
    """The files of a run in ``path``."""

    path: Path

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_FILE

    @property
    def log(self) -> Path:
        return self.path / LOG_FILE

    @property
    def prior(self) -> Path:
        return self.path / PRIOR_FILE

    def claim(self, identity: dict[str, Any], write: bool) -> None:
        """Make sure the folder holds this run or none: a new run's ``run.json`` is written (when ``write``); an
        earlier run with the same identity is resumed; anything else is refused, nothing written."""
        out = self.path
        if (out / LEGACY_CHECKPOINT).exists():
            raise TrainingError(
                f"{out / LEGACY_CHECKPOINT} is the checkpoint of an earlier NoiseAR version (a pickle), which this "
                f"version does not read. Finish that run with the version that started it, or start afresh with a "
                f"new output folder (from its {PRIOR_FILE} with --init, if it has one); nothing was changed"
            )
        if not self.run_file.exists():
            ours = [name for name in RUN_OUTPUTS if (out / name).exists()]
            if ours:
                raise TrainingError(
                    f"{out} holds {', '.join(ours)} but no {RUN_FILE}: files of an earlier version's run, or not a run "
                    f"of ours. Nothing was changed; give a new output folder"
                )
            if write:
                write_atomically(self.run_file, lambda temporary: temporary.write_text(json.dumps(identity, indent=1) + "\n"))
            return
        try:
            saved = json.loads(self.run_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise TrainingError(f"{self.run_file} is damaged ({err}); nothing was changed. Give a new output folder") from None
        if saved == identity:
            if write:  # this run's own temporaries, left by a kill during a write (io.write_atomically)
                for name in RUN_OUTPUTS:
                    for stale in out.glob(f".{name}.*.tmp"):
                        stale.unlink(missing_ok=True)
            return
        differences = identity_differences(saved, identity) if isinstance(saved, dict) else ["its format"]
        shown = "; ".join(differences[:6]) + (f"; and {len(differences) - 6} more" if len(differences) > 6 else "")
        if self.checkpoint.exists() or self.prior.exists():
            advice = f"to go on from that run's weights with these settings, start a new folder from its {PRIOR_FILE} (--init)"
        else:
            advice = f"that run saved no checkpoint yet: to reuse the name, remove {out} yourself"
        raise TrainingError(
            f"{out} holds another run (it differs in {shown}); a run resumes only with the same data, start and "
            f"settings, and nothing was changed. To start this one, give a new output folder; {advice}"
        )


# Checkpoint file -----------------------------------------------------------------------------------------
TENSOR, TUPLE, INT_KEYS = "__tensor__", "__tuple__", "__int_keys__"  # markers in the checkpoint's JSON


def _split(value: Any, path: str, tensors: dict[str, torch.Tensor], storages: set[int]) -> Any:
    """``value`` as JSON with each tensor replaced by {TENSOR: name} and stored in ``tensors`` under that name."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if tensor.numel() and pointer in storages:  # safetensors stores no shared memory
            tensor = tensor.clone()
        storages.add(tensor.untyped_storage().data_ptr())
        tensors[path] = tensor
        return {TENSOR: path}
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value):
            if any(key.startswith("__") for key in value):
                raise TypeError(f"checkpoint state keys may not start with '__' (at {path})")
            return {key: _split(item, f"{path}/{key}", tensors, storages) for key, item in value.items()}
        if all(isinstance(key, int) and not isinstance(key, bool) for key in value):
            return {INT_KEYS: [[key, _split(item, f"{path}/{key}", tensors, storages)] for key, item in value.items()]}
        raise TypeError(f"checkpoint state at {path} mixes key types")
    if isinstance(value, tuple):
        return {TUPLE: [_split(item, f"{path}/{i}", tensors, storages) for i, item in enumerate(value)]}
    if isinstance(value, list):
        return [_split(item, f"{path}/{i}", tensors, storages) for i, item in enumerate(value)]
    if value is None or isinstance(value, (bool, int, str)) or (isinstance(value, float) and math.isfinite(value)):
        return value
    raise TypeError(f"checkpoint state at {path} is a {type(value).__name__} {value!r}, not a tensor or a plain value")


def _join(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_join(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    if TENSOR in value:
        return tensors[value[TENSOR]]
    if TUPLE in value:
        return tuple(_join(item, tensors) for item in value[TUPLE])
    if INT_KEYS in value:
        return {int(key): _join(item, tensors) for key, item in value[INT_KEYS]}
    return {key: _join(item, tensors) for key, item in value.items()}


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (nested dicts, lists and tuples of tensors and plain values) as one safetensors file: the
    tensors, and the rest as JSON in the metadata. Atomic: a reader sees the previous file or this one."""
    tensors: dict[str, torch.Tensor] = {}
    plain = json.dumps(_split(state, "state", tensors, set()), allow_nan=False)
    metadata = {"format": CHECKPOINT_FORMAT, "state": plain}
    write_atomically(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The state :func:`write_checkpoint` wrote, with its tensors on the CPU."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != CHECKPOINT_FORMAT:
                raise TrainingError(
                    f"{path} is not a NoiseAR training checkpoint ({CHECKPOINT_FORMAT}); the run cannot resume from it. "
                    f"Nothing was changed; give a new output folder"
                )
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        state = _join(json.loads(metadata["state"]), tensors)
    except TrainingError:
        raise
    except Exception as err:  # safetensors and json raise several types for damaged files
        reason = " ".join(str(err).split())[:200]
        raise TrainingError(
            f"{path} cannot be read as a training checkpoint ({type(err).__name__}: {reason}); the run cannot "
            f"resume from it. Nothing was changed; give a new output folder (or remove the file to redo the run)"
        ) from None
    return state
