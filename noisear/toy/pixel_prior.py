"""The blog's autoregressive image prior: p(pixels | class) over the 64 pixels in raster order.

A MADE-style masked MLP (the dense form of PixelCNN's masked convolutions): each pixel's 17-way
categorical over the levels 0..16 sees only the pixels before it and the class. Sampling takes 64
passes; ``sample`` returns images in [-1, 1] like the dataset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data import IMAGE_SHAPE, NUM_CLASSES, PIXEL_LEVELS, Digits, levels_to_pixels, pixels_to_levels, random_shift
from .fit import fit

PIXELS = math.prod(IMAGE_SHAPE)


@dataclass(frozen=True)
class PixelPriorConfig:
    hidden: int = 256
    layers: int = 2


@dataclass(frozen=True)
class PixelPriorTraining:
    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-2
    seed: int = 0


class MaskedLinear(nn.Linear):
    """Linear layer whose weight is multiplied by a fixed 0/1 mask [out, in]."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class PixelPrior(nn.Module):
    """logits [B, 64, 17] of each pixel's level given the earlier pixels and the class."""

    def __init__(self, config: PixelPriorConfig = PixelPriorConfig()) -> None:
        super().__init__()
        self.config = c = config
        # MADE degrees: input pixel i has degree i+1; hidden unit degrees cycle through 1..63; the
        # output of pixel j may use hidden units of degree <= j, so it never sees pixel j or later.
        inputs = torch.arange(1, PIXELS + 1)
        hidden = torch.arange(c.hidden) % (PIXELS - 1) + 1
        masks = [hidden[:, None] >= inputs[None, :]] + [hidden[:, None] >= hidden[None, :]] * (c.layers - 1)
        self.layers = nn.ModuleList(MaskedLinear(mask) for mask in masks)
        self.class_embedding = nn.Embedding(NUM_CLASSES, c.hidden)
        output_mask = (inputs[:, None] > hidden[None, :]).repeat_interleave(PIXEL_LEVELS, dim=0)
        self.output = MaskedLinear(output_mask)
        self.class_output = nn.Embedding(NUM_CLASSES, PIXELS * PIXEL_LEVELS)  # the class reaches every pixel

    def hidden(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """pixels [B,1,8,8] in [-1,1], labels [B] -> last hidden layer [B, hidden]."""
        h = pixels.flatten(1)
        for k, layer in enumerate(self.layers):
            h = F.relu(layer(h) + (self.class_embedding(labels) if k == 0 else 0))
        return h

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """pixels [B,1,8,8] in [-1,1], labels [B] -> logits [B, 64, 17]."""
        logits = self.output(self.hidden(pixels, labels)) + self.class_output(labels)
        return logits.view(-1, PIXELS, PIXEL_LEVELS)

    def pixel_logits(self, pixels: torch.Tensor, labels: torch.Tensor, index: int) -> torch.Tensor:
        """Logits [B, 17] of pixel ``index`` only (what sampling needs; same values as forward)."""
        rows = slice(index * PIXEL_LEVELS, (index + 1) * PIXEL_LEVELS)
        weight = self.output.weight[rows] * self.output.mask[rows]
        return F.linear(self.hidden(pixels, labels), weight, self.output.bias[rows]) + self.class_output(labels)[:, rows]

    def nll(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood per pixel in nats, [B]."""
        logits = self(pixels, labels)
        return F.cross_entropy(logits.transpose(1, 2), pixels_to_levels(pixels).flatten(1), reduction="none").mean(1)

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, generator: torch.Generator, temperature: float = 1.0) -> torch.Tensor:
        """Images [B,1,8,8] in [-1,1] for ``labels`` [B], pixel by pixel in raster order."""
        levels = torch.zeros(len(labels), PIXELS, dtype=torch.long)
        for i in range(PIXELS):
            logits = self.pixel_logits(levels_to_pixels(levels).view(-1, *IMAGE_SHAPE), labels, i) / temperature
            levels[:, i] = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
        return levels_to_pixels(levels).view(-1, *IMAGE_SHAPE)


def train_pixel_prior(
    train: Digits, config: PixelPriorTraining = PixelPriorTraining(), model_config: PixelPriorConfig = PixelPriorConfig()
) -> PixelPrior:
    """Maximum likelihood with one-pixel random shifts as augmentation."""
    torch.manual_seed(config.seed)
    model = PixelPrior(model_config)

    def loss(batch: list[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        images, labels = batch
        return model.nll(random_shift(images, generator), labels).mean()

    fit(
        model,
        [train.images, train.labels],
        loss,
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        desc="pixel prior",
        weight_decay=config.weight_decay,
    )
    return model
