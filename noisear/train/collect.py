"""Dataset collection: golden noise for (prompt, seed) pairs, filtered by a reward, written as shards.

Every (prompt, j) starts from its own noise: seed ``noisear.train.data.pair_seed`` (first_seed, prompt key, j).
Using the same seeds for every prompt would give a dataset of only k distinct noises, each
repeated for every prompt with near-identical targets, which a prior memorises instead of
learning the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from tqdm import tqdm

from ..golden import Denoiser, GoldenConfig, Schedule, golden_noise
from .data import SEED_SCHEME, DatasetError, ShardWriter, prompt_seeds, start_noise

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
