"""Metrics of the toy demo against closed forms, and the swap test's behaviour on its scored sets."""

import math

import torch

from noisear.toy.metrics import Reference, Scored, alignment, diversity, frechet_between, frechet_distance
from noisear.train.evaluate import swap_test


def scored(features: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor | None = None) -> Scored:
    n = len(labels)
    probs = torch.full((n, 10), 0.1, dtype=torch.float64) if probs is None else probs
    return Scored(labels, probs, features.double(), torch.zeros(n, 64, dtype=torch.float64))


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    torch.manual_seed(0)
    a = torch.randn(20000, 3, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5]) + torch.tensor([1.0, 0.0, 0.0])
    b = torch.randn(20000, 3, dtype=torch.float64) * torch.tensor([1.0, 1.0, 1.0])
    # |mu_a - mu_b|^2 + sum (sd_a - sd_b)^2 for diagonal covariances
    expected = 1.0 + (2.0 - 1.0) ** 2 + (0.5 - 1.0) ** 2
    assert math.isclose(frechet_between(a, b), expected, rel_tol=0.05)
    assert abs(frechet_between(a, a)) < 1e-8


def test_alignment_and_diversity_on_hand_made_sets():
    probs = torch.eye(10, dtype=torch.float64)[[0, 1, 2, 2]]
    s = Scored(torch.tensor([0, 1, 2, 3]), probs, torch.zeros(4, 2), torch.zeros(4, 64, dtype=torch.float64))
    assert alignment(s, None) == 0.75
    pixels = torch.zeros(4, 64, dtype=torch.float64)
    pixels[1, 0] = 3.0  # class 0: two images at distance 3; class 1: two identical images
    pair = Scored(torch.tensor([0, 0, 1, 1]), probs, torch.zeros(4, 2), pixels)
    assert math.isclose(diversity(pair, None), (3.0 + 0.0) / 2)


def test_swap_test_separates_different_sources_and_not_identical_ones():
    torch.manual_seed(0)
    labels = torch.arange(200) % 10
    reference = Reference(torch.randn(500, 4, dtype=torch.float64))
    near = [scored(torch.randn(200, 4), labels) for _ in range(2)]
    far = [scored(torch.randn(200, 4) + 1.0, labels) for _ in range(2)]

    def distance(s):
        return frechet_distance(s, reference)

    assert swap_test(distance, near, near, permutations=50)["p_value"] == 1.0
    result = swap_test(distance, far, near, permutations=50)
    assert result["diff"] > 0 and result["p_value"] < 0.05
