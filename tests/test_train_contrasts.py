"""Evaluation contrasts: each source against its std-matched Gaussian, per seed; the prompt-mean shift source."""

import numpy as np
import torch

from noisear import standard_normal
from noisear.train.data import PromptSet
from noisear.train.evaluate import ItemScores, Source, eval_table, evaluate, gaussian_source, prompt_mean_source

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


def run(sources, scorer):
    named = [Source.item_seeded(name, source) for name, source in sources.items()]
    return evaluate(named, identity, ItemScores({"value": scorer}), prompts(), seeds=range(10))


def test_a_contrast_counts_the_seeds_on_which_a_beats_b():
    def up_unless_seed_is_a_multiple_of_3(p, seeds):  # seeds: one per item, all the evaluation seed
        return gaussian_source(SHAPE)(p, seeds) + (0.1 if seeds[0] % 3 else -0.1)

    sources = {"gaussian": gaussian_source(SHAPE), "up": up_unless_seed_is_a_multiple_of_3}
    result = run(sources, first_pixel)
    contrast = result.contrast("up", "gaussian", "value")
    np.testing.assert_allclose(contrast["per_seed"], [0.1 if s % 3 else -0.1 for s in range(10)], atol=1e-6)
    assert contrast["better"] == 6 and np.isclose(contrast["diff"], 0.1 * (6 - 4) / 10)


def test_a_source_is_judged_against_the_gaussian_of_its_own_std(tmp_path):
    """'narrow' is N(0, 0.5^2) + 0.1: against N(0,1) its spread alone would decide a spread-sensitive score;
    against its matched Gaussian (same draws x std) only the +0.1 shift remains, on every seed."""
    sources = {"gaussian": gaussian_source(SHAPE), "narrow": lambda p, s: gaussian_source(SHAPE, 0.5)(p, s) + 0.1}
    result = run(sources, first_pixel)
    matched = result.vs_matched("narrow", "value")
    narrow, control = (np.stack([s["value"] for s in row.scored]) for row in (result.row("narrow"), result.row("narrow").control))
    np.testing.assert_allclose(matched["per_seed"], (narrow - control).mean(axis=1))
    assert matched["diff"] > 0.09 and matched["better"] == 10
    assert result.row("gaussian").control is None and [row.name for row in result.rows] == ["gaussian", "narrow"]
    assert "10/10" in eval_table(result)


def test_prompt_mean_source_adds_the_baselines_predicted_shift_to_the_seeds_gaussian():
    class Baseline:  # the prediction of a fitted PromptMeanBaseline: 0.25 * k for prompt k
        def mean(self, text, text_mask):
            return (0.25 * text[:, 0, 0, None].double()).expand(-1, 32)

    noise = prompt_mean_source(Baseline(), SHAPE)(prompts(), [7] * 4)
    expected = standard_normal((4, *SHAPE), [7] * 4) + 0.25 * torch.arange(4.0)[:, None, None, None]
    torch.testing.assert_close(noise, expected)
    result = run({"gaussian": gaussian_source(SHAPE), "shift": prompt_mean_source(Baseline(), SHAPE)}, mean_value)
    assert result.vs_matched("shift", "value")["better"] == 10  # the shift wins on every seed
