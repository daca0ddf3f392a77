"""NoiseAR Dataset Collector: (prompt embedding, golden noise) pairs of the host's MODEL, written as
noisear.train.data shards that `python -m noisear train` reads.

Per prompt (one per line; see prompt_conditionings for what the model and the prior get) and j < k,
the seed is ``pair_seed(first_seed, prompt index, j)`` (distinct for every pair, so no starting
noise repeats across prompts), the source noise is RandomNoise's draw for that seed on a
[1, C, H, W] empty latent, and the target is NoiseAR Golden Noise of it (same scheduler, steps and
guidances). A pair is keyed by (prompt index = a hash of the prompt text, seed), so a re-run
skips what is written, also after a crash or with prompts added or reordered. Memory: one batch
plus one shard (the writer flushes every ``shard_size`` samples or ``SHARD_BYTES``). The shards go to a
subfolder of ComfyUI's output folder and nowhere else (see dataset_directory).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch

from noisear.golden import GoldenConfig
from noisear.train.collect import keep_improved
from noisear.train.data import SEED_SCHEME, SHARD_BYTES, DatasetInfo, ShardWriter, prompt_index, prompt_seeds

from . import host, text_encode
from .golden import golden_noise, schedule_inputs
from .prior import CATEGORY, NoiseARNodeError

MAX_NAME = 1024  # characters of a dataset name (deeper paths make os.makedirs recurse too far)
# NOISEAR_REWARD: (noise [B,C,H,W] unit-variance, CONDITIONING of the prompt) -> reward [B]; higher is better
Reward = Callable[[torch.Tensor, list], torch.Tensor]


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


def fixed_tokens(conditioning: list, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First entry's tensor [1,T,D] -> text [tokens, D] fp32 and mask [tokens] bool (cut or zero-padded)."""
    cond, extras = conditioning[0][0][0].float().cpu(), conditioning[0][1] or {}
    mask = extras.get("attention_mask")
    mask = torch.ones(cond.shape[0], dtype=torch.bool) if mask is None else mask.reshape(-1).bool().cpu()
    text = torch.zeros(tokens, cond.shape[1])
    keep = min(tokens, cond.shape[0])
    text[:keep], padded_mask = cond[:keep], torch.zeros(tokens, dtype=torch.bool)
    padded_mask[:keep] = mask[:keep]
    return text, padded_mask


def check_widget_values(input_types: dict[str, Any], **values: Any) -> None:
    """Refuse INT/FLOAT values outside their widget's [min, max] or not finite, as ComfyUI's validation would
    (an API-format workflow can carry any number, and ComfyUI's min/max checks let NaN through)."""
    spec = {**input_types["required"], **input_types.get("optional", {})}
    for name, value in values.items():
        low, high = spec[name][1]["min"], spec[name][1]["max"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise NoiseARNodeError(f"{name} must be a number from {low} to {high}, got {str(value)[:50]}")


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


def collect(
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
    directory: str,
    text_tokens: int,
    batch_size: int,
    shard_size: int,
    model_name: str = "",
    reward: Reward | None = None,
) -> dict[str, int]:
    """Write the missing pairs; returns counts written / skipped / rejected (by the reward filter)."""
    lines = prompt_lines(prompts)
    if not lines:
        raise NoiseARNodeError("prompts is empty: give one prompt per line")
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4 or 0 in samples.shape:
        got = list(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise NoiseARNodeError(f"the collector works on image latents [batch, C, H, W] (e.g. EmptyLatentImage); got {got}")
    shape = (1, *samples.shape[1:])
    sigmas = host.schedule_sigmas(model, scheduler, steps)
    info = DatasetInfo(
        source_model=model_name or "comfyui MODEL",
        prediction=host.prediction_kind(model),
        schedule=f"comfyui {scheduler}",
        steps=steps,
        guidance_denoise=config.guidance_denoise,
        guidance_invert=config.guidance_invert,
        seed_scheme=SEED_SCHEME,
        extra={
            "noise": "ComfyUI RandomNoise draws of the seed on a [1,C,H,W] latent",
            "sigmas": [round(float(s), 6) for s in sigmas[:2]],
            "text_tokens": text_tokens,
        },
    )
    counts = {"written": 0, "skipped": 0, "rejected": 0}
    total = len(lines) * seeds_per_prompt
    bar, done = host.progress_bar(total), 0
    with ShardWriter(directory, info, shard_size) as writer:
        for prompt in lines:
            index = prompt_index(prompt)
            seeds = prompt_seeds(first_seed, index, seeds_per_prompt)
            todo = [s for s in seeds if not writer.has(index, s)]
            counts["skipped"] += len(seeds) - len(todo)
            done += len(seeds) - len(todo)
            positive, prior_text = prompt_conditionings(clip, prompt) if todo else (None, None)
            for start in range(0, len(todo), batch_size):
                host.throw_if_interrupted()
                chunk = todo[start : start + batch_size]
                zeros = torch.zeros(shape)
                noise = torch.cat([host.prepare_noise(zeros, s, None) for s in chunk]).float()
                golden = golden_noise(model, positive, negative, noise, sigmas, chunk[0], config, host.throw_if_interrupted)
                keep = (
                    keep_improved(noise, golden, reward, positive, config.margin)
                    if reward is not None
                    else torch.ones(len(chunk), dtype=torch.bool)
                )
                counts["rejected"] += int((~keep).sum())
                if keep.any():
                    text, mask = fixed_tokens(prior_text, text_tokens)
                    count = int(keep.sum())
                    writer.append(
                        text.expand(count, -1, -1),
                        golden[keep],
                        [index] * count,
                        [s for s, k in zip(chunk, keep.tolist()) if k],
                        mask.expand(count, -1),
                        prompts={index: prompt},
                    )
                    counts["written"] += count
                done += len(chunk)
                bar.update_absolute(done, total)
    return counts


class DatasetCollectorNode:
    DESCRIPTION = (
        "Collects a NoiseAR training set for this MODEL: for every prompt line and j < seeds_per_prompt, the "
        "golden noise of RandomNoise's draw for the pair's own seed (see NoiseAR Golden Noise; no starting "
        "noise repeats across prompts) with the prompt's embedding, written as dataset "
        "shards for `python -m noisear train`. Resumable: pairs already in the folder are skipped. Use one "
        "folder per latent size (aspect-ratio bucket)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "collect"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("summary",)
    OUTPUT_TOOLTIPS = ("What was written, skipped and rejected, and where.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model to collect golden noise for."}),
                "clip": ("CLIP", {"tooltip": "Its text encoder; each prompt line is encoded like CLIPTextEncode does."}),
                "prompts": ("STRING", {"multiline": True, "default": "", "tooltip": "One prompt per line."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative conditioning for the denoising step's guidance."}),
                "latent_image": (
                    "LATENT",
                    {
                        "tooltip": "An empty latent of the size (and channels) to collect at, e.g. "
                        "EmptyLatentImage; its batch size is ignored."
                    },
                ),
                "seeds_per_prompt": (
                    "INT",
                    {
                        "default": 4,
                        "min": 1,
                        "max": 100000,
                        "tooltip": (
                            "k: starting noises per prompt. Pair (prompt, j) uses its own seed, a hash of (first_seed, prompt, "
                            "j), so no noise repeats across prompts; raising k later adds pairs and keeps the ones written."
                        ),
                    },
                ),
                "first_seed": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 2**53 - 1,
                        "tooltip": (
                            "Salt of the seed hash: another first_seed gives other noises for the same prompts (e.g. more data)."
                        ),
                    },
                ),
                **schedule_inputs(),
                "dataset": (
                    "STRING",
                    {
                        "default": "noisear_dataset/1024x1024",
                        "tooltip": (
                            "Folder of the shards inside ComfyUI's output folder (a relative name, like SaveImage's prefix; "
                            "nothing is written elsewhere). One folder per size."
                        ),
                    },
                ),
                "text_tokens": (
                    "INT",
                    {
                        "default": 77,
                        "min": 1,
                        "max": 4096,
                        "tooltip": ("Tokens stored per prompt: longer embeddings are cut, shorter ones zero-padded with mask 0."),
                    },
                ),
                "batch_size": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": "Seeds computed together."}),
                "shard_size": (
                    "INT",
                    {
                        "default": 256,
                        "min": 1,
                        "max": 4096,
                        "tooltip": (
                            f"Samples per shard file, at most {SHARD_BYTES // 2**20} MiB of them: that is all that is held "
                            f"in memory before a write."
                        ),
                    },
                ),
                "model_name": ("STRING", {"default": "", "tooltip": "Name of the model, stored in the dataset metadata."}),
            },
            "optional": {
                "reward": (
                    "NOISEAR_REWARD",
                    {
                        "tooltip": (
                            "Optional filter: keeps a pair only when reward(golden) - reward(noise) > reward_margin. A "
                            "NOISEAR_REWARD is a callable (noise [B,C,H,W], conditioning) -> [B] from a custom node."
                        )
                    },
                ),
                "reward_margin": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": -1e6,
                        "max": 1e6,
                        "step": 0.01,
                        "tooltip": "Margin of the reward filter (0 as in the Golden Noise paper).",
                    },
                ),
            },
        }

    @classmethod
    def IS_CHANGED(cls, **inputs: Any) -> float:
        """Always run when queued: the folder may have changed, and a re-run only adds what is missing."""
        return float("nan")

    def collect(
        self,
        model: Any,
        clip: Any,
        prompts: str,
        negative: list,
        latent_image: dict,
        seeds_per_prompt: int,
        first_seed: int,
        scheduler: str,
        steps: int,
        cfg_denoise: float,
        cfg_invert: float,
        dataset: str,
        text_tokens: int,
        batch_size: int,
        shard_size: int,
        model_name: str,
        reward: Reward | None = None,
        reward_margin: float = 0.0,
    ) -> dict[str, Any]:
        check_widget_values(
            self.INPUT_TYPES(),
            seeds_per_prompt=seeds_per_prompt,
            first_seed=first_seed,
            steps=steps,
            cfg_denoise=cfg_denoise,
            cfg_invert=cfg_invert,
            text_tokens=text_tokens,
            batch_size=batch_size,
            shard_size=shard_size,
            reward_margin=reward_margin,
        )
        config = GoldenConfig(cfg_denoise, cfg_invert, reward_margin)
        directory = dataset_directory(dataset)
        counts = collect(
            model,
            clip,
            prompts,
            negative,
            latent_image,
            seeds_per_prompt,
            first_seed,
            scheduler,
            steps,
            config,
            directory,
            text_tokens,
            batch_size,
            shard_size,
            model_name,
            reward,
        )
        summary = (
            f"{directory}: wrote {counts['written']}, skipped {counts['skipped']} already present, "
            f"rejected {counts['rejected']} by the reward filter"
        )
        return {"ui": {"text": (summary,)}, "result": (summary,)}
