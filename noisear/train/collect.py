"""Dataset collection: golden noise for (prompt, seed) pairs, filtered by a reward, written as shards."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from tqdm import tqdm

from ..golden import Denoiser, GoldenConfig, Schedule, golden_noise
from ..model import standard_normal
from .data import ShardWriter

# (noise [B,C,H,W], conditioning) -> reward [B]; for real models: noise -> image -> score
Reward = Callable[[torch.Tensor, Any], torch.Tensor]


def keep_improved(noise: torch.Tensor, golden: torch.Tensor, reward: Reward, cond: Any, margin: float = 0.0
                  ) -> torch.Tensor:
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


def collect(denoiser: Denoiser, schedule: Schedule, writer: ShardWriter, prompts: Iterable[PromptItem],
            seeds: Sequence[int], shape: Sequence[int], config: GoldenConfig = GoldenConfig(),
            reward: Reward | None = None, batch_size: int = 8, progress: bool = True) -> dict[str, int]:
    """Write golden noise for every (prompt, seed) not yet in ``writer`` (so it resumes after a kill).

    The source noise of seed s is ``standard_normal([1, *shape], [s])`` (the same on every device);
    ``cond``/``uncond`` of a prompt are passed as they are for a batch of that prompt's seeds.
    Returns counts: written, skipped (already present), rejected (by the reward filter; rejected pairs
    are not recorded, so a resumed run computes them again and rejects them again).
    """
    counts = {"written": 0, "skipped": 0, "rejected": 0}
    prompts = list(prompts)
    bar = tqdm(total=len(prompts) * len(seeds), disable=not progress, desc="golden noise", dynamic_ncols=True)
    for item in prompts:
        todo = [s for s in seeds if not writer.has(item.index, s)]
        counts["skipped"] += len(seeds) - len(todo)
        bar.update(len(seeds) - len(todo))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            noise = standard_normal((len(chunk), *shape), chunk)
            golden = golden_noise(denoiser, schedule, noise, item.cond, item.uncond, config).float().cpu()
            keep = (keep_improved(noise, golden, reward, item.cond, config.margin).cpu() if reward is not None
                    else torch.ones(len(chunk), dtype=torch.bool))
            counts["rejected"] += int((~keep).sum())
            if keep.any():
                picked = [s for s, k in zip(chunk, keep.tolist()) if k]
                count = len(picked)
                mask = None if item.text_mask is None else item.text_mask.expand(count, -1)
                writer.append(item.text.expand(count, -1, -1), golden[keep], [item.index] * count, picked,
                              mask, prompts={item.index: item.prompt} if item.prompt else None)
                counts["written"] += count
            bar.update(len(chunk))
    bar.close()
    writer.flush()
    return counts
