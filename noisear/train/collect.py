"""Dataset collection: golden noise for (prompt, seed) pairs, filtered by a reward, written as shards.

Every (prompt, j) starts from its own noise: seed :func:`pair_seed` (first_seed, prompt key, j).
Using the same seeds for every prompt would give a dataset of only k distinct noises, each
repeated for every prompt with near-identical targets, which a prior memorises instead of
learning the prompt.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from tqdm import tqdm

from ..golden import Denoiser, GoldenConfig, Schedule, golden_noise
from ..model import standard_normal
from .data import DatasetError, DatasetInfo, ShardWriter

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


def shift_from_start(noise: torch.Tensor, seeds: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """[B, C, H, W]: golden noise minus its starting noise (the seeds' ``start_noise``), on noise's device."""
    return noise - start_noise(seeds, noise.shape).to(noise.device)


def prompt_seeds(first_seed: int, prompt_key: int, count: int) -> list[int]:
    """The seeds of j = 0 .. count-1 for one prompt."""
    return [pair_seed(first_seed, prompt_key, j) for j in range(count)]


# (noise [B,C,H,W], conditioning) -> reward [B]; for real models: noise -> image -> score
Reward = Callable[[torch.Tensor, Any], torch.Tensor]


def keep_improved(noise: torch.Tensor, golden: torch.Tensor, reward: Reward, cond: Any, margin: float = 0.0) -> torch.Tensor:
    """[B] bool: True where reward(golden) - reward(noise) > margin (the paper's filter, margin 0)."""
    return (reward(golden, cond) - reward(noise, cond)) > margin


@dataclass
class PromptItem:
    """One prompt to collect for: ``text`` [T,D] and ``text_mask`` [T] are stored (what the prior sees);
    ``cond`` / ``uncond`` go to the denoiser (batched by the caller's denoiser as it likes, see collect)."""

    index: int
    text: torch.Tensor
    cond: Any
    uncond: Any = None
    text_mask: torch.Tensor | None = None
    prompt: str = ""


def collect(
    denoiser: Denoiser,
    schedule: Schedule,
    writer: ShardWriter,
    prompts: Iterable[PromptItem],
    seeds_per_prompt: int,
    shape: Sequence[int],
    config: GoldenConfig = GoldenConfig(),
    reward: Reward | None = None,
    batch_size: int = 8,
    progress: bool = True,
    first_seed: int = 0,
) -> dict[str, int]:
    """Write golden noise for every (prompt, j < seeds_per_prompt) not yet in ``writer`` (so it resumes after a kill).

    Pair (prompt, j) starts from seed ``pair_seed(first_seed, prompt.index, j)``, whose noise is
    ``standard_normal([1, *shape], [seed])`` (the same on every device); the writer's info must say
    ``seed_scheme=SEED_SCHEME``. ``cond``/``uncond`` of a prompt are passed as they are for a batch of that
    prompt's seeds. Returns counts: written, skipped (already present), rejected (by the reward filter;
    rejected pairs are not recorded, so a resumed run computes them again and rejects them again).
    """
    if writer.info.seed_scheme != SEED_SCHEME:
        raise DatasetError(
            f"collect draws seeds with pair_seed; make the writer with DatasetInfo(..., "
            f"seed_scheme={SEED_SCHEME!r}), got {writer.info.seed_scheme!r}"
        )
    counts = {"written": 0, "skipped": 0, "rejected": 0}
    prompts = list(prompts)
    bar = tqdm(total=len(prompts) * seeds_per_prompt, disable=not progress, desc="golden noise", dynamic_ncols=True)
    for item in prompts:
        seeds = prompt_seeds(first_seed, item.index, seeds_per_prompt)
        todo = [s for s in seeds if not writer.has(item.index, s)]
        counts["skipped"] += len(seeds) - len(todo)
        bar.update(len(seeds) - len(todo))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            noise = start_noise(chunk, (len(chunk), *shape))
            golden = golden_noise(denoiser, schedule, noise, item.cond, item.uncond, config).float().cpu()
            keep = (
                keep_improved(noise, golden, reward, item.cond, config.margin).cpu()
                if reward is not None
                else torch.ones(len(chunk), dtype=torch.bool)
            )
            counts["rejected"] += int((~keep).sum())
            if keep.any():
                picked = [s for s, k in zip(chunk, keep.tolist()) if k]
                count = len(picked)
                mask = None if item.text_mask is None else item.text_mask.expand(count, -1)
                writer.append(
                    item.text.expand(count, -1, -1),
                    golden[keep],
                    [item.index] * count,
                    picked,
                    mask,
                    prompts={item.index: item.prompt} if item.prompt else None,
                )
                counts["written"] += count
            bar.update(len(chunk))
    bar.close()
    writer.flush()
    return counts
