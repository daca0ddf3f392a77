"""Checkpoint I/O: our safetensors (config in the metadata) and the published `model.pth` files.

Nothing here unpickles arbitrary objects: `.pth` files go through `torch.load(weights_only=True)`,
and every tensor is checked against the config (name, shape, dtype, finite values) before use.
"""

from __future__ import annotations

import _compat_pickle  # the Python 2 -> 3 name table pickle itself uses
import hashlib
import io
import json
import math
import os
import pickle
import pickletools
import re
import secrets
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Mapping, NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import LIMITS, NoiseARConfig, NoiseARConfigError, NoiseARError, listing, quoted
from .model import NoiseAR

CONTENT_SAMPLE_BYTES = 64 * 2**10  # file_identity hashes this many bytes at each end of a file
FORMAT_NAME = "noisear"
FORMAT_VERSION = "1"
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
WRAPPER_KEYS = ("state_dict", "model")  # training scripts often nest the weights under one of these
KEY_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers
FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
# The globals torch.save writes for a state dict (optionally wrapped, with optimizer state); any other is refused.
STATE_DICT_GLOBALS = {
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    *(f"torch.{kind}Storage" for kind in ("Float", "Half", "BFloat16", "Double", "Long", "Int", "Short", "Char", "Byte", "Bool")),
}


class NoiseARCheckpointError(NoiseARError):
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
    temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"  # named first: a Ctrl-C at any
    try:  # point below removes it
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        write(temporary)
        os.chmod(temporary, file_mode())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


# Knowing when a file changed ---------------------------------------------------------------------
def file_state(path: str | os.PathLike) -> tuple[int, int, int, int, int]:
    """(device, inode, size, mtime_ns, ctime_ns) of the file at ``path``: one stat, for noticing cheaply that a
    file changed while it is in use (a dataset's shards during a run). :func:`file_identity` adds a content
    sample, for cache keys that must hold over days."""
    info = os.stat(path)
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


class FileIdentity(NamedTuple):
    """What a file's content is known by: see :func:`file_identity`."""

    path: str  # real path (symlinks resolved)
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    content: str  # sha256 of the first and last CONTENT_SAMPLE_BYTES


def file_identity(path: str | os.PathLike) -> FileIdentity:
    """The identity of the file at ``path``: it changes whenever the file's content may have changed.

    The one key for caches of what a file holds (the ComfyUI Loader's IS_CHANGED and its cache of loaded
    priors). Why this is enough: every write to a file sets its ctime to the current time, and nothing a
    user runs can set a ctime back (cp -p, rsync -a, tar and os.utime restore atime and mtime only, which
    itself sets ctime to now); a file replaced by a rename has another inode and a new ctime. So where
    ctime has nanoseconds (ext4, xfs, btrfs, tmpfs, APFS, NTFS) every change is seen. The content sample
    is for coarse clocks (FAT keeps 2 s and no ctime, some network mounts whole seconds): a rewrite within
    one tick is still seen when it changes the first or last 64 KiB, which for a checkpoint hold the header
    (config, tensor layout) and values of the first and last tensors, changed by any retraining,
    conversion or dtype change. Cost: one stat and two 64 KiB reads. Raises OSError when the file cannot
    be read and NoiseARCheckpointError for a pipe, device or folder (opened without blocking).
    """
    real = os.path.realpath(path)
    descriptor = os.open(real, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode):
        os.close(descriptor)
        raise NoiseARCheckpointError(f"{Path(real).name} is not a regular file (a folder, pipe or device)")
    with os.fdopen(descriptor, "rb") as handle:
        digest = hashlib.sha256(handle.read(CONTENT_SAMPLE_BYTES))
        if info.st_size > CONTENT_SAMPLE_BYTES:
            handle.seek(max(CONTENT_SAMPLE_BYTES, info.st_size - CONTENT_SAMPLE_BYTES))
            digest.update(handle.read(CONTENT_SAMPLE_BYTES))
    return FileIdentity(real, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns, digest.hexdigest())


# Reading: everything a file declares is checked before its data is read ------------------------------
@dataclass(frozen=True)
class TensorInfo:
    """What a file declares about one tensor, before its data is read."""

    shape: tuple[int, ...]
    dtype: torch.dtype


def _reason(err: BaseException) -> str:
    """A reader's exception as one short line, without torch's advice to retry unsafely."""
    text = str(err)
    detail = re.search(r"WeightsUnpickler error:(.*?)(?:Check the documentation|$)", text, re.S)
    lines = [
        line
        for line in (detail.group(1) if detail else text).splitlines()
        if line.strip() and "weights_only" not in line and "trust" not in line
    ]
    text = " ".join(" ".join(lines).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _refused_globals(path: Path, found: list[str]) -> NoiseARCheckpointError:
    return NoiseARCheckpointError(
        f"refused to load {path.name}: it holds Python objects other than plain tensors ({listing(found)}); "
        f"a state dict never needs them, and such objects could run code when unpickled. Nothing was "
        f"executed. Get the file from its original source, or a .safetensors version of it."
    )


def _scan_pickle(stream: IO[bytes], path: Path, count: int = 1) -> None:
    """Walk ``count`` pickles without running them; refuse any global a state dict does not need and more
    tensors or opcodes than LIMITS allow, so torch.load only ever sees a small plain state dict."""
    found, reduces, ops, strings = [], 0, 0, ["?", "?"]
    try:
        for _ in range(count):
            for opcode, arg, _ in pickletools.genops(stream):
                ops += 1
                if isinstance(arg, str) and "UNICODE" in opcode.name:
                    strings = [strings[-1], arg]
                if opcode.name in ("GLOBAL", "INST", "STACK_GLOBAL"):
                    module, _, name = (arg if opcode.name != "STACK_GLOBAL" else " ".join(strings)).partition(" ")
                    # protocol 2 writes Python 2 names (__builtin__.eval): say what Python 3 runs
                    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
                    name = f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"
                    if name not in STATE_DICT_GLOBALS and name not in found:
                        found.append(quoted(name)[1:-1])
                reduces += opcode.name == "REDUCE"
                if reduces > 2 * LIMITS.tensors or ops > LIMITS.pickle_ops:
                    raise NoiseARCheckpointError(
                        f"{path.name} holds more than {LIMITS.tensors} tensors or {LIMITS.pickle_ops} pickle "
                        f"operations; a NoiseAR checkpoint holds at most {LIMITS.tensors}"
                    )
    except (ValueError, EOFError) as err:  # genops: unknown opcode, data cut short
        if isinstance(err, NoiseARCheckpointError):
            raise
        if not found:
            raise NoiseARCheckpointError(
                f"{path.name} is not a readable PyTorch checkpoint (truncated or corrupt?): {_reason(err)}"
            ) from None
    if found:
        raise _refused_globals(path, found)


def _torch_load(path: Path, mmap: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:
        if isinstance(err, pickle.UnpicklingError) and "GLOBAL" in str(err):  # a global our scan let through
            name = re.search(r"GLOBAL ([\w.]+)", str(err))
            raise _refused_globals(path, [name.group(1) if name else "?"]) from None
        raise NoiseARCheckpointError(
            f"{path.name} is not a readable PyTorch checkpoint (truncated or corrupt?): {_reason(err)}"
        ) from None


def _open_zip_pickle(path: Path) -> bytes:
    """The pickle of a zip .pth after checking its directory: stored entries only, few, a small pickle."""
    try:
        with path.open("rb") as handle:  # the end record gives the count before the directory is parsed
            end = zipfile._EndRecData(handle)  # private but stable since Python 2; handles zip64
        count = end[zipfile._ECD_ENTRIES_TOTAL] if end else 0
        if count > LIMITS.tensors + 16:
            raise NoiseARCheckpointError(
                f"{path.name} holds {count} records; a NoiseAR checkpoint holds at most {LIMITS.tensors} tensors"
            )
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
            if any(entry.compress_type != zipfile.ZIP_STORED for entry in entries):
                raise NoiseARCheckpointError(
                    f"{path.name} holds compressed records, which torch.save never writes; the file is damaged or crafted"
                )
            pickles = [entry for entry in entries if entry.filename.endswith("/data.pkl")]
            if len(pickles) != 1 or pickles[0].file_size > LIMITS.pickle_bytes:
                raise NoiseARCheckpointError(
                    f"{path.name} is not a readable PyTorch checkpoint: expected one data.pkl of at most "
                    f"{LIMITS.pickle_bytes} bytes"
                )
            return archive.read(pickles[0])
    except Exception as err:  # zipfile raises many kinds (BadZipFile, NotImplementedError, struct.error, ...)
        if isinstance(err, NoiseARCheckpointError):
            raise
        raise NoiseARCheckpointError(
            f"{path.name} is not a readable PyTorch checkpoint (truncated or corrupt?): {_reason(err)}"
        ) from None


def _unwrap(loaded: Any, path: Path) -> dict[str, Any]:
    """Take the weights out of a {'state_dict': ...} / {'model': ...} wrapper and strip wrapper prefixes."""
    if not isinstance(loaded, dict):
        raise NoiseARCheckpointError(f"{path.name} holds a {type(loaded).__name__}, not a state dict")
    for key in WRAPPER_KEYS:
        if isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    return _strip_prefixes(loaded, path)


def _strip_prefixes(entries: dict, path: Path) -> dict[str, Any]:
    """Keys without DDP / torch.compile prefixes; keys must be strings and stay distinct."""
    clean: dict[str, Any] = {}
    for key, value in entries.items():
        if not isinstance(key, str):
            raise NoiseARCheckpointError(f"{path.name}: entry {quoted(key)} is named by a {type(key).__name__}, not a string")
        name = key
        for prefix in KEY_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
        if name in clean:
            raise NoiseARCheckpointError(f"{path.name}: two entries are named {quoted(name)} (with and without a wrapper prefix)")
        clean[name] = value
    return clean


def _tensor_info(key: str, value: Any, path: Path, owners: dict[int, str]) -> TensorInfo:
    """A loaded .pth entry must be a plain CPU float tensor that owns exactly its data."""
    if not isinstance(value, torch.Tensor):
        raise NoiseARCheckpointError(f"{path.name}: entry {quoted(key)} is a {type(value).__name__}, not a tensor")
    if value.layout != torch.strided or value.device.type != "cpu" or value.is_quantized:
        raise NoiseARCheckpointError(
            f"{path.name}: {quoted(key)} is not a plain dense tensor ({value.layout}, {value.device.type})"
        )
    if value.dtype not in FLOAT_DTYPES.values():
        raise NoiseARCheckpointError(
            f"{path.name}: {quoted(key)} has dtype {value.dtype}, expected a floating "
            f"type (float32, float16, bfloat16 or float64)"
        )
    stored = value.untyped_storage().nbytes()
    if value.storage_offset() or not value.is_contiguous() or stored != value.numel() * value.element_size():
        raise NoiseARCheckpointError(
            f"{path.name}: {quoted(key)} of shape {list(value.shape)} (strides {list(value.stride())}) is a view "
            f"of {stored} stored bytes, not a tensor that owns its {value.numel() * value.element_size()} bytes; "
            f"re-save the state dict with every tensor .clone()d"
        )
    if value.numel():
        owner = owners.setdefault(value.untyped_storage().data_ptr(), key)
        if owner != key:
            raise NoiseARCheckpointError(
                f"{path.name}: {quoted(key)} shares its data with {quoted(owner)}; "
                f"re-save the state dict with every tensor .clone()d"
            )
    return TensorInfo(tuple(value.shape), value.dtype)


def _pth_infos(loaded: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, TensorInfo]]:
    state, owners = _unwrap(loaded, path), {}
    return state, {key: _tensor_info(key, value, path, owners) for key, value in state.items()}


class _Reader:
    """One checkpoint file: its declared tensors (``infos``) and config metadata, then its data on request."""

    def __init__(self, path: Path) -> None:
        self.path, self.metadata = path, {}
        if path.suffix == ".safetensors":
            self.infos = self._safetensors_header()
        elif path.suffix in PICKLE_SUFFIXES:
            self.infos = self._pth_header()
        else:
            raise NoiseARCheckpointError(
                f"{path.name}: unknown checkpoint type {quoted(path.suffix)}; expected "
                f".safetensors or {', '.join(PICKLE_SUFFIXES)}"
            )

    # safetensors: 8-byte header length, JSON header {key: {dtype, shape, data_offsets}, __metadata__}, data
    def _safetensors_header(self) -> dict[str, TensorInfo]:
        path = self.path
        with path.open("rb") as handle:
            length, size = int.from_bytes(handle.read(8), "little"), path.stat().st_size
            if length > min(LIMITS.header_bytes, size - 8):
                raise NoiseARCheckpointError(
                    f"{path.name} is not a readable safetensors file (truncated or corrupt?): it declares a "
                    f"header of {length} bytes in a file of {size} (a NoiseAR header is at most {LIMITS.header_bytes})"
                )
            header = handle.read(length)
        try:
            header = json.loads(header)
            count = len(header) - ("__metadata__" in header) if isinstance(header, dict) else 0
            if count > LIMITS.tensors:  # refused before safetensors walks them all
                raise NoiseARCheckpointError(
                    f"{path.name} holds {count} tensors; a NoiseAR checkpoint holds at most {LIMITS.tensors}"
                )
            with safe_open(str(path), framework="pt", device="cpu"):  # validates offsets and sizes against the file
                pass
        except Exception as err:  # safetensors raises its own error types for every kind of damage
            if isinstance(err, NoiseARCheckpointError):
                raise
            raise NoiseARCheckpointError(
                f"{path.name} is not a readable safetensors file (truncated or corrupt?): {_reason(err)}"
            ) from None
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start, self.offsets, infos = 8 + length, {}, {}
        for key, entry in _strip_prefixes(header, path).items():
            if entry["dtype"] not in FLOAT_DTYPES:
                raise NoiseARCheckpointError(
                    f"{path.name}: {quoted(key)} has dtype {quoted(entry['dtype'])}, "
                    f"expected a floating type ({', '.join(FLOAT_DTYPES)})"
                )
            infos[key] = TensorInfo(tuple(entry["shape"]), FLOAT_DTYPES[entry["dtype"]])
            self.offsets[key] = tuple(entry["data_offsets"])
        return infos

    def _safetensors_data(self, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
        """Each tensor read straight from the file into memory of its own (no mapping of the file stays)."""
        state = {}
        with self.path.open("rb") as handle:
            for key, info in self.infos.items():
                begin, end = self.offsets[key]
                tensor = torch.empty(info.shape, dtype=info.dtype)
                handle.seek(self.data_start + begin)
                target, done = memoryview(tensor.reshape(-1).view(torch.uint8).numpy()), 0
                while done < end - begin:
                    read = handle.readinto(target[done:])
                    if not read:
                        raise NoiseARCheckpointError(f"{self.path.name} was cut short while being read; load it again")
                    done += read
                state[key] = tensor if dtype is None else tensor.to(dtype)
        return state

    # .pth: a zip of a pickle and raw records (or the legacy single stream), read by torch.load(weights_only)
    def _pth_header(self) -> dict[str, TensorInfo]:
        path = self.path
        self.zip = zipfile.is_zipfile(path)
        if self.zip:
            _scan_pickle(io.BytesIO(_open_zip_pickle(path)), path)
            _, infos = _pth_infos(_torch_load(path, mmap=True), path)  # maps the file: nothing is read yet
            return infos
        with path.open("rb") as handle:  # legacy: magic number, protocol, system info, the state dict
            _scan_pickle(io.BytesIO(handle.read(LIMITS.pickle_bytes)), path, count=4)
        self.state, infos = _pth_infos(_torch_load(path, mmap=False), path)  # the data is read here
        return infos

    def _pth_data(self, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
        if self.zip:  # read again without mapping: torch allocates each record's size and reads it
            self.state, infos = _pth_infos(_torch_load(self.path, mmap=False), self.path)
            if infos != self.infos:
                raise NoiseARCheckpointError(f"{self.path.name} changed while being read; load it again")
        state, self.state = self.state, {}
        for key in state:  # one tensor at a time, so a cast needs one tensor's extra memory
            state[key] = state[key] if dtype is None else state[key].to(dtype)
        return state

    def data(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        return self._safetensors_data(dtype) if self.path.suffix == ".safetensors" else self._pth_data(dtype)


def _config(reader: _Reader) -> NoiseARConfig:
    try:
        if "noisear_config" in reader.metadata:
            return NoiseARConfig.from_json(reader.metadata["noisear_config"])
        return NoiseARConfig.from_state_dict(reader.infos)
    except NoiseARConfigError as err:
        raise NoiseARCheckpointError(f"{reader.path.name}: {err}") from None


def check_shapes(infos: Mapping[str, Any], config: NoiseARConfig, name: str = "checkpoint") -> None:
    """Every key of ``config.state_shapes()`` present with its shape, no other key (values: anything with
    a ``.shape``). Nothing is allocated."""
    expected = config.state_shapes()
    problems = [f"missing {quoted(key)} (expected shape {list(shape)})" for key, shape in expected.items() if key not in infos]
    problems += [f"unexpected {quoted(key)} (shape {list(infos[key].shape)})" for key in infos if key not in expected]
    problems += [
        f"{quoted(key)} has shape {list(infos[key].shape)}, expected {list(shape)}"
        for key, shape in expected.items()
        if key in infos and tuple(infos[key].shape) != shape
    ]
    if problems:
        raise NoiseARCheckpointError(f"{name} does not match a NoiseAR {config.variant} network: {listing(problems)}")


def check_values(state: Mapping[str, torch.Tensor], name: str = "checkpoint") -> None:
    """Finite values no larger than LIMITS.weight_magnitude in every tensor."""
    for key, value in state.items():
        if not value.numel():
            continue
        low, high = (float(x) for x in torch.aminmax(value))  # NaN propagates; no copy
        if not (math.isfinite(low) and math.isfinite(high)):
            raise NoiseARCheckpointError(f"{name}: {quoted(key)} contains NaN or infinite values; the file is damaged")
        if max(-low, high) > LIMITS.weight_magnitude:
            raise NoiseARCheckpointError(
                f"{name}: {quoted(key)} holds values up to {max(-low, high):.3g}; a NoiseAR prior's weights stay "
                f"below {LIMITS.weight_magnitude:g}, so the file is damaged"
            )


def _read(path: str | os.PathLike, dtype: torch.dtype | None = None) -> tuple[dict[str, torch.Tensor], NoiseARConfig]:
    path = Path(path)
    if not path.is_file():
        raise NoiseARCheckpointError(f"no such checkpoint file: {path}")
    reader = _Reader(path)
    config = _config(reader)
    check_shapes(reader.infos, config, path.name)
    state = reader.data(dtype)
    check_values(state, path.name)
    return state, config


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], NoiseARConfig]:
    """Read and validate a checkpoint: (state dict on the CPU in the stored dtypes, config).

    Everything the file declares (config, names, shapes, dtypes, sizes, pickle globals) is checked
    against LIMITS and the config before any data is read; then the values must be finite and
    bounded. The tensors own their memory: nothing refers to the file afterwards. Raises
    NoiseARCheckpointError with one line saying what is wrong.
    """
    return _read(path)


def load(path: str | os.PathLike, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> NoiseAR:
    """Load a NoiseAR checkpoint (.safetensors or published .pth) into an eval-mode model.

    The weights are read tensor by tensor into memory the model owns (cast to ``dtype`` one tensor at
    a time), so loading needs about the weights' size in RAM and the file can change afterwards.
    """
    state, config = _read(path, dtype)
    with torch.device("meta"):
        model = NoiseAR(config)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device).train(False)


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
        "size_mb": Path(path).stat().st_size / 2**20,
    }
