"""A small class-conditional diffusion model on 8x8 digits: epsilon prediction, classifier-free
guidance learnt by label dropout, Stable Diffusion's scaled-linear schedule, DDIM sampling and
DDIM inversion.

Shapes: images and noise [B, 1, 8, 8]; labels [B] int64 in 0..9 (NULL_LABEL = unconditional);
timesteps are integers in 0..999. Noise lives in unit-variance space, like an SD latent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..golden import Level, Schedule, ddim_step, guided, scaled_linear_alphas_cumprod
from .data import IMAGE_SHAPE, NUM_CLASSES, Digits
from .fit import fit

NULL_LABEL = NUM_CLASSES  # the "empty prompt" of classifier-free guidance
NUM_TRAIN_TIMESTEPS = 1000
# Stable Diffusion's scaled-linear schedule: alpha-bar at t=999 is 0.0047, so the noisiest step still
# keeps sqrt(0.0047) = 7% of the image and the initial noise matters.
ALPHAS_CUMPROD = scaled_linear_alphas_cumprod(NUM_TRAIN_TIMESTEPS)
CLEAN = Level(timestep=-1.0, alpha=1.0, sigma=0.0)  # where the last DDIM step lands


def schedule(steps: int) -> Schedule:
    """The DDIM levels of a ``steps``-step run, trailing spacing (999, 959, ..., 39 for 25 steps)."""
    return Schedule.vp(ALPHAS_CUMPROD, steps, prediction="epsilon", spacing="trailing")


@dataclass(frozen=True)
class DenoiserConfig:
    hidden: int = 128
    blocks: int = 3
    time_dim: int = 64


class Denoiser(nn.Module):
    """eps(x_t, t, label): a residual MLP over the 64 pixels, modulated by time and class embeddings."""

    def __init__(self, config: DenoiserConfig = DenoiserConfig()) -> None:
        super().__init__()
        self.config = c = config
        pixels = math.prod(IMAGE_SHAPE)
        self.time_mlp = nn.Sequential(nn.Linear(c.time_dim, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden))
        self.label_embedding = nn.Embedding(NUM_CLASSES + 1, c.hidden)
        self.input = nn.Linear(pixels, c.hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(c.hidden), nn.Linear(c.hidden, 2 * c.hidden), nn.SiLU(), nn.Linear(2 * c.hidden, c.hidden))
            for _ in range(c.blocks)
        )
        self.modulation = nn.ModuleList(nn.Linear(c.hidden, c.hidden) for _ in range(c.blocks))
        self.output = nn.Sequential(nn.LayerNorm(c.hidden), nn.Linear(c.hidden, pixels))
        nn.init.zeros_(self.output[1].weight)
        nn.init.zeros_(self.output[1].bias)

    def time_features(self, t: torch.Tensor) -> torch.Tensor:
        """[B] timesteps -> [B, time_dim] sinusoidal features."""
        half = self.config.time_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        angles = t.float()[:, None] * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """x [B,1,8,8], t [B], labels [B] -> eps estimate [B,1,8,8]."""
        cond = F.silu(self.time_mlp(self.time_features(t)) + self.label_embedding(labels))
        h = self.input(x.flatten(1))
        for block, modulation in zip(self.blocks, self.modulation):
            h = h + block(h + modulation(cond))
        return self.output(h).view_as(x)


def unconditional(labels: torch.Tensor) -> torch.Tensor:
    """The null labels that stand for "no prompt" in classifier-free guidance, shape of ``labels``."""
    return torch.full_like(labels, NULL_LABEL)


@torch.no_grad()
def ddim_sample(
    model: Denoiser, noise: torch.Tensor, labels: torch.Tensor, *, steps: int = 25, guidance: float = 1.0
) -> torch.Tensor:
    """Initial noise [B,1,8,8] -> images [B,1,8,8] clamped to [-1, 1] with ``steps`` DDIM steps."""
    levels = schedule(steps).levels
    x = noise
    for level, target in zip(levels, levels[1:] + (CLEAN,)):
        eps = guided(model, x, level.timestep, labels, unconditional(labels), guidance)
        x = ddim_step(x, eps, level, target, "epsilon")
    return x.clamp(-1.0, 1.0)


@torch.no_grad()
def ddim_invert(
    model: Denoiser, images: torch.Tensor, labels: torch.Tensor, *, steps: int = 25, guidance: float = 1.0
) -> torch.Tensor:
    """Images [B,1,8,8] -> the initial noise that DDIM sampling maps back to them (approximately).

    Walks the sampling levels upwards, querying the model at the current point and its level's
    timestep (the clean image is queried at the lowest sampling timestep).
    """
    levels = schedule(steps).levels[::-1]
    x = images
    for source, target in zip((CLEAN,) + levels[:-1], levels):
        eps = guided(model, x, max(source.timestep, levels[0].timestep), labels, unconditional(labels), guidance)
        x = ddim_step(x, eps, source, target, "epsilon")
    return x


# Training ----------------------------------------------------------------------------------------
ExtraLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class DenoiserTraining:
    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    label_dropout: float = 0.1
    seed: int = 0


def train_denoiser(
    train: Digits,
    config: DenoiserTraining = DenoiserTraining(),
    model_config: DenoiserConfig = DenoiserConfig(),
    extra_loss: ExtraLoss | None = None,
) -> Denoiser:
    """Epsilon-prediction MSE with uniform timesteps and label dropout (for classifier-free guidance).

    ``extra_loss(x0_pred, labels, alpha_bar, generator)`` is added to the loss when given (Method 1);
    x0_pred [B,1,8,8] is the model's clean-image estimate, alpha_bar [B,1,1,1] the noise level.
    """
    torch.manual_seed(config.seed)
    model = Denoiser(model_config)

    def loss(batch: list[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        images, labels = batch
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (images.shape[0],), generator=generator)
        a = ALPHAS_CUMPROD[t].float().view(-1, 1, 1, 1)
        eps = torch.randn(images.shape, generator=generator)
        noisy = a.sqrt() * images + (1 - a).sqrt() * eps
        drop = torch.rand(labels.shape, generator=generator) < config.label_dropout
        eps_pred = model(noisy, t, torch.where(drop, NULL_LABEL, labels))
        total = F.mse_loss(eps_pred, eps)
        if extra_loss is not None:
            x0_pred = (noisy - (1 - a).sqrt() * eps_pred) / a.sqrt()
            total = total + extra_loss(x0_pred, labels, a, generator)
        return total

    fit(
        model,
        [train.images, train.labels],
        loss,
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        desc="denoiser",
    )
    return model
