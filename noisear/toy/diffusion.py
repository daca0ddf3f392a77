"""The toy's small conditional diffusion models: epsilon prediction, classifier-free guidance learnt by
condition dropout, Stable Diffusion's scaled-linear schedule, DDIM sampling and DDIM inversion.

- :class:`Denoiser` (the digits testbed): images [B, 1, 8, 8], conditioned on a class label [B] int64 in
  0..9 (NULL_LABEL = unconditional); a residual MLP over the pixels.
- :class:`PromptDenoiser` (the layout testbed): canvases [B, 1, 16, 16], conditioned on a token prompt
  [B, T] through a small learnt :class:`TextEncoder` (the empty prompt = unconditional); a transformer over
  8x8 patches.

Both take (x, t, condition) and give the condition's unconditional counterpart (``unconditional``).
Timesteps are integers in 0..999. Noise lives in unit-variance space, like an SD latent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..golden import GoldenConfig, Level, Schedule, ddim_step, guided, scaled_linear_alphas_cumprod
from .data import IMAGE_SHAPE, NUM_CLASSES, Digits
from .fit import fit
from .layout import CANVAS_SHAPE, DIGIT_SIZE, MAX_TOKENS, PAD, VOCABULARY, empty_tokens

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

    def unconditional(self, labels: torch.Tensor) -> torch.Tensor:
        return unconditional(labels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """x [B,1,8,8], t [B], labels [B] -> eps estimate [B,1,8,8]."""
        cond = F.silu(self.time_mlp(time_features(t, self.config.time_dim)) + self.label_embedding(labels))
        h = self.input(x.flatten(1))
        for block, modulation in zip(self.blocks, self.modulation):
            h = h + block(h + modulation(cond))
        return self.output(h).view_as(x)


def time_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[B] timesteps -> [B, dim] sinusoidal features."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


@dataclass(frozen=True)
class PromptDenoiserConfig:
    hidden: int = 128
    blocks: int = 3
    heads: int = 4
    time_dim: int = 64
    text_dim: int = 32  # the TextEncoder's width: what a NoiseAR prior reads as its text


class TextEncoder(nn.Module):
    """token ids [B, T] (PAD after the prompt) -> (text [B, T, D], mask [B, T] bool): embeddings and learnt
    positions through one pre-norm self-attention block, padding zeroed. Trained with the denoiser; a NoiseAR
    prior reads its output as a real prior reads a text encoder's hidden states."""

    def __init__(self, dim: int, vocabulary: int = len(VOCABULARY), max_tokens: int = MAX_TOKENS) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, dim)
        self.position = nn.Parameter(0.02 * torch.randn(max_tokens, dim))
        self.attention_norm, self.mlp_norm, self.output_norm = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = ids != PAD
        h = self.embedding(ids) + self.position[: ids.shape[1]]
        x = self.attention_norm(h)
        h = h + self.attention(x, x, x, key_padding_mask=~mask, need_weights=False)[0]
        h = h + self.mlp(self.mlp_norm(h))
        return self.output_norm(h) * mask[..., None], mask


class PromptDenoiser(nn.Module):
    """eps(x_t, t, prompt) on 16x16 canvases: the four 8x8 patches as tokens (with learnt position embeddings)
    through pre-norm transformer blocks; time and the prompt (masked mean of its encoded tokens) are added to
    every token before each block. The network predicts v = sqrt(a) eps - sqrt(1-a) x0 and returns
    eps = sqrt(a) v + sqrt(1-a) x_t: at the noisiest steps, where the layout is decided, eps is nearly x_t
    itself and the network only has to give the small x0 part."""

    def __init__(self, config: PromptDenoiserConfig = PromptDenoiserConfig()) -> None:
        super().__init__()
        self.config = c = config
        patch, tokens = DIGIT_SIZE**2, (CANVAS_SHAPE[1] // DIGIT_SIZE) * (CANVAS_SHAPE[2] // DIGIT_SIZE)
        self.time_mlp = nn.Sequential(nn.Linear(c.time_dim, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden))
        self.text_encoder = TextEncoder(c.text_dim)
        self.text_projection = nn.Linear(c.text_dim, c.hidden)
        self.input = nn.Linear(patch, c.hidden)
        self.position = nn.Parameter(
            torch.randn(tokens, c.hidden)
        )  # as large as a patch embedding: tokens distinct from the start
        self.modulation = nn.ModuleList(nn.Linear(c.hidden, c.hidden) for _ in range(c.blocks))
        self.attention_norms = nn.ModuleList(nn.LayerNorm(c.hidden) for _ in range(c.blocks))
        self.attentions = nn.ModuleList(nn.MultiheadAttention(c.hidden, c.heads, batch_first=True) for _ in range(c.blocks))
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(c.hidden), nn.Linear(c.hidden, 2 * c.hidden), nn.SiLU(), nn.Linear(2 * c.hidden, c.hidden))
            for _ in range(c.blocks)
        )
        self.output = nn.Sequential(nn.LayerNorm(c.hidden), nn.Linear(c.hidden, patch))
        nn.init.zeros_(self.output[1].weight)
        nn.init.zeros_(self.output[1].bias)

    def unconditional(self, ids: torch.Tensor) -> torch.Tensor:
        return empty_tokens(len(ids))

    def forward(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """x [B,1,16,16], t [B], token ids [B,T] -> eps estimate [B,1,16,16]."""
        text, mask = self.text_encoder(ids)
        prompt = self.text_projection(text.sum(1) / mask.sum(1, keepdim=True).clamp_min(1))
        cond = F.silu(self.time_mlp(time_features(t, self.config.time_dim)) + prompt)[:, None]
        patches = x.unflatten(2, (2, DIGIT_SIZE)).unflatten(4, (2, DIGIT_SIZE)).permute(0, 2, 4, 1, 3, 5).flatten(1, 2)
        h = self.input(patches.flatten(2)) + self.position
        for modulation, norm, attention, mlp in zip(self.modulation, self.attention_norms, self.attentions, self.mlps):
            h = h + modulation(cond)
            y = norm(h)
            h = h + attention(y, y, y, need_weights=False)[0]
            h = h + mlp(h)
        v = self.output(h).view(-1, 2, 2, 1, DIGIT_SIZE, DIGIT_SIZE).permute(0, 3, 1, 4, 2, 5).reshape_as(x)
        a = ALPHAS_CUMPROD[t.long()].to(x.dtype).view(-1, 1, 1, 1)
        return a.sqrt() * v + (1 - a).sqrt() * x


def unconditional(labels: torch.Tensor) -> torch.Tensor:
    """The null labels that stand for "no prompt" in classifier-free guidance, shape of ``labels``."""
    return torch.full_like(labels, NULL_LABEL)


Model = Denoiser | PromptDenoiser


@torch.no_grad()
def ddim_walk(model: Model, x: torch.Tensor, condition: torch.Tensor, path: Sequence[Level], guidance: float) -> torch.Tensor:
    """Deterministic DDIM moves of x [B,1,S,S] along the levels of ``path`` (down: sampling, up: inversion), the
    model queried at each move's starting level (the clean level at the lowest timestep of the path)."""
    lowest = min(level.timestep for level in path if level is not CLEAN)
    for source, target in zip(path, path[1:]):
        eps = guided(model, x, max(source.timestep, lowest), condition, model.unconditional(condition), guidance)
        x = ddim_step(x, eps, source, target, "epsilon")
    return x


def ddim_sample(
    model: Model, noise: torch.Tensor, condition: torch.Tensor, *, steps: int = 25, guidance: float = 1.0
) -> torch.Tensor:
    """Initial noise [B,1,S,S] -> images [B,1,S,S] clamped to [-1, 1] with ``steps`` DDIM steps."""
    return ddim_walk(model, noise, condition, schedule(steps).levels + (CLEAN,), guidance).clamp(-1.0, 1.0)


def ddim_invert(
    model: Model, images: torch.Tensor, condition: torch.Tensor, *, steps: int = 25, guidance: float = 1.0
) -> torch.Tensor:
    """Images [B,1,S,S] -> the initial noise that DDIM sampling maps back to them (approximately): the sampling
    levels walked upwards from the clean image."""
    return ddim_walk(model, images, condition, (CLEAN,) + schedule(steps).levels[::-1], guidance)


def multistep_golden(
    model: Model, noise: torch.Tensor, condition: torch.Tensor, config: GoldenConfig, golden_steps: int, *, steps: int = 25
) -> torch.Tensor:
    """Golden noise with ``golden_steps`` DDIM steps down at w_l (config.guidance_denoise) and as many inversion
    steps back up at w_w (config.guidance_invert), on the ``steps``-step schedule: noise [B,1,S,S] -> [B,1,S,S].

    One step is the paper's recipe (noisear.golden.golden_noise, which queries its inversion at t_T instead).
    With more steps the model's x0 prediction has committed to a layout before the way back, so the golden
    noise holds that choice; the layout testbed uses 10 of 25."""
    if not 1 <= golden_steps < steps:
        raise ValueError(f"golden_steps must be from 1 to {steps - 1} (fewer than the schedule's steps), got {golden_steps}")
    path = schedule(steps).levels[: golden_steps + 1]
    x = ddim_walk(model, noise, condition, path, config.guidance_denoise)
    return ddim_walk(model, x, condition, path[::-1], config.guidance_invert)


# Training ----------------------------------------------------------------------------------------
ExtraLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
# (digit images [B,1,8,8], labels [B], generator) -> (training images [B,1,S,S], conditions [B] or [B,T])
Conditioning = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def class_conditioning(
    images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits testbed's: the digit and its label as they are."""
    return images, labels


@dataclass(frozen=True)
class DenoiserTraining:
    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    label_dropout: float = 0.1
    seed: int = 0
    # "eps": the MSE of eps; "v": the MSE of v = sqrt(a) eps - sqrt(1-a) x0, i.e. the eps MSE / a, which weighs
    # the noisiest steps (where the layout is decided and the eps MSE barely sees it) like the x0 MSE
    loss: str = "eps"


def train_denoiser(
    train: Digits,
    config: DenoiserTraining = DenoiserTraining(),
    model_config: DenoiserConfig | PromptDenoiserConfig = DenoiserConfig(),
    extra_loss: ExtraLoss | None = None,
    conditioning: Conditioning = class_conditioning,
) -> Denoiser | PromptDenoiser:
    """Epsilon-prediction MSE with uniform timesteps and condition dropout (for classifier-free guidance).

    A DenoiserConfig makes a Denoiser, a PromptDenoiserConfig a PromptDenoiser. ``conditioning`` turns each
    batch of training digits into images and their conditions (the layout testbed places them on a canvas
    and draws a prompt). ``extra_loss(x0_pred, labels, alpha_bar, generator)`` is added to the loss when
    given (Method 1); x0_pred [B,1,S,S] is the model's clean-image estimate, alpha_bar [B,1,1,1] the noise
    level.
    """
    torch.manual_seed(config.seed)
    model = PromptDenoiser(model_config) if isinstance(model_config, PromptDenoiserConfig) else Denoiser(model_config)

    def loss(batch: list[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        images, condition = conditioning(*batch, generator)
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (images.shape[0],), generator=generator)
        a = ALPHAS_CUMPROD[t].float().view(-1, 1, 1, 1)
        eps = torch.randn(images.shape, generator=generator)
        noisy = a.sqrt() * images + (1 - a).sqrt() * eps
        drop = torch.rand(len(condition), generator=generator) < config.label_dropout
        dropped = torch.where(drop.view(-1, *[1] * (condition.ndim - 1)), model.unconditional(condition), condition)
        eps_pred = model(noisy, t, dropped)
        total = ((eps_pred - eps).square() / a).mean() if config.loss == "v" else F.mse_loss(eps_pred, eps)
        if extra_loss is not None:
            x0_pred = (noisy - (1 - a).sqrt() * eps_pred) / a.sqrt()
            total = total + extra_loss(x0_pred, condition, a, generator)
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
