"""scikit-learn's load_digits as tensors: 1,797 images [N, 1, 8, 8] in [-1, 1], labels 0..9.

The dataset ships inside scikit-learn, so nothing is downloaded. One fixed stratified split:
TRAIN is used to fit every model, TEST only to score (classifier accuracy, Frechet distance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

NUM_CLASSES = 10
IMAGE_SHAPE = (1, 8, 8)
PIXEL_LEVELS = 17  # raw pixel values are the integers 0..16
TEST_FRACTION = 0.25
SPLIT_SEED = 0


@dataclass(frozen=True)
class Digits:
    """images [N, 1, 8, 8] float32 in [-1, 1]; labels [N] int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def levels_to_pixels(levels: torch.Tensor) -> torch.Tensor:
    """Integer levels 0..16 -> pixel values in [-1, 1]."""
    return levels.float() / 8.0 - 1.0


def pixels_to_levels(pixels: torch.Tensor) -> torch.Tensor:
    """Pixel values in [-1, 1] -> nearest integer level 0..16 (int64)."""
    return ((pixels.clamp(-1, 1) + 1.0) * 8.0).round().long()


def load_split() -> tuple[Digits, Digits]:
    """(train, test): the fixed stratified 75/25 split of load_digits (1,347 / 450 images)."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ImportError(
            "the demo's digits come from scikit-learn, which is not installed: "
            "pip install scikit-learn (or the [demo] extra, or requirements-dev.txt in a checkout)"
        ) from None

    bunch = load_digits()
    levels = torch.as_tensor(bunch.data, dtype=torch.int64).reshape(-1, *IMAGE_SHAPE)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=TEST_FRACTION, stratify=labels.numpy(), random_state=SPLIT_SEED
    )
    train_idx, test_idx = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    return (
        Digits(levels_to_pixels(levels[train_idx]), labels[train_idx]),
        Digits(levels_to_pixels(levels[test_idx]), labels[test_idx]),
    )


def random_shift(images: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Augmentation: translate each image [B,1,H,W] by up to ``max_shift`` pixels, filling with background -1."""
    batch, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (max_shift,) * 4, value=-1.0)
    dy = torch.randint(0, 2 * max_shift + 1, (batch,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (batch,), generator=generator)
    rows = (dy[:, None] + torch.arange(height))[:, None, :, None].expand(batch, 1, height, padded.shape[-1])
    cropped = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(width))[:, None, None, :].expand(batch, 1, height, width)
    return cropped.gather(3, cols)


# (digit images [B,1,8,8], labels [B], generator) -> (examples [B,1,S,S], targets [B]): what a network of a
# testbed is trained on, made from each batch of training digits
Examples = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def as_they_are(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits testbed's examples: the digits and their labels."""
    return images, labels


def split_half(digits: Digits, seed: int) -> Digits:
    """A seeded random half of ``digits`` (stratified by label): another split for a second, independent model."""
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for label in range(NUM_CLASSES):
        rows = (digits.labels == label).nonzero()[:, 0]
        picked.append(rows[torch.randperm(len(rows), generator=generator)[: len(rows) // 2]])
    rows = torch.cat(picked).sort().values
    return Digits(digits.images[rows], digits.labels[rows])
