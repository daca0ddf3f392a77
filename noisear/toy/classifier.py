"""The toy's classifiers.

- :class:`DigitClassifier`, the judge: a small CNN whose 64-wide penultimate layer gives the features for the
  Frechet distance and coverage. The digits testbed's classifies 8x8 digits (10 classes); the layout
  testbed's 16x16 canvases (40 classes: digit x quadrant).
- :class:`RewardMLP`, the reward model of golden-pair filtering and DPO: another architecture, trained with
  another seed on another split of the digits, so that the judge that scores the table was never a training
  reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data import NUM_CLASSES, Digits, Examples, as_they_are, random_shift
from .fit import fit

FEATURE_DIM = 64


@dataclass(frozen=True)
class ClassifierTraining:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-3
    seed: int = 0


@dataclass(frozen=True)
class ClassifierConfig:
    image_size: int = 8  # images [B, 1, image_size, image_size]
    classes: int = NUM_CLASSES


class DigitClassifier(nn.Module):
    """[B, 1, S, S] in [-1, 1] -> logits [B, classes]; ``features`` gives the [B, 64] penultimate layer."""

    def __init__(self, config: ClassifierConfig = ClassifierConfig()) -> None:
        super().__init__()
        self.config = config
        half = config.image_size // 2
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(32 * half * half, FEATURE_DIM),
            nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, config.classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))


@dataclass(frozen=True)
class RewardConfig:
    image_size: int = 8
    classes: int = NUM_CLASSES
    hidden: int = 256


class RewardMLP(nn.Module):
    """[B, 1, S, S] in [-1, 1] -> logits [B, classes]: a two-hidden-layer MLP over the pixels."""

    def __init__(self, config: RewardConfig = RewardConfig()) -> None:
        super().__init__()
        self.config = c = config
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c.image_size**2, c.hidden),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(c.hidden, c.hidden),
            nn.ReLU(),
            nn.Linear(c.hidden, c.classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def train_classifier(
    train: Digits,
    config: ClassifierTraining = ClassifierTraining(),
    make: Callable[[], nn.Module] = DigitClassifier,
    examples: Examples = as_they_are,
    desc: str = "classifier",
) -> nn.Module:
    """Cross-entropy with one-pixel random shifts as augmentation, on ``examples`` made from each batch of
    ``train`` (default: the digits and their labels); ``make()`` builds the network after seeding."""
    torch.manual_seed(config.seed)
    model = make()

    def loss(batch: list[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        images, targets = examples(*batch, generator)
        return F.cross_entropy(model(random_shift(images, generator)), targets)

    fit(
        model,
        [train.images, train.labels],
        loss,
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        desc=desc,
        weight_decay=config.weight_decay,
    )
    return model


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of ``images`` classified as ``targets``."""
    return (model(images).argmax(-1) == targets).float().mean().item()
