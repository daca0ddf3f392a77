"""Evaluation contrasts: each source against its std-matched Gaussian, per seed; the prompt-mean shift source."""

import numpy as np
import torch

from noisear import standard_normal
from noisear.train.data import PromptSet
from noisear.train.evaluate import contrast, evaluate, gaussian_source, prompt_mean_source

SHAPE = (2, 4, 4)


def prompts(count=4):
    text = torch.zeros(count, 1, 3)
    text[:, 0, 0] = torch.arange(count, dtype=torch.float32)  # the pooled embedding is (k, 0, 0)
    return PromptSet(text, torch.ones(count, 1, dtype=torch.bool), torch.arange(count))


def identity(noise, prompts):
    return noise


def first_pixel(images, prompts):
    return images[:, 0, 0, 0]


def mean_value(images, prompts):
    return images.mean(dim=(1, 2, 3))


def test_contrast_counts_the_seeds_on_which_a_beats_b():
    a = np.array([[1.0, 1.0], [0.0, -1.0], [2.0, 0.0]])
    b = np.zeros((3, 2))
    result = contrast(a, b)
    assert result["seed_diffs"] == [1.0, -0.5, 1.0] and result["seeds_better"] == 2 and result["seeds"] == 3
    assert result["mean_diff"] == np.mean(a - b) and result["n"] == 6


def test_a_source_is_judged_against_the_gaussian_of_its_own_std(tmp_path):
    """'narrow' is N(0, 0.5^2) + 0.1: against N(0,1) its spread alone would decide a spread-sensitive score;
    against its matched Gaussian (same draws x std) only the +0.1 shift remains, on every seed."""
    sources = {"gaussian": gaussian_source(SHAPE), "narrow": lambda p, s: gaussian_source(SHAPE, 0.5)(p, s) + 0.1}
    result = evaluate(sources, identity, {"value": first_pixel}, prompts(), seeds=range(10))
    matched = result.matched["value"]["narrow"]
    control = result.scores["value"]["gaussian@std(narrow)"]
    np.testing.assert_allclose(matched["seed_diffs"], (result.scores["value"]["narrow"] - control).mean(axis=1))
    assert matched["mean_diff"] > 0.09 and matched["seeds_better"] == 10 and matched["seeds"] == 10
    assert "gaussian" not in result.matched["value"] and "gaussian@std(narrow)" not in result.matched["value"]
    assert "10/10" in result.table()


def test_prompt_mean_source_adds_the_baselines_predicted_shift_to_the_seeds_gaussian():
    class Baseline:  # the prediction of a fitted PromptMeanBaseline: 0.25 * k for prompt k
        def mean(self, text, text_mask):
            return (0.25 * text[:, 0, 0, None].double()).expand(-1, 32)

    noise = prompt_mean_source(Baseline(), SHAPE)(prompts(), [7] * 4)
    expected = standard_normal((4, *SHAPE), [7] * 4) + 0.25 * torch.arange(4.0)[:, None, None, None]
    torch.testing.assert_close(noise, expected)
    result = evaluate(
        {"gaussian": gaussian_source(SHAPE), "shift": prompt_mean_source(Baseline(), SHAPE)},
        identity,
        {"mean": mean_value},
        prompts(),
        seeds=range(10),
    )
    assert result.matched["mean"]["shift"]["seeds_better"] == 10  # the shift wins on every seed
