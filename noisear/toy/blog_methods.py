"""The blog's two uses of an autoregressive image prior ("Reimagining Diffusion Models: Autoregressive
Priors for Efficient Initialization").

Method 1, AR consistency in training: L = L_diff + lambda * alpha_bar_t * ||x0_pred - x0_AR||^2, where
x0_AR is a pixel-prior sample of the same class. The factor alpha_bar_t is ours: x0_pred =
(x_t - sqrt(1-a) eps_pred) / sqrt(a) amplifies the eps error by up to 1/sqrt(a) = 15 at t = 999, so the
plain term would be dominated by the noisiest steps; with it the term is the eps-space error that the
same x0 mismatch causes at that noise level.

Method 2, AR prior blending at inference: x_T = alpha * x0_AR + (1 - alpha) * eta, the "linear" mode of
noisear.mixing.blend.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..mixing import blend
from .data import NUM_CLASSES, Digits
from .diffusion import Denoiser, DenoiserTraining, ExtraLoss, train_denoiser
from .pixel_prior import PixelPrior


@dataclass(frozen=True)
class ConsistencyConfig:
    weight: float = 0.1  # lambda
    bank_per_class: int = 200  # pixel-prior samples drawn once per class before training
    seed: int = 0


def sample_bank(prior: PixelPrior, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [10*per_class,1,8,8], labels) drawn from the pixel prior, class by class."""
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    return prior.sample(labels, torch.Generator().manual_seed(seed)), labels


def consistency_loss(bank: torch.Tensor, bank_labels: torch.Tensor, weight: float) -> ExtraLoss:
    """Method 1's extra term for train_denoiser: for each item a random bank image of its class."""
    by_class = [bank[bank_labels == k] for k in range(NUM_CLASSES)]
    per_class = min(len(images) for images in by_class)
    table = torch.stack([images[:per_class] for images in by_class])  # [10, n, 1, 8, 8]

    def loss(x0_pred: torch.Tensor, labels: torch.Tensor, alpha_bar: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        pick = torch.randint(0, per_class, labels.shape, generator=generator)
        x0_ar = table[labels, pick]
        return weight * (alpha_bar * (x0_pred - x0_ar).square()).mean()

    return loss


def train_consistent_denoiser(
    train: Digits,
    prior: PixelPrior,
    config: ConsistencyConfig = ConsistencyConfig(),
    training: DenoiserTraining = DenoiserTraining(),
) -> Denoiser:
    """Method 1: the same denoiser and training as the baseline, plus the AR consistency term."""
    bank, bank_labels = sample_bank(prior, config.bank_per_class, config.seed)
    return train_denoiser(train, training, extra_loss=consistency_loss(bank, bank_labels, config.weight))


def ar_blend_noise(
    prior: PixelPrior, labels: torch.Tensor, eta: torch.Tensor, alpha: float, generator: torch.Generator
) -> torch.Tensor:
    """Method 2: x_T = alpha * x0_AR + (1 - alpha) * eta for eta [B,1,8,8] and a fresh x0_AR per item."""
    return blend(prior.sample(labels, generator), eta, alpha, mode="linear")
