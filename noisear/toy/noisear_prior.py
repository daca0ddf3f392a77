"""The toy testbeds' NoiseAR priors, made as in the paper, all through noisear.train: golden-noise pairs (a
distinct starting noise per (prompt, j)) -> likelihood training (the means learn from golden minus starting noise,
noisear.train's control variate) -> DPO with a reward model; and the baselines they are measured against.

What differs between testbeds comes in as arguments: the golden function, the prompts (a text embedding [T, D]
with its mask per prompt, as the real priors read them), the reward and the prior's config.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..config import NoiseARConfig
from ..golden import GoldenConfig
from ..model import NoiseAR
from ..train.collect import Golden, PromptItem, Reward, collect
from ..train.data import (
    SEED_SCHEME,
    Batch,
    DatasetInfo,
    PromptSet,
    ShardDataset,
    ShardWriter,
    shift_from_start,
    validation_seed,
)
from ..train.dpo import DPOConfig, train_dpo
from ..train.likelihood import train_likelihood
from ..train.loop import TrainConfig
from ..train.metrics import PromptCovarianceBaseline, PromptMeanBaseline, nll_per_dim, standard_normal_nll_per_dim

HELD_OUT_SEEDS = 0.1  # share of the starting noises held out: validation = unseen noises of every prompt
HELD_OUT_FIRST_SEED = 1  # training pairs come from pair_seed(0, prompt, j): pair_seed(1, ...) are unseen noises


def collect_pairs(
    out_dir: str | Path,
    golden: Golden,
    items: Sequence[PromptItem],
    per_prompt: int,
    shape: Sequence[int],
    info: DatasetInfo,
    reward: Reward | None = None,
    first_seed: int = 0,
    batch_size: int = 500,
    shard_size: int = 4096,
) -> dict[str, int]:
    """Golden noise for ``per_prompt`` distinct starting noises of every item (pair_seed(first_seed, prompt, j)),
    kept where ``reward`` rises (all without one), written as shards; returns noisear.train.collect's counts."""
    with ShardWriter(out_dir, info, shard_size=shard_size) as writer:
        return collect(golden, writer, items, per_prompt, shape, reward=reward, batch_size=batch_size, first_seed=first_seed)


def dataset_info(source_model: str, golden: GoldenConfig, golden_steps: int = 1) -> DatasetInfo:
    """The toy's DatasetInfo (DDIM, 25 steps, scaled-linear schedule, trailing spacing); ``golden_steps`` in its
    extra when more than the paper's one."""
    return DatasetInfo(
        source_model=source_model,
        prediction="epsilon",
        schedule="scaled_linear, trailing spacing",
        steps=25,
        guidance_denoise=golden.guidance_denoise,
        guidance_invert=golden.guidance_invert,
        seed_scheme=SEED_SCHEME,
        extra={"golden_steps": golden_steps} if golden_steps > 1 else {},
    )


def cut_prefix(prior: NoiseAR) -> NoiseAR:
    """Make ``prior`` non-autoregressive: its patch encoder's last layer is zeroed and frozen, so every patch is
    predicted from its position and the prompt only (a prompt-conditioned diagonal Gaussian with the same network
    and training). The zeros are in the weights, so a saved and reloaded prior stays non-autoregressive."""
    last = prior.latent_patch_encoder[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    last.requires_grad_(False)
    return prior


def is_autoregressive(prior: NoiseAR) -> bool:
    """False for a prior made by :func:`cut_prefix`."""
    last = prior.latent_patch_encoder[-1]
    return bool(last.weight.any() or last.bias.any())


def train_prior(
    data_dir: str | Path,
    out_dir: str | Path,
    config: NoiseARConfig,
    steps: int,
    seed: int = 0,
    lr: float = 2e-3,
    control_variate: bool = True,
    autoregressive: bool = True,
) -> tuple[NoiseAR, dict[str, float]]:
    """Train ``config`` on the golden pairs of ``data_dir`` with HELD_OUT_SEEDS of the starting noises held out;
    returns the prior and its held-out metrics (noisear.train.metrics.held_out_metrics: NLL on unseen noises
    next to N(0, I) and the prompt-mean baseline, calibration, cosine of the mean with the prompt shift).

    ``control_variate``: the means learn from golden minus starting noise. ``autoregressive=False`` trains the
    same network with its prefix cut (:func:`cut_prefix`, train_likelihood's ``prepare``)."""
    train_config = TrainConfig(
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
    prepare = None if autoregressive else cut_prefix
    prior = train_likelihood(data_dir, train_config, config, control_variate=control_variate, prepare=prepare)
    records = [json.loads(line) for line in (Path(out_dir) / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    held_out = [r for r in records if r["kind"] == "validation"][-1]
    return prior, {k: v for k, v in held_out.items() if k not in ("kind", "step")}


def prompt_mean_shift(data_dir: str | Path, prompts: int) -> torch.Tensor:
    """[prompts, C, H, W]: per prompt index, the mean of golden noise minus its starting noise over the training
    pairs (the held-out seeds excluded): the "Gaussian + prompt-mean shift" bar of a testbed whose prompts are
    all trained on. No AR model."""
    dataset = ShardDataset(data_dir)
    total, count = torch.zeros(prompts, *dataset.item_shapes["noise"], dtype=torch.float64), torch.zeros(prompts)
    for batch in dataset.iterate("train", 0.0, 4096, HELD_OUT_SEEDS):
        delta = shift_from_start(batch).double()
        total.index_add_(0, batch.prompt_index, delta)
        count += torch.bincount(batch.prompt_index, minlength=prompts)
    return (total / count.view(-1, 1, 1, 1)).float()


SHRINKAGES = (0.0, 0.5, 0.8, 0.9, 0.95, 1.0)  # of the full covariance towards its diagonal (1: a diagonal Gaussian)


def covariance_baseline(data_dir: str | Path, mean_of: Callable | None = None) -> PromptCovarianceBaseline:
    """noisear.train.metrics.PromptCovarianceBaseline fitted on the training pairs (the held-out seeds excluded),
    around its linear mean or ``mean_of``'s. Its shrinkage is the one of SHRINKAGES with the best likelihood on a
    second tenth of the starting noises, held out from a first fit: a d x d covariance from a few thousand pairs
    costs more likelihood in estimation noise than a small structure gives, unless it is shrunk."""
    dataset = ShardDataset(data_dir)
    inner = PromptCovarianceBaseline(dataset, 0.0, seed_fraction=2 * HELD_OUT_SEEDS, mean_of=mean_of)
    batch = Batch.concat(list(dataset.iterate("validation", 0.0, 4096, 2 * HELD_OUT_SEEDS)))
    inner_rows = torch.tensor([not validation_seed(int(seed), HELD_OUT_SEEDS) for seed in batch.seed])
    inner_batch = batch.rows(inner_rows)
    scores = {}
    for shrinkage in SHRINKAGES:
        inner.shrinkage = shrinkage
        scores[shrinkage] = float(inner.nll_per_dim(inner_batch).mean())
    best = min(scores, key=scores.get)
    return PromptCovarianceBaseline(dataset, 0.0, seed_fraction=HELD_OUT_SEEDS, shrinkage=best, mean_of=mean_of)


def linear_baselines(data_dir: str | Path) -> tuple[PromptMeanBaseline, PromptCovarianceBaseline]:
    """noisear.train's prompt-mean baseline (mean linear in the pooled prompt embedding) and its full-covariance
    extension (:func:`covariance_baseline`), fitted on the training pairs (the held-out seeds excluded)."""
    dataset = ShardDataset(data_dir)
    return PromptMeanBaseline(dataset, 0.0, seed_fraction=HELD_OUT_SEEDS), covariance_baseline(data_dir)


def prior_mean(prior: NoiseAR, shape: Sequence[int]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(text, mask) -> the prior's mean noise (its sample at temperature 0) [B, *shape]."""

    @torch.no_grad()
    def mean(text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        return prior.sample(text, torch.zeros(len(text), *shape), temperature=0.0, text_mask=text_mask)

    return mean


def load_pairs(data_dir: str | Path) -> Batch:
    """Every pair of a dataset as one batch."""
    dataset = ShardDataset(data_dir)
    return Batch.concat(list(dataset.iterate(batch_size=4096)))


@torch.no_grad()
def prior_nll(prior: NoiseAR, batch: Batch, chunk: int = 1024) -> torch.Tensor:
    """[B] nats per dimension of the batch's noise under ``prior``."""
    dims = batch.noise[0].numel()
    parts = [
        nll_per_dim(prior.log_prob(batch.text[i : i + chunk], batch.noise[i : i + chunk], batch.text_mask[i : i + chunk]), dims)
        for i in range(0, len(batch), chunk)
    ]
    return torch.cat(parts).double()


def nll_values(models: dict[str, Callable[[Batch], torch.Tensor]], batch: Batch) -> dict[str, torch.Tensor]:
    """{model: [B] NLL nats/dim} for each model (batch -> [B] NLL; NaN where a model has no answer, e.g. a
    per-prompt model on an unseen prompt)."""
    return {name: nll(batch).double() for name, nll in models.items()}


def nll_table(values: dict[str, torch.Tensor], groups: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """{model: {group: mean NLL}} of :func:`nll_values` on each group of rows (mask [B]) where the model answers."""
    return {
        name: {group: float(v[rows].mean()) for group, rows in groups.items() if v[rows].isfinite().any()}
        for name, v in values.items()
    }


def prompts_better(values: dict[str, torch.Tensor], batch: Batch, a: str, b: str, rows: torch.Tensor) -> tuple[int, int]:
    """On how many of the prompts of ``rows`` model a's mean NLL is below model b's, and of how many prompts."""
    prompts = batch.prompt_index[rows].unique()
    better = sum(
        bool(values[a][rows & (batch.prompt_index == p)].mean() < values[b][rows & (batch.prompt_index == p)].mean())
        for p in prompts
    )
    return better, len(prompts)


def standard_normal(batch: Batch) -> torch.Tensor:
    return standard_normal_nll_per_dim(batch.noise)


def fine_tune_dpo(
    prior: NoiseAR,
    prompts: PromptSet,
    reward: Callable[[torch.Tensor, PromptSet], torch.Tensor],
    out_dir: str | Path,
    steps: int,
    seed: int = 0,
) -> NoiseAR:
    """DPO from a copy of ``prior`` (which stays as it is): each round draws 16 noises for each of 10 prompts at
    temperature 1 and prefers the one ``reward`` (noise [B,...], the prompts -> [B]) scores highest over the
    lowest."""
    config = TrainConfig(
        out_dir=str(out_dir),
        steps=steps,
        batch_size=10,
        lr=1e-4,
        warmup_steps=10,
        weight_decay=0.0,
        seed=seed,
        validation_fraction=0.0,
        checkpoint_every=10**9,
        device="cpu",
        log_every=20,
    )
    dpo = DPOConfig(beta=0.1, rollouts=16, prompts_per_round=10, steps_per_round=1, temperature=1.0)
    return train_dpo(copy.deepcopy(prior), prompts, reward, config, dpo)
