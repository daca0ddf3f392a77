"""Dataset of (prompt embedding, target noise) pairs stored as safetensors shards.

A shard ``shard-00012.safetensors`` holds N samples:

=============== ================ ===============================================================
tensor          shape / dtype    meaning
=============== ================ ===============================================================
``text``        [N, T, D] float  prompt embedding the prior is conditioned on
``text_mask``   [N, T] uint8     1 = real token, 0 = padding
``noise``       [N, C, H, W]     target noise (e.g. golden noise) in unit-variance latent space (video: [N, C, T, H, W])
``prompt_index`` [N] int64       which prompt; the train/validation split is made on this
``seed``        [N] int64        seed of the starting noise the target was made from
=============== ================ ===============================================================

and JSON metadata: ``format`` / ``format_version``, ``info`` (a :class:`DatasetInfo`: source
model, schedule, sampling steps, guidance, free-form extras) and ``prompts`` (prompt index ->
prompt text, for the prompts in that shard). T, D, C, H, W and ``info`` are the same in every
shard of a directory. A dataset of size folders (buckets, see :class:`ShardDataset`) may differ between them in
the noise's size (H, W, and T for video) and in T, the text slots (a batch's text is padded to its longest with
mask 0, and the prior drops the columns no item attends to, so the slots never change what it computes).

Shards are numbered and read in numeric order (``shard-99999`` before ``shard-100000``). The writer
appends batches and flushes a shard atomically when ``shard_size`` samples or ``shard_bytes`` bytes
are buffered, so a collector that is killed loses at most the unflushed samples (a stale temporary
file is removed when the directory is opened again) and can ask which (prompt, seed) pairs already
exist. Shard metadata and tensor headers are checked (types, shapes, dtypes) before use. The
reader holds only the small per-sample columns (prompt index, seed) and reads the rows a batch
needs as slices of the shards (memory: one batch). Train/validation are split by a hash of the
prompt index and, optionally, of the seed (never by sample): see :meth:`ShardDataset.rows`.

A seed identifies a starting noise. The collectors draw a distinct seed for every (prompt, j)
(:func:`pair_seed`, recorded as ``info.seed_scheme``); a dataset whose seeds
repeat across prompts holds the same noises many times, and the trainer refuses it
(:meth:`ShardDataset.seed_counts`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import stat
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..config import NoiseARError, listing, quoted
from ..families import FAMILIES
from ..io import file_state, write_atomically
from ..model import standard_normal
from ..patches import top_left, whole_patches

FORMAT_NAME = "noisear-dataset"
FORMAT_VERSION = "1"
SHARD_GLOB = "shard-*.safetensors"
SHARD_NAME = re.compile(r"shard-(\d{1,18})\.safetensors")
# a shard being written (io.write_atomically; older versions wrote shard-N.tmp): left only by a killed writer
TEMP_GLOBS = (".shard-*.tmp", "shard-*.tmp")
SHARD_BYTES = 256 * 2**20  # default byte budget of a shard (and of the writer's buffer)
# tensor -> (numbers of dimensions, safetensors dtypes accepted)
TENSOR_LAYOUT = {
    "text": ((3,), ("F32", "F16", "BF16")),
    "text_mask": ((2,), ("U8", "BOOL")),
    "noise": ((4, 5), ("F32", "F16", "BF16")),  # images [N, C, H, W], videos [N, C, T, H, W]
    "prompt_index": ((1,), ("I64",)),
    "seed": ((1,), ("I64",)),
}
TENSOR_NAMES = ("text", "text_mask", "noise", "prompt_index", "seed")
SPLITS = ("train", "validation")


class DatasetError(NoiseARError):
    """A dataset directory or a batch that does not fit the shard format. The message says what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    """How the target noises were made. Stored in every shard; must match across a directory."""

    source_model: str = "unknown"
    prediction: str = "unknown"  # epsilon, v or flow
    schedule: str = "unknown"  # e.g. "sdxl scaled_linear, leading spacing"
    steps: int = 0  # sampling steps the noise is meant for
    guidance_denoise: float = 0.0  # golden noise: w_l
    guidance_invert: float = 0.0  # golden noise: w_w
    extra: dict = field(default_factory=dict)
    seed_scheme: str = "unknown"  # how the seeds were made, e.g. "pair-sha256-v1" (pair_seed)
    # what tells the model the targets were made with from another (the ComfyUI collector: its model class and
    # hashes of its weights and weight patches); {} when not recorded, as in datasets written before it was
    model_identity: dict = field(default_factory=dict)
    # the model family of that model (a key of noisear.families.FAMILIES); "" when unknown or not recorded
    family: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DatasetInfo":
        """Parse and type-check; DatasetError for anything that is not what to_json writes."""
        values = _json_object(text, "info")
        kinds = {
            "source_model": str,
            "prediction": str,
            "schedule": str,
            "steps": int,
            "guidance_denoise": float,
            "guidance_invert": float,
            "extra": dict,
            "seed_scheme": str,
            "model_identity": dict,
            "family": str,
        }
        unknown = sorted(set(values) - set(kinds))
        if unknown:
            raise DatasetError(f"dataset info has unknown fields {unknown[:5]}; expected some of {sorted(kinds)}")
        for key, value in values.items():
            kind = kinds[key]
            fits = (
                isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                if kind is float
                else isinstance(value, kind) and not isinstance(value, bool)
            )
            if not fits:
                noun = {str: "a string", int: "an integer", float: "a finite number", dict: "an object"}[kind]
                raise DatasetError(f"dataset info field {key!r} must be {noun}, got {quoted(value)}")
        if values.get("family", "") not in ("", *FAMILIES):
            raise DatasetError(
                f"dataset info names the model family {quoted(values['family'])}, which this version does not know; "
                f"known: {listing(sorted(FAMILIES))} (a dataset from a newer version: update comfyui-noisear)"
            )
        return cls(**values)


def _json_object(text: str, what: str) -> dict:
    """A JSON object from shard metadata; DatasetError when it is not one (or is absurdly nested)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise DatasetError(f"shard metadata {what!r} is not valid JSON ({quoted(str(err))})") from None
    if not isinstance(value, dict):
        raise DatasetError(f"shard metadata {what!r} must be a JSON object, got {type(value).__name__}")
    return value


def _prompts_from_json(text: str) -> dict[int, str]:
    """The ``prompts`` metadata: {"<prompt index>": "<text>"}."""
    prompts = {}
    for key, value in _json_object(text, "prompts").items():
        if not (re.fullmatch(r"-?\d{1,19}", key) and isinstance(value, str)):
            raise DatasetError(f"shard metadata 'prompts' must map prompt indices to texts, got {quoted(key)}: {quoted(value)}")
        prompts[int(key)] = value
    return prompts


def shard_paths(directory: Path) -> list[Path]:
    """The shard files directly in ``directory``, in numeric order (shard-99999 before shard-100000). Anything
    named like a shard that is not a regular file (a folder, a FIFO, a device, a broken link) is refused before
    it is opened: opening a FIFO would wait forever."""
    numbered = []
    for path in directory.glob(SHARD_GLOB):
        match = SHARD_NAME.fullmatch(path.name)
        if match is None:
            raise DatasetError(f"{path} is not named shard-<number>.safetensors; rename or remove it")
        try:
            mode = path.stat().st_mode
        except OSError as err:
            raise DatasetError(f"{path} cannot be read ({err.strerror}; a broken link?); remove it or fix it") from None
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
            raise DatasetError(f"{path} is {kind}, not a shard file; remove it or rename it")
        numbered.append((int(match.group(1)), path.name, path))
    return [path for *_, path in sorted(numbered)]


def folder_info(directory: str | os.PathLike) -> DatasetInfo | None:
    """The DatasetInfo of the shards directly in ``directory`` (its first shard's, read from the header), or None
    when it holds none: what a collector checks before it opens a :class:`ShardWriter` there."""
    directory = Path(directory)
    paths = shard_paths(directory) if directory.is_dir() else []
    return _shard_info(paths[0], _shard_header(paths[0])[0]) if paths else None


def _shard_info(path: Path, metadata: dict[str, str]) -> DatasetInfo:
    try:
        return DatasetInfo.from_json(metadata.get("info", "{}"))
    except DatasetError as err:
        raise DatasetError(
            f"{path}: {err}. NoiseAR did not write this metadata: remove the shard or use another folder"
        ) from None


def _header_bytes(path: Path) -> bytes:
    """A safetensors file's raw header (length prefix and JSON: metadata, names, dtypes, shapes, offsets)."""
    with path.open("rb") as handle:
        prefix = handle.read(8)
        return prefix + handle.read(min(int.from_bytes(prefix, "little"), 100_000_000))


def pad_text(texts: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Text [N_i, T_i, D] and masks [N_i, T_i] -> one text [sum N_i, max T_i, D] and mask, each part padded with zero
    rows of mask 0 (rows no item attends to: NoiseAR drops them before the network)."""
    longest = max(text.shape[1] for text in texts)

    def padded(tensor: torch.Tensor) -> torch.Tensor:
        extra = longest - tensor.shape[1]
        return tensor if extra == 0 else torch.cat([tensor, tensor.new_zeros(tensor.shape[0], extra, *tensor.shape[2:])], 1)

    return torch.cat([padded(text) for text in texts]), torch.cat([padded(mask) for mask in masks])


@dataclass
class Batch:
    """A batch of samples. text [B,T,D] float32, text_mask [B,T] bool, noise [B,C,H,W] (video [B,C,T,H,W]) float32,
    prompt_index [B] int64, seed [B] int64. ``stored_shape``: the shape (C, H, W) or (C, T, H, W) of the stored
    noise when ``noise`` is its top-left part (:meth:`ShardDataset.in_whole_patches`); None: noise as stored."""

    text: torch.Tensor
    text_mask: torch.Tensor
    noise: torch.Tensor
    prompt_index: torch.Tensor
    seed: torch.Tensor
    stored_shape: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return self.noise.shape[0]

    def to(self, device: str | torch.device) -> "Batch":
        return replace(self, **{name: getattr(self, name).to(device) for name in TENSOR_NAMES})

    def rows(self, index: torch.Tensor | slice) -> "Batch":
        """The samples ``index`` picks (a slice, a bool mask or positions), ``stored_shape`` kept."""
        return replace(self, **{name: getattr(self, name)[index] for name in TENSOR_NAMES})

    @staticmethod
    def concat(parts: list["Batch"]) -> "Batch":
        """The parts one after the other (of one stored shape); text of different lengths is padded to the longest
        (:func:`pad_text`)."""
        stored = {part.stored_shape for part in parts}
        if len(stored) > 1:
            raise DatasetError(f"cannot concatenate batches cut from noise of different shapes {sorted(map(str, stored))}")
        text, text_mask = pad_text([part.text for part in parts], [part.text_mask for part in parts])
        rest = (torch.cat([getattr(part, name) for part in parts]) for name in TENSOR_NAMES[2:])
        return Batch(text, text_mask, *rest, stored.pop())


def validation_prompt(prompt_index: int, fraction: float, salt: str = "noisear") -> bool:
    """Deterministic split: True when the prompt belongs to the validation set (about ``fraction``)."""
    digest = hashlib.sha256(f"{salt}:{int(prompt_index)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def validation_seed(seed: int, fraction: float) -> bool:
    """Deterministic split: True when the seed (starting noise) is held out (about ``fraction`` of seeds)."""
    return validation_prompt(seed, fraction, salt="noisear-seed")


# Seeds: which starting noise a pair has -------------------------------------------------------------
SEED_SCHEME = "pair-sha256-v1"  # recorded as DatasetInfo.seed_scheme by the collectors
SEED_BITS = 53  # seeds below 2^53: exact in JSON and in ComfyUI's seed widget


def pair_seed(first_seed: int, prompt_key: int, j: int) -> int:
    """Seed of the j-th starting noise of a prompt (the one place that says how seeds are made).

    seed = first 53 bits of sha256("pair-sha256-v1:{first_seed}:{prompt_key}:{j}"), an int in [0, 2^53).
    ``prompt_key`` is the dataset's prompt index (the ComfyUI collector: a hash of the prompt text).
    Deterministic, so a collector resumes; distinct for every (prompt, j) up to hash collisions
    (about n^2 / 2^54 for n pairs: 1e-4 for 10^6 pairs, which ``data inspect`` would report).
    The starting noise of a seed is ``standard_normal([1, C, H, W], [seed])`` (ComfyUI's RandomNoise draw).
    """
    text = f"{SEED_SCHEME}:{int(first_seed)}:{int(prompt_key)}:{int(j)}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> (64 - SEED_BITS)


def known_start_noise(info: DatasetInfo) -> bool:
    """Whether a dataset's starting noises are ``start_noise`` of its seeds (made by these collectors)."""
    return info.seed_scheme == SEED_SCHEME


def start_noise(seeds: torch.Tensor | Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """[B, C, H, W] fp32 starting noises of B seeds (``shape`` = [B, C, H, W]): each seed's own RandomNoise draw."""
    return standard_normal(tuple(shape), [int(seed) for seed in seeds])


def shift_from_start(batch: Batch) -> torch.Tensor:
    """[B, C, H, W]: the batch's golden noise minus its starting noise (the seeds' ``start_noise`` at the stored
    size, cut as the noise is), on the noise's device."""
    noise = batch.noise
    start = start_noise(batch.seed, (len(batch), *(batch.stored_shape or noise.shape[1:])))
    return noise - top_left(start, noise.shape[2:]).to(noise.device)


def prompt_seeds(first_seed: int, prompt_key: int, count: int) -> list[int]:
    """The seeds of j = 0 .. count-1 for one prompt."""
    return [pair_seed(first_seed, prompt_key, j) for j in range(count)]


def prompt_index(prompt: str) -> int:
    """A stable non-negative int63 for a prompt text (the dataset's prompt key and split unit)."""
    return int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big") >> 1


def _shard_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """Metadata and tensor shapes of a shard, checked against the format (no tensor data is read)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            slices = {name: handle.get_slice(name) for name in handle.keys()}
            shapes = {name: tuple(part.get_shape()) for name, part in slices.items()}
            dtypes = {name: part.get_dtype() for name, part in slices.items()}
    except Exception as err:
        raise DatasetError(
            f"{path.name} is not a readable safetensors shard (truncated or corrupt?): {quoted(str(err), 200)}"
        ) from None
    if metadata.get("format") != FORMAT_NAME:
        raise DatasetError(f"{path.name} is not a NoiseAR dataset shard (metadata format={metadata.get('format')!r})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            f"{path.name} has dataset format version {metadata.get('format_version')!r}; "
            f"this library reads version {FORMAT_VERSION}"
        )
    missing = [name for name in TENSOR_NAMES if name not in shapes]
    if missing:
        raise DatasetError(f"{path.name} lacks tensors {missing}; a shard holds {list(TENSOR_NAMES)}")
    for name, (ndims, accepted) in TENSOR_LAYOUT.items():
        if len(shapes[name]) not in ndims or dtypes[name] not in accepted:
            raise DatasetError(
                f"{path.name}: tensor {name!r} is {dtypes[name]} {list(shapes[name])}; expected "
                f"{' or '.join(map(str, ndims))} dimensions of {'/'.join(accepted)} (see noisear.train.data)"
            )
    count, tokens = shapes["text"][:2]
    if (
        any(shapes[name][0] != count for name in TENSOR_NAMES)
        or shapes["text_mask"][1] != tokens
        or 0 in shapes["text"][1:]
        or 0 in shapes["noise"][1:]
    ):
        raise DatasetError(
            f"{path.name}: tensor shapes {[list(shapes[n]) for n in TENSOR_NAMES]} do not fit "
            f"text [N,T,D], text_mask [N,T], noise [N,C,H,W], prompt_index [N], seed [N]"
        )
    return metadata, shapes


def _read_tensors(path: Path, names: tuple[str, ...] = TENSOR_NAMES) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return {name: handle.get_tensor(name) for name in names}


def _read_rows(path: Path, rows: np.ndarray) -> dict[str, torch.Tensor]:
    """The given rows (any order, no repeats) of every tensor, reading only those rows: each run of
    consecutive row numbers is one slice of the memory-mapped shard."""
    order = np.argsort(rows, kind="stable")
    ordered = np.asarray(rows, dtype=np.int64)[order]
    breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
    runs = [(int(run[0]), int(run[-1]) + 1) for run in np.split(ordered, breaks) if len(run)]
    back = torch.as_tensor(np.argsort(order), dtype=torch.long)  # sorted position -> requested position
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        result = {}
        for name in TENSOR_NAMES:
            view = handle.get_slice(name)
            result[name] = torch.cat([view[start:stop] for start, stop in runs])[back]
    return result


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    count: int
    prompt_index: np.ndarray  # [count] int64
    seed: np.ndarray  # [count] int64
    prompts: dict[int, str]
    noise_shape: tuple[int, ...] = ()  # (C, H, W), or (C, T, H, W) for video
    state: tuple[int, ...] = ()  # file_state when the dataset was opened: a later change is refused
    digest: str = ""  # sha256 of the shard's header, prompt_index / seed columns and a few rows
    text_tokens: int = 0  # the longest text in the shard: most tokens of one sample (mask 1), padding left out
    text_shape: tuple[int, ...] = ()  # (T, D): text slots and width


def _layout_free(info: DatasetInfo) -> DatasetInfo:
    """``info`` without what only says how a shard is laid out (the text slots a collector was asked for), which
    may differ between the buckets of one dataset."""
    return replace(info, extra={key: value for key, value in info.extra.items() if key != "text_tokens"})


class ShardDataset:
    """All shards of a directory, read lazily.

    ``item_shapes`` = {"text": (T, D), "noise": (C, H, W) or (C, T, H, W)} (of the first shard); ``info`` the
    shared DatasetInfo (the first shard's). Only the small per-sample columns (prompt index, seed) are held in
    memory, and of the text masks only the longest text (``text_tokens``).

    Buckets: a directory without shards of its own whose subdirectories hold shards (one latent size each, e.g.
    ``1024x1024/`` and ``1216x832/``, or videos ``832x480x81/`` and ``832x480x33/``) is one dataset whose noise
    sizes differ between buckets (``noise_shapes``: H, W and, for video, T); the noise's rank and channels, the
    text width D and the info must agree. The text slots T may differ, and so may ``info.extra["text_tokens"]``,
    the slots a collector was asked for: a layout, not how the targets were made. A shard reached twice (a
    bucket linked twice, a hard link) is refused, as is a shard that changes after it was opened.

    ``patch``: () reads the noise as stored; :meth:`in_whole_patches` gives the dataset as a prior of a patch trains
    on it, each sample's noise cut to its top-left whole patches (``read_shape``), the part the sampler's patches
    cover when it pads a latent up to whole patches and crops it back (NoiseAR.sample).
    """

    patch: tuple[int, ...] = ()

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise DatasetError(f"no {SHARD_GLOB} files in {self.directory}: it is not a directory")
        paths = shard_paths(self.directory) or [
            path for sub in sorted(self.directory.iterdir()) if sub.is_dir() for path in shard_paths(sub)
        ]
        if not paths:
            raise DatasetError(
                f"no {SHARD_GLOB} files in {self.directory} or its subdirectories; write them "
                f"with ShardWriter (or a collector) first"
            )
        seen: dict[tuple[int, int], Path] = {}
        for path in paths:
            status = path.stat()
            first = seen.setdefault((status.st_dev, status.st_ino), path)
            if first != path:
                raise DatasetError(
                    f"{first} and {path} are the same file (reached through a link); a dataset holds each shard "
                    f"once: remove one of the links"
                )
        self.shards: list[ShardInfo] = []
        self.info: DatasetInfo | None = None
        self.item_shapes: dict[str, tuple[int, ...]] = {}
        for path in paths:
            metadata, shapes = _shard_header(path)
            info = _shard_info(path, metadata)
            try:
                prompts = _prompts_from_json(metadata.get("prompts", "{}"))
            except DatasetError as err:
                raise DatasetError(
                    f"{path}: {err}. NoiseAR did not write this metadata: remove the shard or use another folder"
                ) from None
            item_shapes = {"text": shapes["text"][1:], "noise": shapes["noise"][1:]}
            bucket = next((s for s in self.shards if s.path.parent == path.parent), None)
            if self.info is None:
                self.info, self.item_shapes = info, item_shapes
            elif (
                _layout_free(info) != _layout_free(self.info)
                or item_shapes["text"][1] != self.item_shapes["text"][1]
                or item_shapes["noise"][0] != self.item_shapes["noise"][0]
                or len(item_shapes["noise"]) != len(self.item_shapes["noise"])
                or (bucket is not None and (item_shapes["noise"], item_shapes["text"]) != (bucket.noise_shape, bucket.text_shape))
            ):
                raise DatasetError(
                    f"{path.name} does not match the other shards of {self.directory} "
                    f"(info or tensor shapes differ); keep one dataset per directory (one latent "
                    f"size per bucket subdirectory)"
                )
            state = file_state(path)
            columns = _read_tensors(path, ("prompt_index", "seed", "text_mask"))
            digest = hashlib.sha256(_header_bytes(path))
            digest.update(columns["prompt_index"].numpy().tobytes() + columns["seed"].numpy().tobytes())
            count = shapes["noise"][0]
            if count:  # a few whole rows too: same prompts and seeds with other values are other data
                sample = _read_rows(path, np.unique(np.linspace(0, count - 1, num=min(count, 4)).astype(np.int64)))
                digest.update(sample["text"].numpy().tobytes() + sample["noise"].numpy().tobytes())
            self.shards.append(
                ShardInfo(
                    path,
                    shapes["noise"][0],
                    columns["prompt_index"].numpy(),
                    columns["seed"].numpy(),
                    prompts,
                    item_shapes["noise"],
                    state,
                    digest.hexdigest(),
                    int(columns["text_mask"].bool().sum(dim=1).max()) if count else 0,
                    item_shapes["text"],
                )
            )
        self._splits: dict[tuple[float, float], dict[str, list[np.ndarray]]] = {}

    @property
    def noise_shapes(self) -> list[tuple[int, ...]]:
        """The distinct noise shapes of the buckets as stored, (C, H, W) or (C, T, H, W), sorted (one entry without
        buckets); :meth:`read_shape` gives what a batch holds of each."""
        return sorted({shard.noise_shape for shard in self.shards})

    def in_whole_patches(self, patch: tuple[int, ...]) -> "ShardDataset":
        """This dataset with each sample's noise read as its top-left whole ``patch`` patches ((P, P) over H, W or
        (Pt, P, P) over T, H, W), for a prior of that patch; a side shorter than its patch is refused."""
        for shape in self.noise_shapes:
            size = shape[len(shape) - len(patch) :]
            if any(n < p for n, p in zip(size, patch)):
                raise DatasetError(
                    f"{self.directory} holds noise {list(shape)}, less than one {' x '.join(map(str, patch))}-cell "
                    f"patch on a side; a prior learns whole patches: collect larger latents, or give a smaller patch "
                    f"(--patch-size, --patch-frames)"
                )
        dataset = copy.copy(self)
        dataset.patch = tuple(patch)
        return dataset

    def read_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape a batch holds of stored noise ``shape`` (C, H, W) or (C, T, H, W): its top-left whole patches."""
        return whole_patches(tuple(shape), self.patch)

    @property
    def text_width(self) -> int:
        """D, the width of the text embedding (the same in every shard)."""
        return self.item_shapes["text"][1]

    @property
    def text_tokens(self) -> int:
        """The longest text of the dataset: most tokens of one sample, padding (mask 0) left out."""
        return max((shard.text_tokens for shard in self.shards), default=0)

    def __len__(self) -> int:
        return sum(shard.count for shard in self.shards)

    def fingerprint(self) -> str:
        """sha256 over every shard's name (relative to the directory), size, header, prompt_index / seed columns
        and up to four whole rows: equal for the same data wherever it lies, different when a shard is added,
        removed or rewritten (cheap: only those few rows of text and noise are read)."""
        digest = hashlib.sha256()
        for shard in self.shards:
            name = shard.path.relative_to(self.directory).as_posix()
            digest.update(f"{name}:{shard.state[2]}:{shard.digest};".encode())
        return "sha256:" + digest.hexdigest()

    def input_paths(self) -> list[Path]:
        """The directory, its bucket subdirectories and every shard: what a run on this dataset reads."""
        return [self.directory, *sorted({shard.path.parent for shard in self.shards}), *(shard.path for shard in self.shards)]

    def prompt_indices(self) -> np.ndarray:
        """Sorted unique prompt indices."""
        return np.unique(np.concatenate([shard.prompt_index for shard in self.shards]))

    def prompts(self) -> dict[int, str]:
        """Prompt index -> prompt text, where the writer was given texts."""
        return {key: value for shard in self.shards for key, value in shard.prompts.items()}

    def pairs(self) -> set[tuple[int, int]]:
        """The (prompt index, seed) pairs present."""
        return {(int(p), int(s)) for shard in self.shards for p, s in zip(shard.prompt_index, shard.seed)}

    def seed_counts(self) -> dict[str, int]:
        """How many distinct starting noises the dataset holds: ``distinct_seeds``; ``shared_seeds``, the
        seeds used by more than one prompt; ``samples_with_shared_seed``, the samples that start from them."""
        prompts = np.concatenate([shard.prompt_index for shard in self.shards])
        seeds = np.concatenate([shard.seed for shard in self.shards])
        pairs = np.unique(np.stack([seeds, prompts], axis=1), axis=0)
        unique, prompts_per_seed = np.unique(pairs[:, 0], return_counts=True)
        shared = unique[prompts_per_seed > 1]
        return {
            "distinct_seeds": len(unique),
            "shared_seeds": len(shared),
            "samples_with_shared_seed": int(np.isin(seeds, shared).sum()),
        }

    def rows(self, split: str | None, validation_fraction: float, seed_fraction: float = 0.0) -> list[np.ndarray]:
        """Per shard, the row numbers that belong to ``split`` ('train', 'validation' or None = all).

        A pair is held out when its prompt is (``validation_fraction`` of the prompts, by a hash of the
        prompt index) or its seed is (``seed_fraction`` of the seeds, by a hash of the seed). Train: the
        pairs held out by neither. Validation: the held-out pairs whose seed never occurs in train, so
        every validation noise is unseen (with seeds repeated across prompts, a held-out prompt's pairs
        on training seeds belong to neither split).
        """
        if split not in (*SPLITS, None):
            raise DatasetError(f"split must be one of {SPLITS} or None, got {split!r}")
        if split is None:
            return [np.arange(shard.count) for shard in self.shards]
        key = (float(validation_fraction), float(seed_fraction))
        if key not in self._splits:
            held_prompts = {int(p) for p in self.prompt_indices() if validation_prompt(int(p), validation_fraction)}
            held = []
            for shard in self.shards:
                is_held = np.isin(shard.prompt_index, list(held_prompts))
                if seed_fraction > 0:
                    is_held |= np.fromiter((validation_seed(int(s), seed_fraction) for s in shard.seed), bool, shard.count)
                held.append(is_held)
            train_seeds = np.unique(np.concatenate([shard.seed[~h] for shard, h in zip(self.shards, held)]))
            self._splits[key] = {
                "train": [np.flatnonzero(~h) for h in held],
                "validation": [np.flatnonzero(h & ~np.isin(shard.seed, train_seeds)) for shard, h in zip(self.shards, held)],
            }
        return self._splits[key][split]

    def load_rows(self, shard_id: int, rows: np.ndarray) -> Batch:
        """``rows`` of one shard, in the given order; reads only those rows."""
        shard = self.shards[shard_id]
        path = shard.path
        try:
            changed = file_state(path) != shard.state
        except OSError:
            changed = True
        if changed:
            raise DatasetError(
                f"{path} was replaced, changed or removed after the dataset was opened; a run reads the data it "
                f"started with. Restore the shard (a training run resumes from its last checkpoint), or start a new "
                f"run on the changed data"
            )
        try:
            tensors = _read_rows(path, rows)
        except Exception as err:  # damaged since it was opened
            raise DatasetError(f"{path} can no longer be read (changed or damaged?): {quoted(str(err), 200)}") from None
        read = self.read_shape(shard.noise_shape)
        batch = Batch(
            tensors["text"].float(),
            tensors["text_mask"].bool(),
            top_left(tensors["noise"], read).float().contiguous(),
            tensors["prompt_index"].long(),
            tensors["seed"].long(),
            shard.noise_shape if read != shard.noise_shape else None,
        )
        if not (torch.isfinite(batch.text).all() and torch.isfinite(batch.noise).all()):
            raise DatasetError(f"{path} holds NaN or infinite values; remove that shard (the writer never writes them)")
        return batch

    def iterate(
        self, split: str | None = None, validation_fraction: float = 0.1, batch_size: int = 64, seed_fraction: float = 0.0
    ) -> Iterator[Batch]:
        """Stream the split in file order, one batch in memory; a batch never spans shards (may be short)."""
        for shard_id, rows in enumerate(self.rows(split, validation_fraction, seed_fraction)):
            for start in range(0, len(rows), batch_size):
                yield self.load_rows(shard_id, rows[start : start + batch_size])


class BatchPlan:
    """Which (shard, row) pairs form global batch ``step``: a deterministic function of (seed, step).

    Each epoch is one seeded permutation of the training split of every bucket (noise shape) over
    all its shards, cut into global batches (the tail that does not fill one is dropped); the
    epoch's batches of all buckets are then shuffled together, so a batch never mixes sizes. So a
    batch mixes prompts however the data were written (e.g. prompt by prompt), and it reads only
    its own rows (safetensors slices of the shards it touches): memory is one batch plus 16 bytes
    per training sample for the order, and a batch opens at most ``batch_size`` shards.
    Rank ``r`` of ``world`` takes rows [r*B/world, (r+1)*B/world) of each global batch,
    so any number of processes sees the same global batches.
    """

    def __init__(
        self,
        dataset: ShardDataset,
        batch_size: int,
        seed: int,
        validation_fraction: float,
        split: str = "train",
        seed_fraction: float = 0.0,
    ) -> None:
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        rows = dataset.rows(split, validation_fraction, seed_fraction)
        samples = np.concatenate([np.stack([np.full(len(r), s), r], axis=1) for s, r in enumerate(rows)])
        bucket_of_shard = np.array([dataset.noise_shapes.index(shard.noise_shape) for shard in dataset.shards])
        self.buckets = [samples[bucket_of_shard[samples[:, 0]] == b] for b in range(len(dataset.noise_shapes))]
        self.batches_per_epoch = sum(len(bucket) // batch_size for bucket in self.buckets)
        if self.batches_per_epoch == 0:
            raise DatasetError(
                f"the {split} split holds {len(samples)} samples, fewer than one global batch of "
                f"{batch_size}; lower the batch size or add data"
            )
        self._epoch, self._order = -1, np.empty((0, batch_size, 2), dtype=np.int64)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """[batches_per_epoch, batch_size, 2] (shard, row) for ``epoch``."""
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            batches = []
            for bucket in self.buckets:
                full = len(bucket) // self.batch_size * self.batch_size
                batches.append(bucket[rng.permutation(len(bucket))[:full]].reshape(-1, self.batch_size, 2))
            order = np.concatenate(batches)
            self._epoch, self._order = epoch, order[rng.permutation(len(order))]
        return self._order

    def batch(self, step: int, rank: int = 0, world: int = 1) -> Batch:
        """This rank's share of global batch ``step`` (0-based, counted over all epochs), in plan order."""
        if self.batch_size % world:
            raise DatasetError(f"global batch {self.batch_size} is not divisible by {world} processes")
        epoch, index = divmod(step, self.batches_per_epoch)
        share = self.batch_size // world
        picked = self._epoch_order(epoch)[index, rank * share : (rank + 1) * share]
        parts, positions = [], []
        for shard_id in np.unique(picked[:, 0]):
            where = np.flatnonzero(picked[:, 0] == shard_id)
            parts.append(self.dataset.load_rows(int(shard_id), picked[where, 1]))
            positions.append(where)
        back = torch.as_tensor(np.argsort(np.concatenate(positions)), dtype=torch.long)
        merged = Batch.concat(parts)
        return merged.rows(back)


class ShardWriter:
    """Append samples to a dataset directory, written as shards of at most ``shard_size`` samples and
    ``shard_bytes`` bytes (at least one sample); that is also all the writer holds in memory.

    Resumable: opening a directory that already holds shards continues the numbering, checks that
    ``info`` and shapes match, and ``has(prompt_index, seed)`` tells a collector what to skip; a
    temporary file left by a killed writer is removed. So a pair is known by its folder (one latent size, one
    ``info``: model, schedule, guidance, seeds) and, in it, by (prompt, seed); ``item_shapes`` and
    ``stored_text`` let a collector check the rest of what makes a pair (the latent size it draws, the
    embedding its text encoder gives) before it computes anything. A folder that holds size folders (a bucketed
    dataset) is refused: shards of its own would hide them from ShardDataset.
    Use as a context manager (or call ``close()``) so the last partial shard is written.
    """

    def __init__(
        self, directory: str | os.PathLike, info: DatasetInfo, shard_size: int = 1024, shard_bytes: int = SHARD_BYTES
    ) -> None:
        if shard_size < 1 or shard_bytes < 1:
            raise DatasetError(f"shard_size and shard_bytes must be positive, got {shard_size} and {shard_bytes}")
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DatasetError(f"cannot create the dataset folder {str(self.directory)[:300]}: {err.strerror}") from None
        self.info, self.shard_size, self.shard_bytes = info, shard_size, shard_bytes
        self._buffer: list[Batch] = []
        self._prompts: dict[int, str] = {}
        self._pairs: set[tuple[int, int]] = set()
        self._next_shard = 0
        self.item_shapes: dict[str, tuple[int, ...]] | None = None
        self._stored: ShardDataset | None = None
        self._first_rows: dict[int, tuple[int, int]] | None = None
        existing = shard_paths(self.directory)
        buckets = [] if existing else sorted(sub.name for sub in self.directory.iterdir() if sub.is_dir() and shard_paths(sub))
        if buckets:
            raise DatasetError(
                f"{self.directory} holds size folders ({listing(buckets)}) with shards: it is a "
                f"dataset of aspect-ratio buckets. Write into one of them (one latent size each) or a new one next to "
                f"them, not into this folder (shards of its own would hide them from training)"
            )
        for stale in (path for pattern in TEMP_GLOBS for path in self.directory.glob(pattern)):
            stale.unlink(missing_ok=True)
        if existing:
            dataset = ShardDataset(self.directory)
            if dataset.info != info:
                old_seeds = dataset.info.seed_scheme != info.seed_scheme
                differ = "; ".join(
                    f"{key} {quoted(there, 60)} there, {quoted(here, 60)} here"
                    for key, there, here in _differences(asdict(dataset.info), asdict(info))
                )
                raise DatasetError(
                    f"{self.directory} already holds shards made otherwise ({differ}); refusing to "
                    f"append these samples. Use a new directory"
                    + (" (its seeds were made another way, e.g. the same seeds for every prompt)." if old_seeds else ".")
                )
            self.item_shapes, self._pairs = dataset.item_shapes, dataset.pairs()
            self._stored = dataset
            self._next_shard = int(SHARD_NAME.fullmatch(existing[-1].name).group(1)) + 1

    def has(self, prompt_index: int, seed: int) -> bool:
        """Whether the sample for (prompt, seed) is already written or buffered."""
        return (int(prompt_index), int(seed)) in self._pairs

    @property
    def stored_prompts(self) -> dict[int, str]:
        """Prompt index -> text of the prompts the folder held when the writer opened it (where texts were given)."""
        return self._stored.prompts() if self._stored is not None else {}

    def stored_text(self, prompt_index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(text [T,D], text_mask [T]) of the prompt's first sample in the folder as the writer opened it, or None."""
        if self._stored is None:
            return None
        if self._first_rows is None:
            self._first_rows = {}
            for shard_id, shard in enumerate(self._stored.shards):
                for row, index in enumerate(shard.prompt_index.tolist()):
                    self._first_rows.setdefault(index, (shard_id, row))
        where = self._first_rows.get(int(prompt_index))
        if where is None:
            return None
        batch = self._stored.load_rows(where[0], np.array([where[1]]))
        return batch.text[0], batch.text_mask[0]

    @property
    def pending(self) -> int:
        return sum(len(batch) for batch in self._buffer)

    def append(
        self,
        text: torch.Tensor,
        noise: torch.Tensor,
        prompt_index: torch.Tensor | list[int],
        seed: torch.Tensor | list[int],
        text_mask: torch.Tensor | None = None,
        prompts: dict[int, str] | None = None,
    ) -> None:
        """Add a batch: text [B,T,D], noise [B,C,H,W] (video: [B,C,T,H,W]), prompt_index [B], seed [B], text_mask
        [B,T] (1 = token).

        ``prompts`` optionally maps prompt index -> prompt text.
        """
        prompt_index = torch.as_tensor(prompt_index, dtype=torch.int64).reshape(-1)
        seed = torch.as_tensor(seed, dtype=torch.int64).reshape(-1)
        size = noise.shape[0]
        if text.ndim != 3 or noise.ndim not in (4, 5) or text.shape[0] != size or len(prompt_index) != size or len(seed) != size:
            raise DatasetError(
                f"append expects text [B,T,D], noise [B,C,H,W] or [B,C,T,H,W], prompt_index [B], seed [B]; got "
                f"{list(text.shape)}, {list(noise.shape)}, {list(prompt_index.shape)}, {list(seed.shape)}"
            )
        if text_mask is None:
            text_mask = torch.ones(text.shape[:2], dtype=torch.bool)
        if tuple(text_mask.shape) != tuple(text.shape[:2]):
            raise DatasetError(f"text_mask has shape {list(text_mask.shape)}; expected {list(text.shape[:2])}")
        shapes = {"text": tuple(text.shape[1:]), "noise": tuple(noise.shape[1:])}
        if self.item_shapes is None:
            self.item_shapes = shapes
        elif shapes != self.item_shapes:
            raise DatasetError(f"sample shapes {shapes} differ from this dataset's {self.item_shapes}")
        if not torch.isfinite(noise).all() or not torch.isfinite(text).all():
            raise DatasetError("append got NaN or infinite values; refusing to write them")
        self._buffer.append(
            Batch(text.detach().float().cpu(), text_mask.detach().bool().cpu(), noise.detach().float().cpu(), prompt_index, seed)
        )
        self._pairs.update(zip(prompt_index.tolist(), seed.tolist()))
        self._prompts.update({int(k): str(v) for k, v in (prompts or {}).items()})
        while self.pending >= self.capacity:
            self._write(self.capacity)

    @property
    def capacity(self) -> int:
        """Samples per full shard: ``shard_size``, fewer when they would exceed ``shard_bytes``."""
        if self.item_shapes is None:
            return self.shard_size
        sample_bytes = 5 * math.prod(self.item_shapes["text"]) + 4 * math.prod(self.item_shapes["noise"]) + 16
        return max(1, min(self.shard_size, self.shard_bytes // sample_bytes))

    def _write(self, count: int) -> None:
        merged = Batch.concat(self._buffer)
        head, rest = merged.rows(slice(None, count)), merged.rows(slice(count, None))
        self._buffer = [rest] if len(rest) else []
        shard_prompts = {p: self._prompts[p] for p in set(head.prompt_index.tolist()) if p in self._prompts}
        tensors = {
            "text": head.text.contiguous(),
            "text_mask": head.text_mask.to(torch.uint8).contiguous(),
            "noise": head.noise.contiguous(),
            "prompt_index": head.prompt_index.contiguous(),
            "seed": head.seed.contiguous(),
        }
        metadata = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "info": self.info.to_json(),
            "prompts": json.dumps(shard_prompts, sort_keys=True),
        }
        path = self.directory / f"shard-{self._next_shard:05d}.safetensors"
        # readers never see a half-written shard; normal file permissions (not safetensors' 0600)
        write_atomically(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))
        self._next_shard += 1

    def flush(self) -> None:
        """Write buffered samples as a (possibly short) shard now."""
        if self.pending:
            self._write(self.pending)

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _differences(there: dict, here: dict, prefix: str = "") -> Iterator[tuple[str, object, object]]:
    """(name, value there, value here) of every field that differs, naming the differing keys of dict fields."""
    for key in [*here, *(key for key in there if key not in here)]:
        old, new = there.get(key), here.get(key)
        if isinstance(old, dict) and isinstance(new, dict) and old and new:
            yield from _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            yield f"{prefix}{key}", old, new


def inspect_dataset(directory: str | os.PathLike, validation_fraction: float = 0.1, seed_fraction: float = 0.0) -> dict:
    """Counts, shapes, split sizes, distinct starting seeds, the longest text and per-channel mean/std of the noise
    (streamed, float64; empty lists for a dataset without samples). ``warnings``: what makes the dataset unfit for
    training (noises repeated across prompts, no samples at all)."""
    dataset = ShardDataset(directory)
    channels = dataset.item_shapes["noise"][0]
    total = np.zeros(channels)
    squares = np.zeros(channels)
    values = 0
    for batch in dataset.iterate(batch_size=4096):
        noise = batch.noise.double().transpose(0, 1).flatten(1)  # [C, every value of the channel]
        total += noise.sum(dim=1).numpy()
        squares += (noise**2).sum(dim=1).numpy()
        values += noise.shape[1]
    mean = total / max(values, 1)
    std = np.sqrt(np.maximum(squares / max(values, 1) - mean**2, 0.0))
    split_sizes = {split: int(sum(len(r) for r in dataset.rows(split, validation_fraction, seed_fraction))) for split in SPLITS}
    prompts = dataset.prompt_indices()
    split_prompts = {"validation": int(sum(validation_prompt(int(p), validation_fraction) for p in prompts))}
    split_prompts["train"] = len(prompts) - split_prompts["validation"]
    seeds = dataset.seed_counts()
    warnings = [repeated_noises_message(seeds)] if seeds["shared_seeds"] else []
    if values == 0:
        warnings.append("the dataset is empty: its shards hold no samples, so there is nothing to train on")
    return {
        "directory": str(dataset.directory),
        "shards": len(dataset.shards),
        "samples": len(dataset),
        "prompts": len(prompts),
        "text_shape": dataset.item_shapes["text"],
        "text_tokens": dataset.text_tokens,
        "noise_shape": dataset.item_shapes["noise"],
        "noise_shapes": dataset.noise_shapes,
        "split_samples": split_sizes,
        "split_prompts": split_prompts,
        "channel_mean": mean.tolist() if values else [],
        "channel_std": std.tolist() if values else [],
        "info": dataset.info,
        "seeds": seeds,
        "warnings": warnings,
    }


def repeated_noises_message(seeds: dict[str, int]) -> str:
    """What :meth:`ShardDataset.seed_counts` means when seeds repeat across prompts, and what to do."""
    return (
        f"{seeds['shared_seeds']} of {seeds['distinct_seeds']} starting seeds are used by more than one prompt "
        f"({seeds['samples_with_shared_seed']} samples): the same noises repeat across prompts, so a prior can "
        f"memorise them instead of learning the prompt. Collect again with distinct seeds per (prompt, j) (the "
        f"current collectors do this)."
    )


@dataclass(frozen=True)
class PromptSet:
    """Prompts: text [P,T,D] float, text_mask [P,T] bool, index [P] int64, optional prompt strings. Texts of
    different lengths are padded to the longest with mask 0 (:func:`pad_text`)."""

    text: torch.Tensor
    text_mask: torch.Tensor
    index: torch.Tensor
    strings: tuple[str, ...] = ()

    def __len__(self) -> int:
        return self.text.shape[0]

    def select(self, rows: Sequence[int] | torch.Tensor) -> "PromptSet":
        rows = torch.as_tensor(rows, dtype=torch.long)
        strings = tuple(self.strings[int(r)] for r in rows) if self.strings else ()
        return PromptSet(self.text[rows], self.text_mask[rows], self.index[rows], strings)

    @classmethod
    def from_dataset(cls, dataset: ShardDataset, split: str | None = "train", validation_fraction: float = 0.1) -> "PromptSet":
        """One embedding per prompt (its first sample): the prompts of ``split`` ('train': not held out by
        the prompt hash, 'validation': held out, None: all), whatever their noises."""
        first: dict[int, tuple[int, int]] = {}  # prompt -> (shard, row) of its first sample
        for shard_id, shard in enumerate(dataset.shards):
            for row, index in enumerate(shard.prompt_index.tolist()):
                if split is None or (split == "validation") == validation_prompt(index, validation_fraction):
                    first.setdefault(index, (shard_id, row))
        if not first:
            raise DatasetError(f"the {split} split of {dataset.directory} holds no prompts")
        order = sorted(first)
        rows = {}  # read only those rows, one shard at a time
        for shard_id in sorted({shard_id for shard_id, _ in first.values()}):
            wanted = [i for i in order if first[i][0] == shard_id]
            batch = dataset.load_rows(shard_id, np.array([first[i][1] for i in wanted]))
            rows.update({i: (batch.text[k], batch.text_mask[k]) for k, i in enumerate(wanted)})
        names = dataset.prompts()
        strings = tuple(names.get(i, "") for i in order) if names else ()
        text, text_mask = pad_text([rows[i][0][None] for i in order], [rows[i][1][None] for i in order])
        return cls(text, text_mask, torch.tensor(order, dtype=torch.long), strings)
