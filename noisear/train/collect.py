"""Dataset collection: golden noise for (prompt, seed) pairs, filtered by a reward, written as shards.

One loop for every host. What differs between hosts comes in as functions: the golden function
(``golden_function`` of a host-free denoiser, or the ComfyUI collector's, which runs the host's
MODEL), progress and interrupt.

Every (prompt, j) starts from its own noise: seed ``noisear.train.data.pair_seed`` (first_seed, prompt key, j).
Using the same seeds for every prompt would give a dataset of only k distinct noises, each
repeated for every prompt with near-identical targets, which a prior memorises instead of
learning the prompt.

What makes a pair, and how a re-run knows it: the folder (one latent size, one DatasetInfo: the model and the
collection settings, checked by ShardWriter when it opens the folder), then (prompt, seed) in it (ShardWriter.has),
and the prompt's embedding, which must be the one the folder holds for that prompt. So before any golden noise
is computed, ``collect`` refuses another latent size (SizeMismatch) and, for every prompt it encodes and one
``probe`` prompt from the folder, an embedding that differs from the stored one (EmbeddingMismatch: another text
encoder, layer or tokenizer setting), instead of skipping such pairs or mixing them in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch

from ..config import quoted
from ..golden import Denoiser, GoldenConfig, Schedule, golden_noise
from .data import SEED_SCHEME, DatasetError, ShardWriter, prompt_seeds, start_noise

# (noise [B,C,H,W], conditioning) -> reward [B], higher is better; for real models: noise -> image -> score
Reward = Callable[[torch.Tensor, Any], torch.Tensor]
Progress = Callable[[int, int], None]  # (pairs done, pairs in all), skipped pairs included
Interrupt = Callable[[], None]  # raises to stop the run (e.g. ComfyUI's Cancel)


# An embedding may differ from the stored one by this much (relative L2) and still count as the same: a device or
# precision change of the same encoder stays far below it, another encoder, layer or tokenizer setting far above.
EMBEDDING_TOLERANCE = 0.02


class SizeMismatch(DatasetError):
    """The folder holds noise of another latent size (``held``, ``given``: (C, H, W) or (C, T, H, W)); a folder holds one size."""

    def __init__(self, directory: str, held: tuple[int, ...], given: tuple[int, ...]) -> None:
        self.directory, self.held, self.given = directory, held, given
        super().__init__(
            f"{directory} holds noise of {list(held)} (C, [T,] H, W latent cells), this collection {list(given)}; a folder "
            f"holds one latent size: collect this size into a folder of its own next to it (ShardDataset reads the "
            f"size folders of one dataset folder as buckets)"
        )


class EmbeddingMismatch(DatasetError):
    """A prompt's embedding differs from the one the folder holds for it."""


def keep_improved(noise: torch.Tensor, golden: torch.Tensor, reward: Reward, cond: Any, margin: float = 0.0) -> torch.Tensor:
    """[B] bool: True where reward(golden) - reward(noise) > margin (the paper's filter, margin 0)."""
    return (reward(golden, cond) - reward(noise, cond)) > margin


@dataclass
class PromptItem:
    """One prompt to collect for: ``text`` [T,D] and ``text_mask`` [T] are stored (what the prior sees);
    ``cond`` / ``uncond`` go to the golden function (batched by it as it likes) and ``cond`` to the reward."""

    index: int
    text: torch.Tensor
    cond: Any
    uncond: Any = None
    text_mask: torch.Tensor | None = None
    prompt: str = ""

    def encoded(self) -> PromptItem:
        """Itself: its tensors are given (see Prompt)."""
        return self


class Prompt(Protocol):
    """What ``collect`` takes per prompt: the key of its pairs, and its PromptItem, asked for only when some of
    its pairs are missing (a host may encode the prompt then; the ComfyUI collector does)."""

    index: int

    def encoded(self) -> PromptItem: ...


def check_embedding(writer: ShardWriter, item: PromptItem) -> None:
    """EmbeddingMismatch when the folder holds another embedding (or token mask) for ``item``'s prompt. Only the rows
    of its tokens are compared: padding rows (mask 0) are never read."""
    stored = writer.stored_text(item.index)
    if stored is None:
        return
    (text, mask), now = stored, item.text.float().cpu()
    now_mask = torch.ones(now.shape[0], dtype=torch.bool) if item.text_mask is None else item.text_mask.bool().cpu()
    if now.shape != text.shape:
        difference = f"it holds [tokens, width] {list(text.shape)}, the encoder now gives {list(now.shape)}"
    elif not torch.equal(now_mask, mask):
        difference = f"it holds {int(mask.sum())} real tokens, the encoder now gives {int(now_mask.sum())}"
    else:
        change = float((now[mask] - text[mask]).norm() / text[mask].norm().clamp_min(1e-12))
        if not change > EMBEDDING_TOLERANCE:  # NaN never passes: the writer never stored one
            return
        difference = f"by {change:.0%} (relative L2; {EMBEDDING_TOLERANCE:.0%} allowed)"
    name = quoted(item.prompt, 80) if item.prompt else f"#{item.index}"
    raise EmbeddingMismatch(
        f"the embedding of prompt {name} in {writer.directory} differs from what the text encoder gives now "
        f"({difference}): the encoder, its layer or its settings changed since the folder was collected. A dataset "
        f"holds one encoder's embeddings: use the encoder the folder was collected with (in ComfyUI: that CLIP, "
        f"unchanged), or collect into a new folder"
    )


# (noise [B,C,H,W] (video: [B,C,T,H,W]) unit-variance, the prompt, the B seeds) -> golden noise, same shape and space
Golden = Callable[[torch.Tensor, PromptItem, list[int]], torch.Tensor]


def golden_function(denoiser: Denoiser, schedule: Schedule, config: GoldenConfig = GoldenConfig()) -> Golden:
    """The golden function of a host-free denoiser: ``noisear.golden.golden_noise`` with the prompt's cond/uncond."""

    def golden(noise: torch.Tensor, item: PromptItem, seeds: list[int]) -> torch.Tensor:
        return golden_noise(denoiser, schedule, noise, item.cond, item.uncond, config)

    return golden


def collect(
    golden: Golden,
    writer: ShardWriter,
    prompts: Sequence[Prompt],
    seeds_per_prompt: int,
    shape: Sequence[int],
    reward: Reward | None = None,
    margin: float = 0.0,
    batch_size: int = 8,
    first_seed: int = 0,
    progress: Progress | None = None,
    interrupt: Interrupt | None = None,
    probe: Prompt | None = None,
) -> dict[str, int]:
    """Write golden noise for every (prompt, j < seeds_per_prompt) not yet in ``writer`` (so it resumes after a kill).

    Pair (prompt, j) starts from seed ``pair_seed(first_seed, prompt.index, j)``, whose noise is
    ``standard_normal([1, *shape], [seed])`` (ComfyUI's RandomNoise draw of the seed, the same on every
    device); the writer's info must say ``seed_scheme=SEED_SCHEME``. ``shape`` is [C, H, W] ([C, T, H, W] for video). Up to
    ``batch_size`` seeds of one prompt go to ``golden`` together; ``interrupt`` is called before each
    batch, ``progress`` after it. A pair is kept when ``keep_improved`` with ``margin`` says so (all pairs
    without a reward). Returns counts: written, skipped (already present), rejected (by the reward
    filter; rejected pairs are not recorded, so a resumed run computes them again and rejects them again).

    Before any work: SizeMismatch when the writer's folder holds another ``shape``; EmbeddingMismatch when
    ``probe`` (a prompt the folder holds, encoded now) or any prompt encoded later has another embedding than the
    folder holds for it (see the module doc).
    """
    if writer.info.seed_scheme != SEED_SCHEME:
        raise DatasetError(
            f"collect draws seeds with pair_seed; make the writer with DatasetInfo(..., "
            f"seed_scheme={SEED_SCHEME!r}), got {writer.info.seed_scheme!r}"
        )
    if writer.item_shapes is not None and tuple(writer.item_shapes["noise"]) != tuple(shape):
        raise SizeMismatch(str(writer.directory), tuple(writer.item_shapes["noise"]), tuple(shape))
    if probe is not None:
        check_embedding(writer, probe.encoded())
    counts = {"written": 0, "skipped": 0, "rejected": 0}
    total, done = len(prompts) * seeds_per_prompt, 0
    for prompt in prompts:
        seeds = prompt_seeds(first_seed, prompt.index, seeds_per_prompt)
        todo = [s for s in seeds if not writer.has(prompt.index, s)]
        counts["skipped"] += len(seeds) - len(todo)
        done += len(seeds) - len(todo)
        if progress is not None:
            progress(done, total)
        if not todo:
            continue
        item = prompt.encoded()
        check_embedding(writer, item)
        for start in range(0, len(todo), batch_size):
            if interrupt is not None:
                interrupt()
            chunk = todo[start : start + batch_size]
            noise = start_noise(chunk, (len(chunk), *shape))
            golden_chunk = golden(noise, item, chunk).float().cpu()
            keep = (
                keep_improved(noise, golden_chunk, reward, item.cond, margin).cpu()
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
                    golden_chunk[keep],
                    [prompt.index] * count,
                    picked,
                    mask,
                    prompts={prompt.index: item.prompt} if item.prompt else None,
                )
                counts["written"] += count
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    writer.flush()
    return counts
