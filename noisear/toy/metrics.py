"""The toy's scoring for the evaluation layer (noisear.train.evaluate): what the judge says about a set of
generated images. The judge is a classifier never used as a training reward (noisear.toy.classifier).

A :class:`Scored` set holds, per item, the requested prompt and what the judge says about the image. Metrics are
functions of a whole set (the Frechet distance, coverage, diversity and balance are not means of per-item values),
so :class:`JudgeMetrics` tests them by swapping the two sources' images of the same item
(noisear.train.evaluate.swap_test).

Each testbed has its metrics (:data:`DIGITS_METRICS`, :data:`LAYOUT_METRICS`): FD rewards exaggeration (a sharper,
more typical set can be nearer the reference's mean), so every table carries coverage (which falls when a
source loses part of the reference's spread) and a direct check of what the prompt asks.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable, Sequence

import torch

from ..train.data import PromptSet
from ..train.evaluate import swap_test
from .layout import allowed_quadrants, detect, prompt_parts

COVERAGE_NEIGHBOURS = 5
EXACT = "donot_use_mm_for_euclid_dist"  # distances without the matrix-product shortcut: ties at a radius stay ties


@dataclass(frozen=True)
class Scored:
    """labels [N] the requested prompt (digits: the class; layout: the prompt index); probs [N,C] the judge's
    softmax; features [N,64] its penultimate layer; pixels [N,P] in [-1,1]; satisfied [N] bool: the image holds
    what the prompt asks (digits: classified as the class; layout: one digit, in a quadrant the prompt allows,
    classified as the digit); quadrant [N] the detected quadrant (layout; -1 for digits); covers [N, M] bool:
    which of the M reference points' neighbourhoods each item falls in (coverage; computed once per set, so
    that the swap test's permutations only take unions)."""

    labels: torch.Tensor
    probs: torch.Tensor | None
    features: torch.Tensor | None
    pixels: torch.Tensor | None
    satisfied: torch.Tensor | None
    quadrant: torch.Tensor | None
    covers: torch.Tensor | None = None

    def only(self, *names: str) -> "Scored":
        """The labels and the fields ``names`` (the rest None): what one metric needs, so that the swap test's
        permutations swap nothing else."""
        return Scored(self.labels, **{f.name: getattr(self, f.name) if f.name in names else None for f in fields(self)[1:]})

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, mask: torch.Tensor, other: "Scored") -> "Scored":
        """Items from ``self`` where mask [N] is True, else from ``other`` (same labels)."""

        def pick(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.where(mask.view(-1, *([1] * (a.ndim - 1))), a, b)

        values = {f.name: (getattr(self, f.name), getattr(other, f.name)) for f in fields(self)}
        return Scored(**{name: None if a is None else pick(a, b) for name, (a, b) in values.items()})


@torch.no_grad()
def score_digits(classifier: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Scored:
    """Judge images [N,1,8,8] generated for class ``labels`` [N]."""
    features = classifier.features(images).double()
    probs = classifier.head(features.float()).softmax(-1).double()
    satisfied = probs.argmax(-1) == labels
    return Scored(labels, probs, features, images.flatten(1).double(), satisfied, torch.full_like(labels, -1))


@torch.no_grad()
def score_layout(classifier: torch.nn.Module, images: torch.Tensor, prompts: torch.Tensor) -> Scored:
    """Judge canvases [N,1,16,16] generated for prompt indices [N] (noisear.toy.layout): the judge's 40 classes are
    digit x quadrant; the detector counts digits and finds the quadrant."""
    features = classifier.features(images).double()
    probs = classifier.head(features.float()).softmax(-1).double()
    digit_probs = probs.view(len(images), -1, 4).sum(-1)
    detection = detect(images)
    allowed = allowed_quadrants(prompts)[torch.arange(len(prompts)), detection.quadrant]
    satisfied = (detection.count == 1) & allowed & (digit_probs.argmax(-1) == prompt_parts(prompts)[0])
    return Scored(prompts, probs, features, None, satisfied, detection.quadrant)  # no pixels: no layout metric reads them


class Reference:
    """Statistics of reference features [M,F] (real images of the prompts), computed once for many distances:
    mean and covariance (Frechet distance) and each reference point's distance to its k-th nearest reference
    neighbour (coverage)."""

    def __init__(self, features: torch.Tensor, neighbours: int = COVERAGE_NEIGHBOURS) -> None:
        self.features = features.double()
        self.mean, self.cov = self.features.mean(0), torch.cov(self.features.T)
        values, vectors = torch.linalg.eigh(self.cov)
        self.root = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
        distances = torch.cdist(self.features, self.features, compute_mode=EXACT)
        self.radius = distances.kthvalue(neighbours + 1, dim=1).values  # +1: the point itself is at distance 0

    def frechet(self, features: torch.Tensor) -> float:
        """Frechet distance of features [N,F] to the reference; tr (S S_ref)^(1/2) via the reference's root."""
        features = features.double()
        cov = torch.cov(features.T)
        cross = torch.linalg.eigvalsh(self.root @ cov @ self.root).clamp_min(0).sqrt().sum()
        return float((features.mean(0) - self.mean).square().sum() + cov.trace() + self.cov.trace() - 2 * cross)

    def covers(self, features: torch.Tensor) -> torch.Tensor:
        """[N, M] bool: whether generated point i lies in reference point j's k-nearest-neighbour ball (boundary
        included)."""
        return torch.cdist(features.double(), self.features, compute_mode=EXACT) <= self.radius

    def coverage(self, features: torch.Tensor) -> float:
        """Share of reference points with a generated point in their k-nearest-neighbour ball (Naeem et al. 2020):
        falls when a source leaves part of the reference uncovered, however sharp its images."""
        return float(self.covers(features).any(0).double().mean())


def frechet_between(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to feature sets a [N,F] and b [M,F] (float64)."""
    return Reference(b).frechet(a)


def alignment(s: Scored, reference: Reference) -> float:
    """Share of images that hold what the prompt asks (``Scored.satisfied``; higher is better). Digits ("alignment"):
    classified as the requested class; layout ("satisfied"): one digit, in an allowed quadrant, classified as the
    requested digit."""
    return float(s.satisfied.double().mean())


def confidence(s: Scored, reference: Reference) -> float:
    """Digits: mean judge probability of the requested class (higher is better)."""
    return float(s.probs.gather(1, s.labels[:, None]).mean())


def frechet_distance(s: Scored, reference: Reference) -> float:
    """Frechet distance between Gaussians fitted to the set's judge features and the reference's:
    |mu1-mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)). Lower is better."""
    return reference.frechet(s.features)


def coverage(s: Scored, reference: Reference) -> float:
    """Share of the reference covered by the set (see Reference.coverage; higher is better)."""
    covers = reference.covers(s.features) if s.covers is None else s.covers
    return float(covers.any(0).double().mean())


def diversity(s: Scored, reference: Reference) -> float:
    """Within-prompt diversity: mean pixel-space L2 distance between two images requested with the same prompt,
    averaged over the prompts (higher is more diverse; real test digits: 4.6)."""
    labels, counts = s.labels.unique(return_counts=True)
    if (counts == counts[0]).all() and counts[0] > 1:  # equal counts: one batched distance computation
        pixels = s.pixels[s.labels.argsort(stable=True)].view(len(labels), int(counts[0]), -1)
        per_prompt = torch.cdist(pixels, pixels).sum((1, 2)) / (counts[0] * (counts[0] - 1))
        return float(per_prompt.mean())
    per_prompt = []
    for label in labels:
        pixels = s.pixels[s.labels == label]
        if len(pixels) > 1:
            distances = torch.cdist(pixels, pixels)
            per_prompt.append(distances.sum() / (len(pixels) * (len(pixels) - 1)))
    return float(torch.stack(per_prompt).mean())


def balance(s: Scored, reference: Reference) -> float:
    """Layout: 1 - the mean over prompts that leave the quadrant open of the total-variation distance between the
    detected quadrants of their images and the uniform choice among the allowed ones (1: every allowed layout
    equally often; lower: the source favours some, or leaves the allowed ones)."""
    distances = []
    for label in s.labels.unique():
        allowed = allowed_quadrants(label[None])[0]
        if allowed.sum() > 1:
            found = torch.bincount(s.quadrant[s.labels == label], minlength=4).double()
            distances.append(0.5 * (found / found.sum() - allowed.double() / allowed.sum()).abs().sum())
    if not distances:
        raise ValueError("balance needs a prompt that leaves the quadrant open; these prompts all name one quadrant")
    return 1.0 - float(torch.stack(distances).mean())


Metric = Callable[[Scored, Reference], float]
NEEDS = {  # the fields of a Scored set each metric reads
    "alignment": ("satisfied",),
    "satisfied": ("satisfied",),
    "confidence": ("probs",),
    "FD": ("features",),
    "coverage": ("covers", "features"),
    "diversity": ("pixels",),
    "balance": ("quadrant",),
}
DIGITS_METRICS: dict[str, Metric] = {
    "alignment": alignment,
    "confidence": confidence,
    "FD": frechet_distance,
    "diversity": diversity,
    "coverage": coverage,
}
LAYOUT_METRICS: dict[str, Metric] = {"satisfied": alignment, "balance": balance, "FD": frechet_distance, "coverage": coverage}
LOWER_IS_BETTER = frozenset({"FD"})
Judge = Callable[[torch.Tensor, PromptSet], Scored]  # (images, the items) -> the judge's view


class JudgeMetrics:
    """``metrics`` of the judge's view of each seed's images (a noisear.train.evaluate.Scoring), against
    ``reference``."""

    lower_is_better = LOWER_IS_BETTER

    def __init__(self, judge: Judge, reference: Reference, metrics: dict[str, Metric]) -> None:
        self.judge, self.reference, self.functions = judge, reference, metrics
        self.metrics = tuple(metrics)

    def score(self, images: torch.Tensor, prompts: PromptSet) -> Scored:
        scored = self.judge(images, prompts)
        return replace(scored, covers=self.reference.covers(scored.features)) if "coverage" in self.functions else scored

    def value(self, scored: Scored, metric: str) -> float:
        return self.functions[metric](scored, self.reference)

    def p_value(self, a: Sequence[Scored], b: Sequence[Scored], metric: str, permutations: int) -> float:
        a, b = ([s.only(*NEEDS[metric]) for s in sets] for sets in (a, b))
        return swap_test(lambda s: self.functions[metric](s, self.reference), a, b, permutations)["p_value"]
