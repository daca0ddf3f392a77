"""The judge's metrics against closed forms and hand-made sets, and the swap test's behaviour on its scored sets."""

import math

import torch

from noisear.toy.layout import LAYOUTS
from noisear.toy.metrics import Reference, Scored, alignment, balance, coverage, diversity, frechet_between, frechet_distance
from noisear.train.evaluate import swap_test


def scored(features: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor | None = None, quadrant=None) -> Scored:
    n = len(labels)
    probs = torch.full((n, 10), 0.1, dtype=torch.float64) if probs is None else probs
    quadrant = torch.full((n,), -1) if quadrant is None else quadrant
    return Scored(labels, probs, features.double(), torch.zeros(n, 64, dtype=torch.float64), probs.argmax(-1) == labels, quadrant)


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
    s = scored(torch.zeros(4, 2), torch.tensor([0, 1, 2, 3]), probs)
    assert alignment(s, None) == 0.75
    pixels = torch.zeros(4, 64, dtype=torch.float64)
    pixels[1, 0] = 3.0  # class 0: two images at distance 3; class 1: two identical images
    pair = Scored(torch.tensor([0, 0, 1, 1]), probs, torch.zeros(4, 2), pixels, torch.ones(4, dtype=torch.bool), torch.zeros(4))
    assert math.isclose(diversity(pair, None), (3.0 + 0.0) / 2)


def test_coverage_counts_the_reference_points_with_a_generated_point_in_their_neighbourhood():
    torch.manual_seed(0)
    real = torch.randn(400, 2, dtype=torch.float64)
    reference = Reference(real, neighbours=5)
    assert coverage(scored(real.clone(), torch.zeros(400, dtype=torch.long)), reference) == 1.0
    # a sharp, exaggerated set: every point in the densest corner -> most of the reference uncovered
    collapsed = 0.05 * torch.randn(400, 2, dtype=torch.float64) + 0.3
    assert coverage(scored(collapsed, torch.zeros(400, dtype=torch.long)), reference) < 0.2
    # the right half only: about half the reference covered (a brute-force count of the definition)
    half = real[real[:, 0] > 0]
    covered = sum(bool(((x - half).norm(dim=1).min() <= r)) for x, r in zip(real, reference.radius))
    assert coverage(scored(half, torch.zeros(len(half), dtype=torch.long)), reference) == covered / 400
    assert 0.35 < covered / 400 < 0.65


def test_balance_is_one_for_uniform_layouts_and_falls_when_one_is_favoured():
    anywhere, left, top_left = LAYOUTS.index(""), LAYOUTS.index("left"), LAYOUTS.index("top left")
    labels = torch.tensor([3 * 9 + anywhere] * 4 + [3 * 9 + left] * 2 + [3 * 9 + top_left])

    def quadrants(*q):
        return scored(torch.zeros(7, 2), labels, quadrant=torch.tensor(q))

    assert balance(quadrants(0, 1, 2, 3, 0, 2, 0), None) == 1.0
    # "3" always top left (TV 0.75) and "3 left" half outside its quadrants (TV 0.5); "3 top left" has nothing open
    assert math.isclose(balance(quadrants(0, 0, 0, 0, 0, 1, 3), None), 1 - (0.75 + 0.5) / 2)


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
