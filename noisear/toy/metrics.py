"""The toy's scoring for the evaluation layer (noisear.train.evaluate): what the classifier says about a set of
generated digits.

A :class:`Scored` set holds, per item, the requested label and what the classifier says about the
image. Metrics are functions of a whole set (the Frechet distance and diversity are not means of
per-item values), so :class:`ClassifierMetrics` tests them by swapping the two sources' images of the
same item (noisear.train.evaluate.swap_test).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..train.data import PromptSet
from ..train.evaluate import swap_test
from .classifier import DigitClassifier
from .data import NUM_CLASSES


@dataclass(frozen=True)
class Scored:
    """labels [N] requested class; probs [N,10] classifier softmax; features [N,64]; pixels [N,64] in [-1,1]."""

    labels: torch.Tensor
    probs: torch.Tensor
    features: torch.Tensor
    pixels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, mask: torch.Tensor, other: "Scored") -> "Scored":
        """Items from ``self`` where mask [N] is True, else from ``other`` (same labels)."""

        def pick(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.where(mask.view(-1, *([1] * (a.ndim - 1))), a, b)

        return Scored(
            self.labels, pick(self.probs, other.probs), pick(self.features, other.features), pick(self.pixels, other.pixels)
        )


@torch.no_grad()
def score(classifier: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> Scored:
    """Classify images [N,1,8,8] generated for ``labels`` [N]."""
    features = classifier.features(images).double()
    probs = classifier.head(features.float()).softmax(-1).double()
    return Scored(labels, probs, features, images.flatten(1).double())


def alignment(s: Scored, reference: Reference) -> float:
    """Share of images classified as the requested class (higher is better)."""
    return float((s.probs.argmax(-1) == s.labels).double().mean())


def confidence(s: Scored, reference: Reference) -> float:
    """Mean classifier probability of the requested class (higher is better)."""
    return float(s.probs.gather(1, s.labels[:, None]).mean())


def frechet_distance(s: Scored, reference: "Reference") -> float:
    """Frechet distance between Gaussians fitted to the set's features and the real test digits' features:
    |mu1-mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)). Lower is better."""
    return reference.frechet(s.features)


class Reference:
    """Statistics of reference features [M,F] (the real test digits), computed once for many distances."""

    def __init__(self, features: torch.Tensor) -> None:
        self.features = features.double()
        self.mean, self.cov = self.features.mean(0), torch.cov(self.features.T)
        values, vectors = torch.linalg.eigh(self.cov)
        self.root = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T

    def frechet(self, features: torch.Tensor) -> float:
        """Frechet distance of features [N,F] to the reference; tr (S S_ref)^(1/2) via the reference's root."""
        features = features.double()
        cov = torch.cov(features.T)
        cross = torch.linalg.eigvalsh(self.root @ cov @ self.root).clamp_min(0).sqrt().sum()
        return float((features.mean(0) - self.mean).square().sum() + cov.trace() + self.cov.trace() - 2 * cross)


def frechet_between(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to feature sets a [N,F] and b [M,F] (float64)."""
    return Reference(b).frechet(a)


def diversity(s: Scored, reference: Reference) -> float:
    """Within-class diversity: mean pixel-space L2 distance between two images requested for the same
    class, averaged over the classes (higher is more diverse; real test digits: 4.6)."""
    per_class = []
    for label in range(NUM_CLASSES):
        pixels = s.pixels[s.labels == label]
        if len(pixels) > 1:
            distances = torch.cdist(pixels, pixels)
            per_class.append(distances.sum() / (len(pixels) * (len(pixels) - 1)))
    return float(torch.stack(per_class).mean())


Metric = Callable[[Scored, Reference], float]
METRICS: dict[str, Metric] = {"alignment": alignment, "confidence": confidence, "FD": frechet_distance, "diversity": diversity}
LOWER_IS_BETTER = {"FD"}


class ClassifierMetrics:
    """:data:`METRICS` of the classifier's view of each seed's images (a noisear.train.evaluate.Scoring): the
    items' requested classes are the prompts' indices, FD is measured against ``reference``."""

    metrics = tuple(METRICS)
    lower_is_better = frozenset(LOWER_IS_BETTER)

    def __init__(self, classifier: DigitClassifier, reference: Reference) -> None:
        self.classifier, self.reference = classifier, reference

    def score(self, images: torch.Tensor, prompts: PromptSet) -> Scored:
        return score(self.classifier, images, prompts.index)

    def value(self, scored: Scored, metric: str) -> float:
        return METRICS[metric](scored, self.reference)

    def p_value(self, a: Sequence[Scored], b: Sequence[Scored], metric: str, permutations: int) -> float:
        return swap_test(lambda s: METRICS[metric](s, self.reference), a, b, permutations)["p_value"]
