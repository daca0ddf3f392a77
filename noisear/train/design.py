"""The prior `noisear train` builds for a dataset, and the block that says what was chosen and why.

:func:`design_prior` takes a dataset and the settings given (NoiseARConfig fields; the command's options) and
chooses the rest from the model family (noisear.families) and the data:

- **family**: ``family`` (a key, or "none" for a prior of no family), else the dataset's ``DatasetInfo.family``
  (the ComfyUI collector records it); both given and different: refused, naming both. Neither: the one family
  whose latents have the data's channels and rank and whose text has the data's width, else refused (SD3, Flux
  and Chroma share 16-channel latents and 4096-wide text).
- **patch**: the family's ``patch_size`` (``patch_frames`` for video) in latent cells, chosen so a token holds
  768 to 4,096 values; for no family the largest power of two whose token holds at most
  ``TOKEN_VALUES_TARGET``. A bucket that is not whole patches is trained on its top-left whole patches
  (ShardDataset.in_whole_patches: Qwen-Image's 1328 x 1328 px, 166 x 166 cells, on 160 x 160), as the sampler
  places patches from the top-left corner and pads and crops the rest; the block says which buckets are cut and by
  how much. A bucket less than one patch on a side is refused, and so is a token of more than ``TOKEN_VALUES_MAX``
  values: the patch encoder (K x hidden) and each output head (2*d_model x K) grow with K, a 32 x 32-cell patch of
  a 64-channel latent is 65,536 values.
- **positions**: "2d" for image data, "3d" for video data (a bucket of more than one frame); a video family's
  one-frame data gives an image prior of that family (its noise [C, 1, H, W] is read as [C, H, W]).
- **window** (``window_frames``): the largest grid side (frame count) over the buckets as trained (cut to whole
  patches), so training sees whole windows and larger latents decode with a sliding window at a cost linear in
  their size.
- **text**: the width from the data; ``text_tokens`` the family's limit or the data's longest text, whichever is
  larger (no family: the data's longest).
- **patch encoder**: hidden ``max(2*Pt*P*P, K // 2)`` for K values per token. The published 2*P*P is K/2 for 4
  channels, but K/8 for 16 channels and K/32 for 64: a bottleneck before the network sees the patch.
- the size trained at (``latent_*``): the largest bucket as trained; the network widths: NoiseARConfig's defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from ..config import LIMITS, NoiseARConfig
from ..families import FAMILIES, Family
from .data import DatasetError, ShardDataset

TOKEN_VALUES_MAX = 16384  # values per patch token above which a prior is refused (see the module doc)
TOKEN_VALUES_TARGET = 4096  # a prior of no family: the largest power-of-two patch whose token holds at most this
NO_FAMILY = "none"  # the family option's value for a prior of no family
FROM_DATA = ("channels", "latent_height", "latent_width", "latent_frames", "text_dim")  # never given: read from the data
# how each chosen field's default is made, for the command's help
CHOSEN = {
    "family": "the dataset's family, else the one family its shapes fit",
    "patch_size": "the family's patch (no family: at most 4,096 values per token)",
    "patch_frames": "the family's (video)",
    "positions": "2d for image data, 3d for video data",
    "window": "the largest bucket's longest grid side",
    "window_frames": "the largest bucket's frame count in patches (video)",
    "text_tokens": "the family's limit or the data's longest text, whichever is larger",
    "patch_hidden_dim": "max(2*Pt*P*P, K/2) for K values per token",
}


@dataclass(frozen=True)
class PriorDesign:
    """A prior's config and, per choice, why it is what it is (``reasons``: field -> words)."""

    config: NoiseARConfig
    reasons: dict[str, str]
    cropped: str = ""  # the buckets trained on their top-left whole patches (:func:`describe_crops`), or ""

    def describe(self) -> str:
        """The block `noisear train` prints before training."""
        return describe_prior(self.config, self.reasons, cropped=self.cropped)


def describe_prior(config: NoiseARConfig, reasons: dict[str, str], origin: str = "", cropped: str = "") -> str:
    """A prior's family, patch, positions, window, text, encoder, network and size, one line each, with the reason
    of each choice (``reasons``: field -> words); ``origin`` (e.g. "from --init PATH") heads the block; ``cropped``
    (:func:`describe_crops`), when not empty, follows the patch."""
    c = config

    def why(*names: str) -> str:
        said = list(dict.fromkeys(reasons[name] for name in names if reasons.get(name)))
        return f" ({'; '.join(said)})" if said else ""

    family = FAMILIES.get(c.family_key)
    patch = " x ".join(map(str, c.patch))
    video = "video (frames, rows, columns)" if c.video else "2-D (rows, columns): one prior for every size"
    positions = {"table": "the published 1-D table: one size", "2d": video, "3d": video}[c.positions]
    if c.positions == "table":
        window = "the native grid; other sizes by sliding windows of it"
    else:
        frames = f", {c.window_frames} patch frames" if c.video and c.window_frames else ""
        window = f"{c.window} patches a side{frames}" if c.window else "unbounded (one sequence at any size)"
        window += why("window", "window_frames")
    lines = {
        "family": (f"{c.family_key}: {family.title}" if family else "none (the nodes cannot check it against a MODEL)")
        + why("family"),
        "patch": f"{patch} cells = {c.patch_dim:,} values per token" + why("patch_size", "patch_frames"),
        "cropped": cropped,
        "positions": positions + why("positions"),
        "window": window,
        "text": f"{c.text_dim} wide, {f'up to {c.text_tokens} tokens' if c.text_tokens else 'any length'}" + why("text_tokens"),
        "encoder": f"hidden {c.patch_hidden}" + why("patch_hidden_dim"),
        "network": f"d_model {c.d_model}, d_ff {c.d_ff}, {c.n_layers} layer{'s' * (c.n_layers != 1)}, {c.n_heads} "
        f"head{'s' * (c.n_heads != 1)}, dropout {c.dropout:g}" + why("d_model", "d_ff", "n_layers", "n_heads", "dropout"),
        "trained at": cells(c.latent_size) + why("latent_height"),
        "parameters": f"{c.num_values:,}",
    }
    axes = "T x H x W" if c.video else "H x W"
    heading = f"{origin}; sizes" if origin else "sizes"
    return f"prior ({heading} in latent cells, {axes}):\n" + "\n".join(
        f"  {name:<11} {text}" for name, text in lines.items() if text
    )


def describe_crops(dataset: ShardDataset) -> str:
    """The buckets of ``dataset`` (read in whole patches: ShardDataset.in_whole_patches) that lose cells, e.g.
    '166 x 166 cells trained on their top-left 160 x 160 (1,956 cells, 7.1%, left out): the sampler pads ...', or ""."""
    axes = len(dataset.patch)
    cut = [(shape[-axes:], dataset.read_shape(shape)[-axes:]) for shape in dataset.noise_shapes] if axes else []
    said = [
        f"{cells(stored)} cells trained on their top-left {cells(read)} ({math.prod(stored) - math.prod(read):,} cells, "
        f"{1 - math.prod(read) / math.prod(stored):.1%}, left out)"
        for stored, read in cut
        if stored != read
    ]
    if not said:
        return ""
    return "; ".join(said) + ": the sampler pads a latent to whole patches at the bottom and right and crops them back"


def cells(size: tuple[int, ...]) -> str:
    """A size in cells, '96 x 128' (H x W) or '3 x 8 x 16' (T x H x W)."""
    return " x ".join(map(str, size))


def dataset_family(dataset: ShardDataset, family: str | None) -> tuple[Family | None, str]:
    """The family a prior of ``dataset`` serves and why: ``family`` (a key or "none"), else the dataset's, else the one
    its shapes fit. A family that does not fit the data (channels, text width, video), or two that differ, are refused."""
    recorded = dataset.info.family
    if family is not None and family != NO_FAMILY and family not in FAMILIES:
        raise DatasetError(f"--family must be one of {', '.join(FAMILIES)} or {NO_FAMILY}, got {family!r}")
    if family is not None and recorded and family != recorded:
        raise DatasetError(
            f"--family {family} names another family than {dataset.directory} records ({recorded}: "
            f"{FAMILIES[recorded].title}); its noise was made by a {FAMILIES[recorded].title} model. Leave --family "
            f"out (or give --family {recorded})"
        )
    if family == NO_FAMILY:
        return None, "given"
    if family is not None or recorded:
        chosen = FAMILIES[family or recorded]
        problem = _unfit(chosen, dataset)
        if problem:
            raise DatasetError(f"{dataset.directory} cannot train a {chosen.title} prior: {problem}")
        return chosen, "given" if family else "from the dataset"
    fitting = [candidate for candidate in FAMILIES.values() if _unfit(candidate, dataset) is None]
    if len(fitting) == 1:
        return fitting[0], "the only family whose latents and text fit the data; the dataset records none"
    shapes = f"noise {', '.join(str(list(shape)) for shape in dataset.noise_shapes)} and text {dataset.text_width} wide"
    fits = f"fit {', '.join(f.key for f in fitting)}" if fitting else "fit no known family"
    raise DatasetError(
        f"{dataset.directory} records no model family (collected before families were recorded, or by your own "
        f"writer), and its {shapes} {fits}. Give --family KEY (one of {', '.join(FAMILIES)}), or --family "
        f"{NO_FAMILY} for a prior of no family (the nodes then cannot check it against the MODEL)"
    )


def _unfit(family: Family, dataset: ShardDataset) -> str | None:
    """Why ``dataset`` is not data of ``family`` (channels, text width, videos for an image family), or None."""
    shapes = dataset.noise_shapes
    if shapes[0][0] != family.channels:
        return f"its noise has {shapes[0][0]} channels, {family.title} latents {family.channels}"
    if dataset.text_width != family.text_dim:
        return f"its text is {dataset.text_width} wide, {family.title} text {family.text_dim}"
    if not family.video and any(len(shape) == 4 and shape[1] > 1 for shape in shapes):
        return f"it holds videos (noise {[list(s) for s in shapes]}), and {family.title} makes images"
    if family.video and len(shapes[0]) == 3:
        return f"its noise is images {list(shapes[0])}; {family.title} noise is [C, T, H, W] (one frame: T = 1)"
    return None


def design_prior(dataset: ShardDataset, family: str | None = None, **given: Any) -> PriorDesign:
    """The config of a new prior for ``dataset`` (see the module doc); ``given``: NoiseARConfig fields set by the
    user, used as they are (refused when they cannot train on the data). DatasetError (or NoiseARConfigError)
    says what does not fit and what to give instead."""
    unknown = sorted(set(given) - {item.name for item in fields(NoiseARConfig)} | set(given) & {"family", *FROM_DATA})
    if unknown:
        raise TypeError(f"design_prior takes no {', '.join(unknown)}: the family is its own argument, sizes come from the data")
    chosen, family_reason = dataset_family(dataset, family)
    reasons = {"family": family_reason, **{name: "given" for name in given}}
    shapes = dataset.noise_shapes
    channels, video_data = shapes[0][0], any(len(shape) == 4 and shape[1] > 1 for shape in shapes)
    positions = given.get("positions", "3d" if video_data else "2d")
    reasons.setdefault("positions", "video data" if video_data else "image data")
    if positions == "3d" and len(shapes[0]) != 4:
        raise DatasetError(f"positions '3d' make a video prior; {dataset.directory} holds images (noise {list(shapes[0])})")
    if positions != "3d" and video_data:
        raise DatasetError(
            f"{dataset.directory} holds videos (noise {[list(s) for s in shapes]}); an image prior (positions "
            f"{positions!r}) cannot model them: leave --positions out (3d for video data)"
        )
    if positions == "table" and len(shapes) > 1:
        raise DatasetError(
            f"positions 'table' (the published 1-D table) model one latent size; {dataset.directory} holds "
            f"{len(shapes)} sizes: leave --positions out (2d)"
        )
    default_patch = chosen.patch_size if chosen else _power_of_two_patch(channels)
    patch = given.get("patch_size", default_patch)
    reasons.setdefault(
        "patch_size",
        f"{chosen.title}'s" if chosen else f"no family: the largest power of 2 of at most {TOKEN_VALUES_TARGET:,} values",
    )
    patch_frames = given.get("patch_frames", chosen.patch_frames if chosen and positions == "3d" else 1)
    read = dataset.in_whole_patches((patch_frames, patch, patch) if positions == "3d" else (patch, patch))
    # (T, H, W) or (H, W) per bucket, as trained: its top-left whole patches
    sizes = [read.read_shape(shape)[1:] if positions == "3d" else read.read_shape(shape)[-2:] for shape in shapes]
    values = channels * patch_frames * patch * patch
    if values > TOKEN_VALUES_MAX:
        smaller = max(p for p in range(1, patch + 1) if channels * patch_frames * p * p <= TOKEN_VALUES_TARGET)
        raise DatasetError(
            f"a {' x '.join(map(str, (patch_frames,) * (positions == '3d') + (patch, patch)))}-cell patch of "
            f"{channels}-channel noise is {values:,} values per token, "
            f"more than {TOKEN_VALUES_MAX:,}: the patch encoder and each output head grow with it. Give a smaller "
            f"--patch-size (e.g. {smaller}: {channels * patch_frames * smaller * smaller:,} values)"
        )

    grids = [tuple(n // p for n, p in zip(size, (patch_frames, patch, patch)[-len(size) :])) for size in sizes]
    largest = max(range(len(sizes)), key=lambda b: (math.prod(sizes[b]), sizes[b]))
    window = window_frames = 0
    if positions != "table":
        widest = max(range(len(grids)), key=lambda b: max(grids[b][-2:]))
        window = given.get("window", max(grids[widest][-2:]))
        reasons.setdefault("window", f"covers the largest bucket, {cells(sizes[widest])} cells")
        longest = max(grid[0] for grid in grids) if positions == "3d" else 0
        window_frames = given.get("window_frames", longest)
        if window and window < max(grids[widest][-2:]) or positions == "3d" and window_frames and window_frames < longest:
            raise DatasetError(
                f"a window of {window} patches a side{f' and {window_frames} patch frames' if positions == '3d' else ''} "
                f"does not hold the bucket {cells(sizes[widest])} ({' x '.join(map(str, grids[widest]))} patches); "
                f"training reads whole windows: leave --window out (or give at least what the largest bucket needs)"
            )
    text_tokens = given.get(
        "text_tokens", min(max(chosen.text_tokens if chosen else 0, dataset.text_tokens), LIMITS.fields["text_tokens"])
    )
    reasons.setdefault(
        "text_tokens",
        (f"{chosen.title}'s limit; " if chosen and text_tokens == chosen.text_tokens else "")
        + f"the data's longest text: {dataset.text_tokens}",
    )
    if text_tokens and text_tokens < dataset.text_tokens:
        raise DatasetError(
            f"--text-tokens {text_tokens} is fewer than the data's longest text ({dataset.text_tokens} tokens, padding "
            f"left out); the prior reads every token of a prompt: give at least {dataset.text_tokens} (or leave it out)"
        )
    hidden = given.get("patch_hidden_dim", max(2 * patch_frames * patch * patch, values // 2))
    reasons.setdefault(
        "patch_hidden_dim", f"max(2*Pt*P*P = {2 * patch_frames * patch * patch:,}, K/2 = {values // 2:,}) for K = {values:,}"
    )
    if positions == "3d":
        reasons.setdefault("patch_frames", f"{chosen.title}'s" if chosen else "")
    reasons.setdefault("latent_height", f"the largest of {len(sizes)} buckets" if len(sizes) > 1 else "the data's size")
    size = sizes[largest]
    config = NoiseARConfig(
        **{
            **given,
            "family": chosen.key if chosen else "",
            "channels": channels,
            "text_dim": dataset.text_width,
            "patch_size": patch,
            "patch_frames": patch_frames,
            "positions": positions,
            "window": window,
            "window_frames": window_frames,
            "text_tokens": text_tokens,
            "patch_hidden_dim": hidden,
            "latent_height": size[-2],
            "latent_width": size[-1],
            "latent_frames": size[0] if positions == "3d" else 1,
        }
    )
    return PriorDesign(config, reasons, describe_crops(read))


def _power_of_two_patch(channels: int) -> int:
    """A prior of no family: the largest power of two P with channels * P * P <= TOKEN_VALUES_TARGET (at least 1)."""
    patch = 1
    while channels * (2 * patch) ** 2 <= TOKEN_VALUES_TARGET:
        patch *= 2
    return patch
