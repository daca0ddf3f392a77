"""The digit classifier that scores samples: a small CNN whose 64-wide penultimate layer gives the
features for the Frechet distance."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data import NUM_CLASSES, Digits, random_shift
from .fit import fit

FEATURE_DIM = 64


@dataclass(frozen=True)
class ClassifierTraining:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-3
    seed: int = 0


class DigitClassifier(nn.Module):
    """[B, 1, 8, 8] in [-1, 1] -> logits [B, 10]; ``features`` gives the [B, 64] penultimate layer."""

    def __init__(self) -> None:
        super().__init__()
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
            nn.Linear(32 * 16, FEATURE_DIM),
            nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))


def train_classifier(train: Digits, config: ClassifierTraining = ClassifierTraining()) -> DigitClassifier:
    """Cross-entropy with one-pixel random shifts as augmentation."""
    torch.manual_seed(config.seed)
    model = DigitClassifier()

    def loss(batch: list[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(model(random_shift(images, generator)), labels)

    fit(
        model,
        [train.images, train.labels],
        loss,
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        desc="classifier",
        weight_decay=config.weight_decay,
    )
    return model


@torch.no_grad()
def accuracy(model: DigitClassifier, data: Digits) -> float:
    """Share of ``data`` classified correctly."""
    return (model(data.images).argmax(-1) == data.labels).float().mean().item()
