"""The reduced demo on the shipped checkpoints (3 fixed seeds x 500 samples): the directions of the main
contrasts. (At 500 samples a single seed can flip NoiseAR T=1 against Gaussian on FD: 5 of seeds 4-9 agree.)

The full table (3 seeds x 1,000 samples) is `python -m noisear demo`; see docs/demo.md for what it shows.
"""
import pytest
import torch

from noisear.toy.checkpoints import DEFAULT_DIR, FILES, ToyCheckpointError, load_models, load_net
from noisear.toy.classifier import DigitClassifier, accuracy
from noisear.toy.data import load_split
from noisear.toy.demo import SOURCES, comparisons, evaluate, grid, table

GOLDEN = SOURCES[4].name


@pytest.fixture(scope="module")
def result():
    torch.set_num_threads(1)
    names = {"Gaussian", "Gaussian x0.5", "NoiseAR T=1", "NoiseAR T=0.5", GOLDEN, "NoiseAR DPO T=1"}
    return evaluate(load_models(DEFAULT_DIR), seeds=[7, 8, 9], samples=500, permutations=0,
                    sources=[s for s in SOURCES if s.name in names])


def mean(result, name, metric):
    values = result.metric(name, metric)
    return sum(values) / len(values)


def test_shipped_classifier_reaches_99_percent_on_held_out_digits():
    _, test = load_split()
    assert accuracy(load_net(DigitClassifier, None, DEFAULT_DIR / FILES["classifier"]), test) >= 0.99


def test_golden_re_denoise_beats_gaussian_noise_on_fd_and_alignment(result):
    assert mean(result, GOLDEN, "FD") < mean(result, "Gaussian", "FD") - 1.5
    assert mean(result, GOLDEN, "alignment") >= mean(result, "Gaussian", "alignment")


def test_noisear_beats_gaussian_noise_on_fd_at_temperature_1_and_gaussian_x05_at_temperature_05(result):
    assert mean(result, "NoiseAR T=1", "FD") < mean(result, "Gaussian", "FD")
    assert mean(result, "NoiseAR T=0.5", "FD") < mean(result, "Gaussian x0.5", "FD") - 1.0
    assert mean(result, "NoiseAR T=1", "alignment") > mean(result, "Gaussian", "alignment")


def test_the_learned_prior_is_farther_from_the_data_than_golden_re_denoise(result):
    # the gap our learned prior still has to close (2.6 FD at the full size)
    assert mean(result, "NoiseAR T=1", "FD") > mean(result, GOLDEN, "FD")


def test_dpo_with_the_classifier_reward_raises_alignment(result):
    assert mean(result, "NoiseAR DPO T=1", "alignment") > mean(result, "NoiseAR T=1", "alignment") + 0.005


def test_halving_the_noise_trades_diversity_for_alignment(result):
    assert mean(result, "Gaussian x0.5", "alignment") > mean(result, "Gaussian", "alignment")
    assert mean(result, "Gaussian x0.5", "diversity") < 0.6 * mean(result, "Gaussian", "diversity")


def test_table_grid_and_plot_have_a_row_per_source(result):
    assert table(result).count("\n| ") == len(result.rows)
    assert grid(result, cell=40).height > len(result.rows) * 40
    for metric, panel in comparisons(result).items():
        assert [c.source for c in panel] == [row.name for row in result.rows]
        assert all(abs(c.mean - mean(result, c.source, metric)) < 1e-12 for c in panel)


def test_missing_checkpoint_says_how_to_rebuild(tmp_path):
    with pytest.raises(ToyCheckpointError, match="--retrain"):
        load_models(tmp_path)
