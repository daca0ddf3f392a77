"""The evaluation layer with a stand-in backend and scorer: std-matched controls, paired tests, table, figures."""

import importlib.util
import itertools
import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from noisear import NoiseAR, NoiseARConfig
from noisear.figures import PLOT_SKIPPED
from noisear.train.data import PromptSet
from noisear.train.evaluate import (
    BLEND_SEED_OFFSET,
    EvaluationError,
    ItemScores,
    Source,
    blend_source,
    comparisons,
    eval_table,
    evaluate,
    gaussian_source,
    matched_gaussian,
    noise_std,
    noisear_source,
    paired_test,
    save_report,
    swap_test,
)

SHAPE = (3, 4, 4)


def prompts(count=6):
    return PromptSet(
        torch.randn(count, 2, 4),
        torch.ones(count, 2, dtype=torch.bool),
        torch.arange(count),
        tuple(f"prompt {i}" for i in range(count)),
    )


def backend(noise, prompts):
    """Stand-in renderer: images = sigmoid of the noise, upsampled 2x."""
    return torch.sigmoid(noise).repeat_interleave(2, 2).repeat_interleave(2, 3)


def brightness(images, prompts):
    return images.mean(dim=(1, 2, 3))


def run(sources, seeds, **options):
    """evaluate() of per-item seeded sources with the stand-in backend and the brightness scorer."""
    named = [Source.item_seeded(name, source) for name, source in sources.items()]
    return evaluate(named, backend, ItemScores({"brightness": brightness}), prompts(), seeds, **options)


def test_paired_test_exact_and_monte_carlo_agree_with_direct_computations():
    result = paired_test(np.ones(4), np.zeros(4))
    assert result["p_value"] == 2 / 16 and result["diff"] == 1.0  # only all-plus and all-minus are as extreme
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=18) + 0.4, rng.normal(size=18)
    diff = a - b
    assert math.isclose(paired_test(a, b)["t"], diff.mean() / (diff.std(ddof=1) / math.sqrt(18)))
    means = [abs(np.dot(signs, diff)) / 18 for signs in itertools.product((-1, 1), repeat=18)]
    exact = np.mean(np.array(means) >= abs(diff.mean()) - 1e-12)
    assert abs(paired_test(a, b, permutations=20000)["p_value"] - exact) < 0.01


class Items:
    """Per-item scores as a swappable set (what swap_test needs)."""

    def __init__(self, values):
        self.values = values

    def __len__(self):
        return len(self.values)

    def take(self, mask, other):
        return Items(torch.where(mask, self.values, other.values))


def test_for_a_mean_metric_the_swap_test_is_the_sign_flip_test():
    generator = torch.Generator().manual_seed(3)
    a = [Items(torch.randn(6, generator=generator, dtype=torch.float64) + 0.3) for _ in range(2)]
    b = [Items(torch.randn(6, generator=generator, dtype=torch.float64)) for _ in range(2)]
    exact = paired_test(np.stack([x.values for x in a]), np.stack([y.values for y in b]))  # 12 pairs: every sign pattern
    swapped = swap_test(lambda items: float(items.values.mean()), a, b, permutations=4000)
    assert math.isclose(swapped["diff"], exact["diff"], abs_tol=1e-12)
    assert abs(swapped["p_value"] - exact["p_value"]) < 0.03


def test_a_controls_std_is_the_sources_std_over_all_seeds_or_on_each_seed():
    baseline = [torch.randn(50, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    pooled = matched_gaussian(baseline, 0.5, per_seed=False)
    assert math.isclose(noise_std(pooled, per_seed=False), 0.5, rel_tol=1e-6)
    assert len({round(float(n[0] / b[0]), 6) for n, b in zip(pooled, baseline)}) == 1  # one factor for every seed
    for noise in matched_gaussian(baseline, 0.5, per_seed=True):
        assert math.isclose(float(noise.double().std()), 0.5, rel_tol=1e-6)


def test_harness_scores_sources_on_the_same_seeds_with_std_matched_controls(tmp_path):
    sources = {
        "gaussian": gaussian_source(SHAPE),
        "shifted": lambda p, s: gaussian_source(SHAPE)(p, s) + 0.5,
        "shrunk": gaussian_source(SHAPE, std=0.5),
    }
    result = run(sources, range(5))
    assert [row.name for row in result.rows] == ["gaussian", "shifted", "shrunk"]
    shrunk = result.row("shrunk")
    assert len(shrunk.scored) == 5 and shrunk.scored[0]["brightness"].shape == (6,)
    assert abs(shrunk.noise_std - 0.5) < 0.05
    assert shrunk.control.name == "gaussian@std(shrunk)" and result.row("gaussian").control is None
    assert math.isclose(shrunk.control.noise_std, shrunk.noise_std, rel_tol=1e-6)
    np.testing.assert_allclose(
        np.stack([s["brightness"] for s in shrunk.scored]), np.stack([s["brightness"] for s in shrunk.control.scored]), atol=1e-6
    )  # same seeds
    assert result.vs_matched("shrunk", "brightness")["p_value"] > 0.05
    shifted = result.contrast("shifted", "gaussian", "brightness")
    assert shifted["diff"] > 0.05 and shifted["p_value"] < 0.001 and shifted["better"] == 5
    table = eval_table(result)
    assert table.count("\n| ") == 3 and "shifted" in table and "5/5" in table
    paths = save_report(result, tmp_path)
    with Image.open(paths["grid"]) as image:
        grid = np.asarray(image.convert("RGB"))
    # 3 labelled rows x 6 prompts of 8x8 images in 48 px cells (each pixel a 6x6 block), 4 px apart, ending the picture
    top, left = grid.shape[0] - 2 * (48 + 4), grid.shape[1] - 6 * (48 + 4)  # row 2 = shifted, first prompt
    expected = (backend(sources["shifted"](prompts(), [0] * 6), None)[0].permute(1, 2, 0).numpy() * 255).round()
    np.testing.assert_array_equal(grid[top : top + 48, left : left + 48], expected.astype(np.uint8).repeat(6, 0).repeat(6, 1))


def test_a_source_may_render_with_its_own_backend_and_go_without_a_control():
    dark = Source.item_seeded("dark", gaussian_source(SHAPE), backend=lambda noise, p: backend(noise, p) * 0.5, controlled=False)
    result = evaluate(
        [Source.item_seeded("gaussian", gaussian_source(SHAPE)), dark], backend, ItemScores({"b": brightness}), prompts(), [0, 1]
    )
    torch.testing.assert_close(result.row("dark").images, 0.5 * result.row("gaussian").images)
    assert result.row("dark").control is None


def test_the_plot_compares_each_source_with_its_std_matched_control(tmp_path, monkeypatch):
    result = run({"gaussian": gaussian_source(SHAPE), "shrunk": gaussian_source(SHAPE, std=0.5)}, range(3))
    ((baseline, shrunk),) = [comparisons(result)["brightness"]]
    per_seed = np.stack([s["brightness"] for s in result.row("shrunk").control.scored]).mean(axis=1)
    assert (baseline.source, baseline.matched_mean) == ("gaussian", None)
    assert shrunk.source == "shrunk" and math.isclose(shrunk.matched_mean, per_seed.mean())
    assert math.isclose(shrunk.matched_std, per_seed.std(ddof=1))
    if importlib.util.find_spec("matplotlib"):
        assert save_report(result, tmp_path / "with")["plot"].is_file()
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    paths = save_report(result, tmp_path / "without")
    assert "plot" not in paths and PLOT_SKIPPED in paths["table"].read_text(encoding="utf-8")


def test_noisear_and_blend_sources_use_the_seeds_gaussian_noise():
    torch.manual_seed(0)
    model = NoiseAR(
        NoiseARConfig(patch_size=2, channels=3, latent_height=4, latent_width=4, d_model=8, d_ff=16, text_dim=4, dropout=0.0)
    )
    plain = gaussian_source(SHAPE)(prompts(), [3] * 6)
    sampled = noisear_source(model, temperature=1.0)(prompts(), [3] * 6)
    assert torch.allclose(sampled, plain, atol=0.05)  # an untrained prior is about N(0, I) with eps = the seed's noise
    partner = gaussian_source(SHAPE)(prompts(), [3 + BLEND_SEED_OFFSET] * 6)
    assert torch.equal(blend_source(noisear_source(model, 1.0), SHAPE, 0.0)(prompts(), [3] * 6), partner)
    assert not torch.allclose(partner, plain)  # the blend's Gaussian is independent of the prior's eps
    wide = gaussian_source(SHAPE)(prompts(), list(range(6)))
    blended = blend_source(noisear_source(model, 1.0), SHAPE, 0.5)(prompts(), list(range(6)))
    assert abs(blended.std().item() - wide.std().item()) < 0.1  # variance-preserving (same eps would give ~1.4)


def test_a_scorer_or_source_that_gives_nan_or_the_wrong_shape_is_refused_by_name(tmp_path):
    prompts = PromptSet(torch.zeros(3, 2, 4), torch.ones(3, 2, dtype=torch.bool), torch.arange(3))
    sources = [Source.item_seeded("gaussian", gaussian_source((1, 4, 4)))]

    def nan_scorer(images, prompt_set):
        return torch.full((len(images),), float("nan"))

    def short_scorer(images, prompt_set):
        return torch.zeros(len(images) - 1)

    def render(noise, prompt_set):
        return torch.sigmoid(noise).expand(-1, 3, -1, -1)

    for scorer, problem in (
        (nan_scorer, "returned NaN or infinite values"),
        (short_scorer, "returned shape \\[2\\]; expected \\[3\\]"),
    ):
        with pytest.raises(EvaluationError, match=f"scorer 'quality' \\(test_train_evaluate:.*{scorer.__name__}\\) {problem}"):
            evaluate(sources, render, ItemScores({"quality": scorer}), prompts, [1, 2])
    broken = Source("broken", lambda prompt_set, seed: torch.full((len(prompt_set), 1, 4, 4), float("inf")))
    with pytest.raises(EvaluationError, match="source 'broken' returned NaN or infinite"):
        evaluate([*sources, broken], render, ItemScores({"quality": lambda images, p: images.mean((1, 2, 3))}), prompts, [1])
