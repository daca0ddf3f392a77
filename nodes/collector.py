"""NoiseAR Dataset Collector's host side: (prompt embedding, golden noise) pairs of the host's MODEL, written
as noisear.train.data shards that `python -m noisear train` reads.

The loop is the library's (noisear.train.collect.collect: seeds, skipping what is written, batches, reward
filter, writing); this module hands it the prompt lines, the host's golden function (NoiseAR Golden Noise's
computation, same scheduler, steps and guidances), the node's progress bar and ComfyUI's Cancel.
Per prompt (one per line; see prompt_conditionings for what the model and the prior get) and j < k,
the seed is ``pair_seed(first_seed, prompt index, j)`` (distinct for every pair, so no starting
noise repeats across prompts) and the source noise is RandomNoise's draw for that seed on a
[1, C, H, W] empty latent. Memory: one batch, one prompt's encoding and one shard (the writer flushes every
``shard_size`` samples or ``SHARD_BYTES``). The shards go to a subfolder of ComfyUI's output folder and nowhere
else (see dataset_directory).

What makes a pair, so that a re-run skips exactly what is written (also after a crash or with prompts added or
reordered) and never mixes in what was made otherwise: the folder's latent size (one per folder), its MODEL
(DatasetInfo.model_identity: host.model_identity's model class and hashes of weights and weight patches), the
model_name and collection settings (the rest of DatasetInfo), the prompt's embedding (compared with the stored
one for every prompt encoded and for one stored prompt per run), then (prompt index = a hash of the prompt text,
seed). Another size, MODEL or text encoder is refused before anything is computed, naming what to do. A folder
written before model identities were recorded is continued as it is: its new shards carry its info without one,
and the summary says the MODEL could not be checked (the embeddings still are).

Every model family (noisear.families; the MODEL's class says which, DatasetInfo.family records it for `noisear
train`): the latent is taken as ComfyUI's samplers take it (host.fix_empty_latent: an empty SD3 latent becomes
Qwen-Image's [1, 16, 1, H, W]) and golden noise is computed at the MODEL's rank. Image families store their noise
as [C, H, W] (a one-frame time axis dropped: the draws are the same values, and an image prior reads image noise);
video families (Wan) store [C, T, H, W]. The text stored is the one rule the NoiseAR nodes read a conditioning by
(conditioning.read_text with the MODEL's family): the prompt's rows without the family's padding, followed by empty
slots (mask 0) up to ``text_tokens``; a prompt of more tokens is refused, never cut. Golden noise follows the
MODEL's recipe (golden.py: CFG, or embedded guidance for Flux dev, recorded as extra["guidance"]).
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import replace
from typing import Any

import torch

from noisear.families import Family
from noisear.golden import GoldenConfig
from noisear.train.collect import Golden, PromptItem, Reward, SizeMismatch, collect
from noisear.train.data import SEED_SCHEME, DatasetInfo, ShardWriter, folder_info, prompt_index

from . import host, text_encode
from .conditioning import read_text
from .golden import embedded_guidance, golden_noise, recipe_note
from .widgets import PIXELS_PER_CELL, NoiseARNodeError, size_text

MAX_NAME = 1024  # characters of a dataset name (deeper paths make os.makedirs recurse too far)
# Unicode's bidirectional formatting characters (marks, embeddings, overrides, isolates): a name holding them
# shows as another name
BIDI_CONTROLS = {"\u061c", "\u200e", "\u200f", *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))}


def prompt_lines(prompts: str) -> list[str]:
    """Non-empty lines, stripped, duplicates dropped (first kept)."""
    return list(dict.fromkeys(line.strip() for line in prompts.splitlines() if line.strip()))


def prompt_conditionings(clip: Any, prompt: str) -> tuple[list, list]:
    """(CONDITIONING the diffusion model gets, CONDITIONING stored for the prior) of one prompt line.

    SDXL and Hunyuan-DiT CLIPs: NoiseAR Text Encode's two outputs (CLIPTextEncode's conditioning, and
    prior_text: 77 tokens, weight syntax read as text), so a prior trained on the dataset reads at inference,
    through NoiseAR Text Encode, exactly what it was trained on. Other CLIPs (no Text Encode route):
    CLIPTextEncode's conditioning for both, what the NoiseAR nodes read from a CONDITIONING.
    """
    if text_encode.serves(clip):
        conditioning, prior_text, _ = text_encode.encode(clip, prompt)
        return conditioning, prior_text
    conditioning = host.encode_text(clip, prompt)
    return conditioning, conditioning


def stored_text(conditioning: list, family: Family | None, tokens: int, prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """What the prior reads of a CONDITIONING (its first entry, by the family's rule: conditioning.read_text) as
    ``tokens`` slots: text [tokens, D] fp32, the prompt's rows first, then zero rows, and mask [tokens] bool (True on
    the prompt's rows). A prompt of more than ``tokens`` rows is refused: a cut prompt is not what the prior reads."""
    read = read_text(conditioning, family)
    rows = read.text[0].cpu() if read.mask is None else read.text[0].cpu()[read.mask[0].cpu()]
    if rows.shape[0] > tokens:
        reach = f" ({family.title} prompts reach {family.text_tokens})" if family is not None else ""
        raise NoiseARNodeError(
            f"NoiseAR Dataset Collector: the prompt {prompt[:80]!r} has {rows.shape[0]} tokens (padding excluded), more "
            f"than text_tokens ({tokens}) holds; the prior reads the whole prompt, so it is not cut. Set text_tokens to "
            f"at least {rows.shape[0]}{reach} and a new dataset folder, or shorten the prompt"
        )
    text, mask = torch.zeros(tokens, rows.shape[1]), torch.zeros(tokens, dtype=torch.bool)
    text[: rows.shape[0]], mask[: rows.shape[0]] = rows, True
    return text, mask


def dataset_directory(name: str) -> str:
    """The real path of folder ``name`` inside ComfyUI's output folder; anywhere else is refused.

    As SaveImage refuses (folder_paths.get_save_image_path): the name is relative and, normalised, must
    stay inside the output folder (a ``..`` that climbs out or an absolute path is refused). Beyond
    SaveImage, symlinks are resolved, so a linked subfolder that points out of the output folder is
    refused too. Nothing is created here.
    """
    if not name.strip():
        raise NoiseARNodeError("dataset must name a folder inside ComfyUI's output folder, e.g. noisear_dataset/1024x1024")
    if "\0" in name or len(name) > MAX_NAME:
        raise NoiseARNodeError(f"dataset must be a plain folder name of at most {MAX_NAME} characters without NUL")
    hidden = next(
        (i for i, char in enumerate(name) if char in BIDI_CONTROLS or unicodedata.category(char) in ("Cc", "Zl", "Zp")), None
    )
    if hidden is not None:
        raise NoiseARNodeError(
            f"dataset must not hold control or bidirectional-formatting characters (found U+{ord(name[hidden]):04X} at "
            f"position {hidden + 1}): the folder would show under another name, or break lines in logs. Type the "
            f"name again in plain characters, e.g. noisear_dataset/1024x1024"
        )
    if os.path.isabs(name) or os.path.splitdrive(name)[0]:
        raise NoiseARNodeError(
            f"dataset must be a folder name relative to ComfyUI's output folder, got {name[:200]!r}: "
            f"saving outside the output folder is not allowed (as for SaveImage)"
        )
    output = os.path.realpath(host.output_directory())
    folder = os.path.realpath(os.path.join(output, name))
    if folder == output:
        raise NoiseARNodeError(
            f"dataset {name[:200]!r} is the output folder itself; name a subfolder, e.g. noisear_dataset/1024x1024"
        )
    if os.path.commonpath((output, folder)) != output:
        raise NoiseARNodeError(
            f"dataset {name[:200]!r} resolves to {folder[:200]}: saving outside the output folder "
            f"is not allowed (as for SaveImage; {'..' if '..' in name else 'symlinks'} may not lead "
            f"out of {output}). Name a subfolder, e.g. noisear_dataset/1024x1024"
        )
    return folder


class PromptLine:
    """One prompt line as noisear.train.collect.collect takes it: keyed by a hash of its text, encoded with the
    CLIP only when some of its pairs are missing (see prompt_conditionings)."""

    def __init__(self, clip: Any, prompt: str, negative: list, text_tokens: int, family: Family | None) -> None:
        self.clip, self.prompt, self.negative, self.text_tokens = clip, prompt, negative, text_tokens
        self.family, self.index = family, prompt_index(prompt)

    def encoded(self) -> PromptItem:
        positive, prior_text = prompt_conditionings(self.clip, self.prompt)
        text, mask = stored_text(prior_text, self.family, self.text_tokens, self.prompt)
        return PromptItem(self.index, text, positive, self.negative, mask, self.prompt)


def comfy_golden(model: Any, sigmas: torch.Tensor, config: GoldenConfig, shape: tuple[int, ...]) -> Golden:
    """The collection loop's golden function: NoiseAR Golden Noise's computation with the host's MODEL, the
    prompt's positive and the negative, on noise of the MODEL's latent ``shape`` (C, ...), stored as the loop gives
    it (the same values without a one-frame time axis); ComfyUI's Cancel is checked before every model evaluation."""

    def golden(noise: torch.Tensor, item: PromptItem, seeds: list[int]) -> torch.Tensor:
        at_model_rank = noise.reshape(noise.shape[0], *shape)
        golden = golden_noise(model, item.cond, item.uncond, at_model_rank, sigmas, seeds[0], config, host.throw_if_interrupted)
        return golden.reshape(noise.shape)

    return golden


def latent_shapes(model: Any, latent: Any, family: Family | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(the MODEL's latent shape (C, ...) as its samplers take it, the shape stored (C, H, W) or (C, T, H, W)) of one
    item of ``latent``; a video latent for a MODEL that makes images is refused."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.ndim not in (4, 5) or 0 in samples.shape:
        got = list(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise NoiseARNodeError(
            f"the collector works on image latents [batch, C, H, W] (e.g. EmptyLatentImage) and video latents [batch, "
            f"C, frames, H, W] (e.g. EmptyHunyuanLatentVideo); got {got}"
        )
    shape = tuple(host.fix_empty_latent(model, samples).shape[1:])
    video = family is not None and family.video  # a video family's latent format is 3-D: a 4-D latent is one frame
    if not video and len(shape) == 4 and shape[1] != 1:
        raise NoiseARNodeError(
            f"NoiseAR Dataset Collector: the latent {list(samples.shape)} is a video of {shape[1]} frames, but "
            f"{host.model_config_name(model)} ({family.title if family else 'no NoiseAR family'}) is not a video model; "
            f"give an image latent"
        )
    return shape, shape if video or len(shape) == 3 else (shape[0], *shape[2:])


IDENTITY_PARTS = {"class": "the model class", "weights": "the weights", "patches": "the weight patches (LoRAs)"}
UNCHECKED_MODEL = (
    "was collected before model identities were recorded, so the MODEL could not be checked against it (the prompt "
    "embeddings were): make sure it is the model the folder was collected with"
)


UNRECORDED_FAMILY = "was collected before model families were recorded: its shards name none, so give `noisear train` the family"


def check_model(name: str, held: DatasetInfo | None, info: DatasetInfo) -> DatasetInfo:
    """The info to write with: ``info``, or for a folder from before model identities (families) ``info`` without
    one; NoiseARNodeError when the folder (dataset ``name``) was collected with another MODEL."""
    if held is not None and not held.family:
        info = replace(info, family="")
    if held is None or held.model_identity == info.model_identity:
        return info
    if not held.model_identity:
        return replace(info, model_identity={})
    parts = [
        IDENTITY_PARTS.get(key, key) for key in info.model_identity if held.model_identity.get(key) != info.model_identity[key]
    ]
    raise NoiseARNodeError(
        f"NoiseAR Dataset Collector: {name[:200]} was collected with another MODEL (what differs: {', '.join(parts)}). Golden "
        f"noise of two models must not be mixed in one dataset: connect the model the folder was collected with, or "
        f"set dataset to a new folder for this model"
    )


def size_folder(shape: tuple[int, ...], family: Family | None = None) -> str:
    """A size folder's name for latents (C, H, W) or (C, T, H, W): pixels, W x H (x frames), as the default dataset
    name '.../1024x1024' (a video: '.../832x480x81')."""
    pixels = family.cell_pixels if family is not None else PIXELS_PER_CELL
    name = f"{shape[-1] * pixels}x{shape[-2] * pixels}"
    if len(shape) == 4:
        name += f"x{(shape[1] - 1) * (family.frame_stride if family is not None and family.video else 1) + 1}"
    return name


def size_message(name: str, mismatch: SizeMismatch, family: Family | None = None) -> str:
    """What to do when dataset ``name`` holds another latent size: the sibling size folder to collect into."""
    held, given, name = mismatch.held, mismatch.given, os.path.normpath(name)[:200]
    channels = f"{held[0]}-channel " if held[0] != given[0] else ""
    parent, leaf = os.path.split(name)
    if parent and re.fullmatch(r"\d+x\d+(x\d+)?", leaf):
        where = (
            f"set dataset to {os.path.join(parent, size_folder(given, family))}, a size folder next to it "
            f"(`python -m noisear train` on {parent} reads its size folders as buckets)"
        )
    else:
        where = (
            f"set dataset to a folder of its own for this size, e.g. {name}_{size_folder(given, family)}; to train on both "
            f"sizes as buckets, put one folder per size in one dataset folder (e.g. noisear_dataset/1024x1024 and "
            f"noisear_dataset/832x1216) and train on that folder"
        )
    return (
        f"NoiseAR Dataset Collector: {name} holds {channels}latents of {size_text(held[1:], family)}; this latent is "
        f"{f'{given[0]}-channel ' if channels else ''}{size_text(given[1:], family)}. A dataset folder holds one size: "
        f"{where}. "
        f"Nothing was written"
    )


def collect_dataset(
    model: Any,
    clip: Any,
    prompts: str,
    negative: list,
    latent: dict,
    seeds_per_prompt: int,
    first_seed: int,
    scheduler: str,
    steps: int,
    config: GoldenConfig,
    name: str,
    directory: str,
    text_tokens: int,
    batch_size: int,
    shard_size: int,
    model_name: str = "",
    reward: Reward | None = None,
) -> tuple[dict[str, int], str | None]:
    """Write the missing pairs to ``directory`` (dataset_directory of the dataset widget's ``name``, which the
    messages use) with noisear.train.collect.collect; returns the counts written / skipped / rejected and a note
    for the summary (or None)."""
    lines = prompt_lines(prompts)
    if not lines:
        raise NoiseARNodeError("prompts is empty: give one prompt per line")
    family = host.model_family(model)
    shape, stored = latent_shapes(model, latent, family)
    sigmas = host.schedule_sigmas(model, scheduler, steps)
    noise = "ComfyUI RandomNoise draws of the seed on a [1,C,H,W] latent"
    if len(shape) == 4:
        noise = "ComfyUI RandomNoise draws of the seed on a [1,C,T,H,W] latent" + (
            "" if len(stored) == 4 else ", stored as [C,H,W]"
        )
    extra = {"noise": noise, "sigmas": [round(float(s), 6) for s in sigmas[:2]], "text_tokens": text_tokens}
    if embedded_guidance(model):
        extra["guidance"] = "embedded: cfg 1, the conditioning's guidance value set to w_l, then w_w"
    info = DatasetInfo(
        source_model=model_name or "comfyui MODEL",
        prediction=host.prediction_kind(model),
        schedule=f"comfyui {scheduler}",
        steps=steps,
        guidance_denoise=config.guidance_denoise,
        guidance_invert=config.guidance_invert,
        seed_scheme=SEED_SCHEME,
        extra=extra,
        model_identity=host.model_identity(model),
        family=family.key if family is not None else "",
    )
    held = folder_info(directory)
    info = check_model(name, held, info)
    notes = [f"{name[:200]} {UNCHECKED_MODEL}" if held is not None and not info.model_identity else None]
    notes.append(f"{name[:200]} {UNRECORDED_FAMILY}" if held is not None and family is not None and not info.family else None)
    notes.append(recipe_note(model))
    items = [PromptLine(clip, line, negative, text_tokens, family) for line in lines]
    bar = host.progress_bar(len(items) * seeds_per_prompt)
    with ShardWriter(directory, info, shard_size) as writer:
        probe = next((PromptLine(clip, text, negative, text_tokens, family) for text in writer.stored_prompts.values()), None)
        try:
            counts = collect(
                comfy_golden(model, sigmas, config, shape),
                writer,
                items,
                seeds_per_prompt,
                stored,
                reward=reward,
                margin=config.margin,
                batch_size=batch_size,
                first_seed=first_seed,
                progress=bar.update_absolute,
                interrupt=host.throw_if_interrupted,
                probe=probe,
            )
        except SizeMismatch as mismatch:
            raise NoiseARNodeError(size_message(name, mismatch, family)) from None
    note = " ".join(filter(None, notes)) or None
    return counts, note
