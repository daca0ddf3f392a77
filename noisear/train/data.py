"""Dataset of (prompt embedding, target noise) pairs stored as safetensors shards.

A shard ``shard-00012.safetensors`` holds N samples:

=============== ================ ===============================================================
tensor          shape / dtype    meaning
=============== ================ ===============================================================
``text``        [N, T, D] float  prompt embedding the prior is conditioned on
``text_mask``   [N, T] uint8     1 = real token, 0 = padding
``noise``       [N, C, H, W]     target noise (e.g. golden noise) in unit-variance latent space
``prompt_index`` [N] int64       which prompt; the train/validation split is made on this
``seed``        [N] int64        seed of the Gaussian noise the target was made from
=============== ================ ===============================================================

and JSON metadata: ``format`` / ``format_version``, ``info`` (a :class:`DatasetInfo`: source
model, schedule, sampling steps, guidance, free-form extras) and ``prompts`` (prompt index ->
prompt text, for the prompts in that shard). T, D, C, H, W and ``info`` are the same in every
shard of a directory.

The writer appends batches and flushes full shards atomically, so a collector that is killed
loses at most the unflushed samples and can ask which (prompt, seed) pairs already exist. The
reader opens one shard at a time (memory is bounded by one shard plus one batch) and splits
train/validation by a hash of the prompt index, never by sample.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT_NAME = "noisear-dataset"
FORMAT_VERSION = "1"
SHARD_GLOB = "shard-*.safetensors"
TENSOR_NAMES = ("text", "text_mask", "noise", "prompt_index", "seed")
SPLITS = ("train", "validation")


class DatasetError(ValueError):
    """A dataset directory or a batch that does not fit the shard format. The message says what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    """How the target noises were made. Stored in every shard; must match across a directory."""

    source_model: str = "unknown"
    prediction: str = "unknown"      # epsilon, v or flow
    schedule: str = "unknown"        # e.g. "sdxl scaled_linear, leading spacing"
    steps: int = 0                   # sampling steps the noise is meant for
    guidance_denoise: float = 0.0    # golden noise: w_l
    guidance_invert: float = 0.0     # golden noise: w_w
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DatasetInfo":
        return cls(**json.loads(text))


@dataclass
class Batch:
    """A batch of samples. text [B,T,D] float32, text_mask [B,T] bool, noise [B,C,H,W] float32,
    prompt_index [B] int64, seed [B] int64."""

    text: torch.Tensor
    text_mask: torch.Tensor
    noise: torch.Tensor
    prompt_index: torch.Tensor
    seed: torch.Tensor

    def __len__(self) -> int:
        return self.noise.shape[0]

    def to(self, device: str | torch.device) -> "Batch":
        return Batch(*(getattr(self, name).to(device) for name in TENSOR_NAMES))

    @staticmethod
    def concat(parts: list["Batch"]) -> "Batch":
        return Batch(*(torch.cat([getattr(part, name) for part in parts]) for name in TENSOR_NAMES))


def validation_prompt(prompt_index: int, fraction: float, salt: str = "noisear") -> bool:
    """Deterministic split: True when the prompt belongs to the validation set (about ``fraction``)."""
    digest = hashlib.sha256(f"{salt}:{int(prompt_index)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < fraction


def _shard_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except Exception as err:
        raise DatasetError(f"{path.name} is not a readable safetensors shard (truncated or corrupt?): {err}") from None
    if metadata.get("format") != FORMAT_NAME:
        raise DatasetError(f"{path.name} is not a NoiseAR dataset shard (metadata format={metadata.get('format')!r})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise DatasetError(f"{path.name} has dataset format version {metadata.get('format_version')!r}; "
                           f"this library reads version {FORMAT_VERSION}")
    missing = [name for name in TENSOR_NAMES if name not in shapes]
    if missing:
        raise DatasetError(f"{path.name} lacks tensors {missing}; a shard holds {list(TENSOR_NAMES)}")
    return metadata, shapes


def _read_tensors(path: Path, names: tuple[str, ...] = TENSOR_NAMES) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return {name: handle.get_tensor(name) for name in names}


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    count: int
    prompt_index: np.ndarray   # [count] int64
    seed: np.ndarray           # [count] int64
    prompts: dict[int, str]
    noise_shape: tuple[int, ...] = ()  # (C, H, W)


class ShardDataset:
    """All shards of a directory, read lazily.

    ``item_shapes`` = {"text": (T, D), "noise": (C, H, W)} (of the first shard); ``info`` the shared
    DatasetInfo. Only the small per-sample columns (prompt index, seed) are held in memory.

    Aspect-ratio buckets: a directory without shards of its own whose subdirectories hold shards
    (one latent size each, e.g. ``1024x1024/`` and ``1216x832/``) is one dataset whose noise H, W
    differ between buckets (``noise_shapes``); text shape, channels and info must agree.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        paths = sorted(self.directory.glob(SHARD_GLOB)) or sorted(self.directory.glob(f"*/{SHARD_GLOB}"))
        if not paths:
            raise DatasetError(f"no {SHARD_GLOB} files in {self.directory} or its subdirectories; write them "
                               f"with ShardWriter (or a collector) first")
        self.shards: list[ShardInfo] = []
        self.info: DatasetInfo | None = None
        self.item_shapes: dict[str, tuple[int, ...]] = {}
        for path in paths:
            metadata, shapes = _shard_header(path)
            info = DatasetInfo.from_json(metadata["info"])
            item_shapes = {"text": shapes["text"][1:], "noise": shapes["noise"][1:]}
            bucket_shape = next((s.noise_shape for s in self.shards if s.path.parent == path.parent),
                                item_shapes["noise"])
            if self.info is None:
                self.info, self.item_shapes = info, item_shapes
            elif (info != self.info or item_shapes["text"] != self.item_shapes["text"]
                  or item_shapes["noise"][0] != self.item_shapes["noise"][0] or item_shapes["noise"] != bucket_shape):
                raise DatasetError(f"{path.name} does not match the other shards of {self.directory} "
                                   f"(info or tensor shapes differ); keep one dataset per directory (one latent "
                                   f"size per bucket subdirectory)")
            columns = _read_tensors(path, ("prompt_index", "seed"))
            prompts = {int(key): value for key, value in json.loads(metadata.get("prompts", "{}")).items()}
            self.shards.append(ShardInfo(path, shapes["noise"][0], columns["prompt_index"].numpy(),
                                         columns["seed"].numpy(), prompts, item_shapes["noise"]))

    @property
    def noise_shapes(self) -> list[tuple[int, ...]]:
        """The distinct (C, H, W) of the buckets, sorted (one entry without buckets)."""
        return sorted({shard.noise_shape for shard in self.shards})

    def __len__(self) -> int:
        return sum(shard.count for shard in self.shards)

    def prompt_indices(self) -> np.ndarray:
        """Sorted unique prompt indices."""
        return np.unique(np.concatenate([shard.prompt_index for shard in self.shards]))

    def prompts(self) -> dict[int, str]:
        """Prompt index -> prompt text, where the writer was given texts."""
        return {key: value for shard in self.shards for key, value in shard.prompts.items()}

    def pairs(self) -> set[tuple[int, int]]:
        """The (prompt index, seed) pairs present."""
        return {(int(p), int(s)) for shard in self.shards for p, s in zip(shard.prompt_index, shard.seed)}

    def rows(self, split: str | None, validation_fraction: float) -> list[np.ndarray]:
        """Per shard, the row numbers that belong to ``split`` ('train', 'validation' or None = all)."""
        if split not in (*SPLITS, None):
            raise DatasetError(f"split must be one of {SPLITS} or None, got {split!r}")
        result = []
        for shard in self.shards:
            if split is None:
                result.append(np.arange(shard.count))
                continue
            unique = np.unique(shard.prompt_index)
            held_out = {int(p) for p in unique if validation_prompt(int(p), validation_fraction)}
            is_val = np.fromiter((int(p) in held_out for p in shard.prompt_index), bool, shard.count)
            result.append(np.flatnonzero(is_val if split == "validation" else ~is_val))
        return result

    def load_rows(self, shard_id: int, rows: np.ndarray) -> Batch:
        """Read one shard and take ``rows`` from it."""
        tensors = _read_tensors(self.shards[shard_id].path)
        index = torch.as_tensor(rows, dtype=torch.long)
        return Batch(tensors["text"][index].float(), tensors["text_mask"][index].bool(),
                     tensors["noise"][index].float(), tensors["prompt_index"][index].long(),
                     tensors["seed"][index].long())

    def iterate(self, split: str | None = None, validation_fraction: float = 0.1,
                batch_size: int = 64) -> Iterator[Batch]:
        """Stream the split in file order, one shard open at a time; the last batch may be short."""
        for shard_id, rows in enumerate(self.rows(split, validation_fraction)):
            if len(rows) == 0:
                continue
            shard = self.load_rows(shard_id, rows)
            for start in range(0, len(shard), batch_size):
                yield Batch(*(getattr(shard, name)[start:start + batch_size] for name in TENSOR_NAMES))


class BatchPlan:
    """Which (shard, row) pairs form global batch ``step``: a deterministic function of (seed, step).

    Each epoch visits the training split once: shards in a seeded random order, rows shuffled
    within each shard (so reading stays one shard at a time); the tail that does not fill a
    global batch is dropped. With aspect-ratio buckets this is done per bucket (noise shape), so a
    batch never mixes sizes, and the epoch's batches of all buckets are then shuffled together.
    Rank ``r`` of ``world`` takes rows [r*B/world, (r+1)*B/world) of each global batch,
    so any number of processes sees the same global batches.
    """

    def __init__(self, dataset: ShardDataset, batch_size: int, seed: int, validation_fraction: float,
                 split: str = "train") -> None:
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rows = dataset.rows(split, validation_fraction)
        total = sum(len(rows) for rows in self.rows)
        self.buckets = [[s for s, shard in enumerate(dataset.shards) if shard.noise_shape == shape]
                        for shape in dataset.noise_shapes]
        self.batches_per_epoch = sum(sum(len(self.rows[s]) for s in bucket) // batch_size for bucket in self.buckets)
        if self.batches_per_epoch == 0:
            raise DatasetError(f"the {split} split holds {total} samples, fewer than one global batch of "
                               f"{batch_size}; lower the batch size or add data")
        self._epoch, self._order = -1, np.empty((0, 2), dtype=np.int64)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """[samples, 2] (shard, row) for ``epoch``."""
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            parts = [np.stack([np.full(len(self.rows[s]), s), rng.permutation(self.rows[s])], axis=1)
                     for s in rng.permutation(len(self.rows)) if len(self.rows[s])]
            order = np.concatenate(parts)
            if len(self.buckets) > 1:  # whole batches per bucket, then the batches shuffled together
                bucket_of = np.empty(len(self.rows), dtype=np.int64)
                for b, bucket in enumerate(self.buckets):
                    bucket_of[bucket] = b
                batches = []
                for b in range(len(self.buckets)):
                    rows = order[bucket_of[order[:, 0]] == b]
                    full = len(rows) // self.batch_size * self.batch_size
                    if full:
                        batches.extend(np.split(rows[:full], full // self.batch_size))
                order = np.concatenate([batches[i] for i in rng.permutation(len(batches))])
            self._epoch, self._order = epoch, order
        return self._order

    def batch(self, step: int, rank: int = 0, world: int = 1) -> Batch:
        """This rank's share of global batch ``step`` (0-based, counted over all epochs)."""
        if self.batch_size % world:
            raise DatasetError(f"global batch {self.batch_size} is not divisible by {world} processes")
        epoch, index = divmod(step, self.batches_per_epoch)
        share = self.batch_size // world
        start = index * self.batch_size + rank * share
        picked = self._epoch_order(epoch)[start:start + share]
        parts = []
        for shard_id in dict.fromkeys(picked[:, 0].tolist()):  # shards in order of appearance
            rows = picked[picked[:, 0] == shard_id, 1]
            parts.append(self.dataset.load_rows(shard_id, rows))
        return Batch.concat(parts)


class ShardWriter:
    """Append samples to a dataset directory; every ``shard_size`` samples become one shard file.

    Resumable: opening a directory that already holds shards continues the numbering, checks that
    ``info`` and shapes match, and ``has(prompt_index, seed)`` tells a collector what to skip.
    Use as a context manager (or call ``close()``) so the last partial shard is written.
    """

    def __init__(self, directory: str | os.PathLike, info: DatasetInfo, shard_size: int = 1024) -> None:
        if shard_size < 1:
            raise DatasetError(f"shard_size must be positive, got {shard_size}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.info, self.shard_size = info, shard_size
        self._buffer: list[Batch] = []
        self._prompts: dict[int, str] = {}
        self._pairs: set[tuple[int, int]] = set()
        self._next_shard = 0
        self.item_shapes: dict[str, tuple[int, ...]] | None = None
        existing = sorted(self.directory.glob(SHARD_GLOB))
        if existing:
            dataset = ShardDataset(self.directory)
            if dataset.info != info:
                raise DatasetError(f"{self.directory} already holds shards made with {dataset.info}; "
                                   f"refusing to append samples made with {info}. Use a new directory.")
            self.item_shapes, self._pairs = dataset.item_shapes, dataset.pairs()
            self._next_shard = int(existing[-1].stem.split("-")[1]) + 1

    def has(self, prompt_index: int, seed: int) -> bool:
        """Whether the sample for (prompt, seed) is already written or buffered."""
        return (int(prompt_index), int(seed)) in self._pairs

    @property
    def pending(self) -> int:
        return sum(len(batch) for batch in self._buffer)

    def append(self, text: torch.Tensor, noise: torch.Tensor, prompt_index: torch.Tensor | list[int],
               seed: torch.Tensor | list[int], text_mask: torch.Tensor | None = None,
               prompts: dict[int, str] | None = None) -> None:
        """Add a batch: text [B,T,D], noise [B,C,H,W], prompt_index [B], seed [B], text_mask [B,T] (1 = token).

        ``prompts`` optionally maps prompt index -> prompt text.
        """
        prompt_index = torch.as_tensor(prompt_index, dtype=torch.int64).reshape(-1)
        seed = torch.as_tensor(seed, dtype=torch.int64).reshape(-1)
        size = noise.shape[0]
        if text.ndim != 3 or noise.ndim != 4 or text.shape[0] != size or len(prompt_index) != size or len(seed) != size:
            raise DatasetError(f"append expects text [B,T,D], noise [B,C,H,W], prompt_index [B], seed [B]; got "
                               f"{list(text.shape)}, {list(noise.shape)}, {list(prompt_index.shape)}, {list(seed.shape)}")
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
        self._buffer.append(Batch(text.detach().float().cpu(), text_mask.detach().bool().cpu(),
                                  noise.detach().float().cpu(), prompt_index, seed))
        self._pairs.update(zip(prompt_index.tolist(), seed.tolist()))
        self._prompts.update({int(k): str(v) for k, v in (prompts or {}).items()})
        while self.pending >= self.shard_size:
            self._write(self.shard_size)

    def _write(self, count: int) -> None:
        merged = Batch.concat(self._buffer)
        head = Batch(*(getattr(merged, name)[:count] for name in TENSOR_NAMES))
        rest = Batch(*(getattr(merged, name)[count:] for name in TENSOR_NAMES))
        self._buffer = [rest] if len(rest) else []
        shard_prompts = {p: self._prompts[p] for p in set(head.prompt_index.tolist()) if p in self._prompts}
        tensors = {"text": head.text.contiguous(), "text_mask": head.text_mask.to(torch.uint8).contiguous(),
                   "noise": head.noise.contiguous(), "prompt_index": head.prompt_index.contiguous(),
                   "seed": head.seed.contiguous()}
        metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "info": self.info.to_json(),
                    "prompts": json.dumps(shard_prompts, sort_keys=True)}
        path = self.directory / f"shard-{self._next_shard:05d}.safetensors"
        temporary = path.with_suffix(".tmp")
        save_file(tensors, str(temporary), metadata=metadata)
        os.replace(temporary, path)  # a killed writer never leaves a half-written shard
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


def inspect_dataset(directory: str | os.PathLike, validation_fraction: float = 0.1) -> dict:
    """Counts, shapes, split sizes and per-channel mean/std of the noise (streamed, float64)."""
    dataset = ShardDataset(directory)
    channels = dataset.item_shapes["noise"][0]
    total = np.zeros(channels)
    squares = np.zeros(channels)
    values = 0
    for batch in dataset.iterate(batch_size=4096):
        noise = batch.noise.double()
        total += noise.sum(dim=(0, 2, 3)).numpy()
        squares += (noise ** 2).sum(dim=(0, 2, 3)).numpy()
        values += noise[:, 0].numel()
    mean = total / values
    std = np.sqrt(np.maximum(squares / values - mean ** 2, 0.0))
    split_sizes = {split: int(sum(len(r) for r in dataset.rows(split, validation_fraction))) for split in SPLITS}
    prompts = dataset.prompt_indices()
    split_prompts = {"validation": int(sum(validation_prompt(int(p), validation_fraction) for p in prompts))}
    split_prompts["train"] = len(prompts) - split_prompts["validation"]
    return {"directory": str(dataset.directory), "shards": len(dataset.shards), "samples": len(dataset),
            "prompts": len(prompts), "text_shape": dataset.item_shapes["text"],
            "noise_shape": dataset.item_shapes["noise"], "split_samples": split_sizes,
            "split_prompts": split_prompts, "channel_mean": mean.tolist(), "channel_std": std.tolist(),
            "info": dataset.info}
