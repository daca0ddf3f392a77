"""Evaluation harness with stand-in backend and scorer: std-matched controls, paired test, table, figures."""

import importlib.util
import itertools
import math
import sys

import numpy as np
import torch
from PIL import Image

from noisear import NoiseAR, NoiseARConfig
from noisear.figures import PLOT_SKIPPED
from noisear.train.data import PromptSet
from noisear.train.evaluate import (
    BLEND_SEED_OFFSET,
    blend_source,
    comparisons,
    evaluate,
    gaussian_source,
    noisear_source,
    paired_test,
    save_report,
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


def test_paired_test_exact_and_monte_carlo_agree_with_direct_computations():
    result = paired_test(np.ones(4), np.zeros(4))
    assert result["p_value"] == 2 / 16 and result["mean_diff"] == 1.0  # only all-plus and all-minus are as extreme
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=18) + 0.4, rng.normal(size=18)
    diff = a - b
    assert math.isclose(paired_test(a, b)["t"], diff.mean() / (diff.std(ddof=1) / math.sqrt(18)))
    means = [abs(np.dot(signs, diff)) / 18 for signs in itertools.product((-1, 1), repeat=18)]
    exact = np.mean(np.array(means) >= abs(diff.mean()) - 1e-12)
    assert abs(paired_test(a, b, permutations=20000)["p_value"] - exact) < 0.01


def test_harness_scores_sources_on_the_same_seeds_with_std_matched_controls(tmp_path):
    sources = {
        "gaussian": gaussian_source(SHAPE),
        "shifted": lambda p, s: gaussian_source(SHAPE)(p, s) + 0.5,
        "shrunk": gaussian_source(SHAPE, std=0.5),
    }
    result = evaluate(sources, backend, {"brightness": brightness}, prompts(), seeds=range(5))
    scores = result.scores["brightness"]
    assert set(scores) == {"gaussian", "shifted", "shrunk", "gaussian@std(shifted)", "gaussian@std(shrunk)"}
    assert scores["shrunk"].shape == (5, 6)
    assert abs(result.noise_std["shrunk"] - 0.5) < 0.05
    assert math.isclose(result.noise_std["gaussian@std(shrunk)"], result.noise_std["shrunk"], rel_tol=1e-6)
    np.testing.assert_allclose(scores["shrunk"], scores["gaussian@std(shrunk)"], atol=1e-6)  # same seeds
    assert result.tests["brightness"]["shrunk"]["p_value"] > 0.05
    shifted = result.tests["brightness"]["shifted"]
    assert shifted["mean_diff"] > 0.05 and shifted["p_value"] < 0.001
    assert "gaussian" not in result.tests["brightness"]
    table = result.table()
    assert table.count("\n| ") == 5 and "shifted" in table and "p=" in table
    paths = save_report(result, tmp_path)
    with Image.open(paths["grid"]) as image:
        grid = np.asarray(image.convert("RGB"))
    # 5 labelled rows x 6 prompts of 8x8 images in 48 px cells (each pixel a 6x6 block), 4 px apart, ending the picture
    top, left = grid.shape[0] - 4 * (48 + 4), grid.shape[1] - 6 * (48 + 4)  # row 2 = shifted, first prompt
    expected = (backend(sources["shifted"](prompts(), [0] * 6), None)[0].permute(1, 2, 0).numpy() * 255).round()
    np.testing.assert_array_equal(grid[top : top + 48, left : left + 48], expected.astype(np.uint8).repeat(6, 0).repeat(6, 1))


def test_the_plot_compares_each_source_with_its_std_matched_control(tmp_path, monkeypatch):
    sources = {"gaussian": gaussian_source(SHAPE), "shrunk": gaussian_source(SHAPE, std=0.5)}
    result = evaluate(sources, backend, {"brightness": brightness}, prompts(), seeds=range(3))
    ((baseline, shrunk),) = [comparisons(result)["brightness"]]
    per_seed = result.scores["brightness"]["gaussian@std(shrunk)"].mean(axis=1)
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
