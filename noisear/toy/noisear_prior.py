"""The toy's NoiseAR prior, made as in the paper: golden-noise pairs (a distinct starting noise per (class, j))
-> likelihood training (the means learn from golden minus starting noise, noisear.train's control variate)
-> DPO with the classifier as the reward, all through noisear.train.

The "prompt" is the class: its text embedding is the one-hot vector [B, 1, 10], which the prior's
``dim_adapter`` (text_dim 10 -> d_model) turns into one cross-attention token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from ..config import NoiseARConfig
from ..golden import GoldenConfig
from ..model import NoiseAR
from ..train.collect import PromptItem, collect, golden_function
from ..train.data import SEED_SCHEME, DatasetInfo, PromptSet, ShardDataset, ShardWriter, shift_from_start
from ..train.dpo import DPOConfig, train_dpo
from ..train.likelihood import train_likelihood
from ..train.loop import TrainConfig
from .classifier import DigitClassifier
from .data import IMAGE_SHAPE, NUM_CLASSES
from .diffusion import Denoiser, ddim_sample, schedule, unconditional

PRIOR_CONFIG = NoiseARConfig(
    patch_size=2,
    channels=1,
    latent_height=8,
    latent_width=8,
    d_model=64,
    d_ff=128,
    n_layers=2,
    n_heads=4,
    text_dim=NUM_CLASSES,
    dropout=0.1,
)
GOLDEN = GoldenConfig(guidance_denoise=5.5, guidance_invert=1.0, margin=0.0)  # the paper's recipe
STEPS, GUIDANCE = 25, 1.0  # the regime the noise is made and scored for


def class_text(labels: torch.Tensor) -> torch.Tensor:
    """labels [B] -> the prior's text embedding [B, 1, 10] (one-hot)."""
    return torch.nn.functional.one_hot(labels, NUM_CLASSES).float()[:, None, :]


def class_prompts() -> PromptSet:
    """The ten classes as a PromptSet (index = class label)."""
    labels = torch.arange(NUM_CLASSES)
    return PromptSet(
        class_text(labels), torch.ones(NUM_CLASSES, 1, dtype=torch.bool), labels, tuple(f"digit {k}" for k in range(NUM_CLASSES))
    )


def classifier_reward(denoiser: Denoiser, classifier: DigitClassifier) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(noise [B,1,8,8], labels [B] or [1]) -> log-probability [B] the classifier gives the requested class
    on the image that noise makes (DDIM, STEPS steps, guidance GUIDANCE)."""

    @torch.no_grad()
    def reward(noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.expand(noise.shape[0])
        images = ddim_sample(denoiser, noise, labels, steps=STEPS, guidance=GUIDANCE)
        return classifier(images).log_softmax(-1).gather(1, labels[:, None])[:, 0]

    return reward


def collect_golden_pairs(
    denoiser: Denoiser,
    classifier: DigitClassifier,
    out_dir: str | Path,
    seeds_per_class: int,
    batch_size: int = 500,
    first_seed: int = 0,
) -> dict[str, int]:
    """Golden noise for seeds_per_class distinct starting noises of every class (pair_seed(first_seed, class, j)),
    kept where it raises the reward."""
    info = DatasetInfo(
        source_model="noisear.toy denoiser",
        prediction="epsilon",
        schedule="scaled_linear, trailing spacing",
        steps=STEPS,
        guidance_denoise=GOLDEN.guidance_denoise,
        guidance_invert=GOLDEN.guidance_invert,
        seed_scheme=SEED_SCHEME,
    )
    items = [
        PromptItem(
            index=k,
            text=class_text(torch.tensor([k]))[0],
            cond=torch.tensor([k]),
            uncond=unconditional(torch.tensor([k])),
            prompt=f"digit {k}",
        )
        for k in range(NUM_CLASSES)
    ]
    with ShardWriter(out_dir, info, shard_size=4096) as writer:
        return collect(
            golden_function(denoiser, schedule(STEPS), GOLDEN),
            writer,
            items,
            seeds_per_class,
            IMAGE_SHAPE,
            reward=classifier_reward(denoiser, classifier),
            margin=GOLDEN.margin,
            batch_size=batch_size,
            first_seed=first_seed,
        )


HELD_OUT_SEEDS = 0.1  # share of the starting noises held out: validation = unseen noises of every class


def train_prior(
    data_dir: str | Path, out_dir: str | Path, steps: int, seed: int = 0, lr: float = 2e-3, control_variate: bool = True
) -> tuple[NoiseAR, dict[str, float]]:
    """Train PRIOR_CONFIG on the golden pairs with HELD_OUT_SEEDS of the starting noises held out; returns the
    prior and its held-out metrics (noisear.train.metrics.held_out_metrics: NLL on unseen noises next to
    N(0, I) and the prompt-mean baseline, calibration, cosine of the mean with the class shift).

    ``control_variate``: the means learn from golden minus starting noise (noisear.train's control variate).
    Golden noise is its starting noise plus a per-class shift of ~0.045 per dimension; without it, the
    starting noise's own variance swamps that shift in every batch and the prior learns nothing here."""
    config = TrainConfig(
        out_dir=str(out_dir),
        steps=steps,
        batch_size=256,
        lr=lr,
        warmup_steps=50,
        weight_decay=0.0,
        seed=seed,
        validation_fraction=0.0,
        validation_seed_fraction=HELD_OUT_SEEDS,
        checkpoint_every=10**9,
        device="cpu",
        log_every=50,
        progress=False,
    )
    prior = train_likelihood(data_dir, config, PRIOR_CONFIG, control_variate=control_variate)
    records = [json.loads(line) for line in (Path(out_dir) / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    held_out = [r for r in records if r["kind"] == "validation"][-1]
    return prior, {k: v for k, v in held_out.items() if k not in ("kind", "step")}


def prompt_mean_shift(data_dir: str | Path) -> torch.Tensor:
    """[10, 1, 8, 8]: per class, the mean of golden noise minus its starting noise over the training pairs
    (the held-out seeds excluded), the "Gaussian + prompt-mean shift" bar. No AR model."""
    dataset = ShardDataset(data_dir)
    total, count = torch.zeros(NUM_CLASSES, *IMAGE_SHAPE, dtype=torch.float64), torch.zeros(NUM_CLASSES)
    for batch in dataset.iterate("train", 0.0, 4096, HELD_OUT_SEEDS):
        delta = shift_from_start(batch).double()
        total.index_add_(0, batch.prompt_index, delta)
        count += torch.bincount(batch.prompt_index, minlength=NUM_CLASSES)
    return (total / count.view(-1, 1, 1, 1)).float()


def fine_tune_dpo(
    prior: NoiseAR, denoiser: Denoiser, classifier: DigitClassifier, out_dir: str | Path, steps: int, seed: int = 0
) -> NoiseAR:
    """DPO from ``prior``: each round draws 16 noises per class at temperature 1 and prefers the one whose
    image the classifier finds most like the class over the least."""
    reward = classifier_reward(denoiser, classifier)
    prompts = class_prompts()
    config = TrainConfig(
        out_dir=str(out_dir),
        steps=steps,
        batch_size=NUM_CLASSES,
        lr=1e-4,
        warmup_steps=10,
        weight_decay=0.0,
        seed=seed,
        validation_fraction=0.0,
        checkpoint_every=10**9,
        device="cpu",
        log_every=20,
    )
    dpo = DPOConfig(beta=0.1, rollouts=16, prompts_per_round=NUM_CLASSES, steps_per_round=1, temperature=1.0)
    return train_dpo(prior, prompts, lambda noise, p: reward(noise, p.index), config, dpo)
