"""The layout testbed's reduced demo on the shipped checkpoints, on the 20 prompts no prior trained on (3 fixed
seeds x 200 samples; golden pairs of 30 unseen starting noises per unseen prompt): each autoregressive prior
against the Gaussian of its own std and against the baselines without autoregression. The same checks must fail
for a prior with its mean head zeroed, an untrained prior and a prior at half strength (tests/toy_priors.py).

The full table (10 seeds x 600 samples, per-seed signs, p-values, the verdict) is `python -m noisear demo layout`;
see docs/demo.md.
"""

import tempfile

import pytest
import torch
from toy_priors import BROKEN

from noisear.toy import demo
from noisear.toy.checkpoints import LAYOUT_DIR, LAYOUT_FILES, ToyCheckpointError, load_net
from noisear.toy.classifier import ClassifierConfig, DigitClassifier, accuracy
from noisear.toy.data import load_split
from noisear.toy.layout import HELD_OUT_PROMPTS, canvas_examples
from noisear.toy.noisear_prior import HELD_OUT_FIRST_SEED, load_pairs, prior_nll
from noisear.toy.testbed_layout import NO_AR_T1, LayoutTestbed, collect_golden_pairs, load
from noisear.train.metrics import standard_normal_nll_per_dim

SEEDS, SAMPLES = [7, 8, 9], 200
# on golden pairs of unseen prompts (nats/dim): the shipped priors gain ~0.026 over N(0,I), ~0.017 over the linear
# prompt-mean Gaussian and ~0.0023 over the same network without autoregression
NLL_MARGINS = {"N(0,I)": 0.02, "linear prompt-mean": 0.01, "no autoregression": 0.001}
SATISFIED_MARGIN = 0.03  # share of images that hold the prompt, above the Gaussian of the prior's std (seen: ~0.08)
TESTBED = LayoutTestbed()


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    return load(LAYOUT_DIR)


def broken_row(how: str) -> str:
    return f"{demo.PRIOR_T1} ({how})"


@pytest.fixture(scope="module")
def result(models):
    names = {demo.GAUSSIAN, demo.PROMPT_MEAN, NO_AR_T1, demo.PRIOR_T1, demo.PRIOR_T1 + demo.SEED1}
    broken = [TESTBED.source(broken_row(how), demo.noisear(make(models.prior), 1.0)) for how, make in BROKEN.items()]
    return TESTBED.evaluate(models, SEEDS, SAMPLES, permutations=0, names=names, extra=broken)


@pytest.fixture(scope="module")
def pairs(models):
    with tempfile.TemporaryDirectory() as directory:  # starting noises of first_seed 1; training used first_seed 0
        collect_golden_pairs(models.denoiser, HELD_OUT_PROMPTS, directory, 30, HELD_OUT_FIRST_SEED)
        return load_pairs(directory)


@pytest.fixture(scope="module")
def baselines(models, pairs):
    return {
        "N(0,I)": float(standard_normal_nll_per_dim(pairs.noise).mean()),
        "linear prompt-mean": float(models.prompt_mean.nll_per_dim(pairs).mean()),
        "no autoregression": float(prior_nll(models.prior_no_ar, pairs).mean()),
    }


def nll_failures(prior, pairs, baselines) -> list[str]:
    """What a prior fails of: beating each baseline's NLL on the unseen prompts' golden pairs by its margin."""
    nll = float(prior_nll(prior, pairs).mean())
    short = [name for name, margin in NLL_MARGINS.items() if not nll < baselines[name] - margin]
    return [f"NLL {nll:.5f} not {NLL_MARGINS[name]} below {name}'s {baselines[name]:.5f}" for name in short]


def satisfied_failures(result, name: str) -> list[str]:
    """What a prior's row fails of: holding the prompt more often than the Gaussian of its std, on every seed."""
    contrast = result.vs_matched(name, "satisfied")
    failures = []
    if not contrast["diff"] > SATISFIED_MARGIN:
        failures.append(f"Δsatisfied vs matched {contrast['diff']:+.3f}, not above {SATISFIED_MARGIN}")
    if contrast["better"] < len(result.seeds):
        failures.append(f"better than its matched Gaussian on {contrast['better']}/{len(result.seeds)} seeds")
    return failures


def test_the_shipped_judge_reaches_98_percent_on_held_out_canvases():
    _, test = load_split()
    canvases, classes = canvas_examples(test.images, test.labels, torch.Generator().manual_seed(0))
    assert accuracy(load_net(DigitClassifier, ClassifierConfig, LAYOUT_DIR / LAYOUT_FILES["judge"]), canvases, classes) >= 0.98


@pytest.mark.parametrize("name", ["prior", "prior_seed1"])
def test_each_prior_beats_every_baseline_without_autoregression_on_unseen_prompts(models, pairs, baselines, name):
    assert len(pairs) == 30 * len(HELD_OUT_PROMPTS)
    assert nll_failures(getattr(models, name), pairs, baselines) == []


@pytest.mark.parametrize("name", [demo.PRIOR_T1, demo.PRIOR_T1 + demo.SEED1])
def test_each_prior_holds_unseen_prompts_more_often_than_the_gaussian_of_its_std(result, name):
    assert satisfied_failures(result, name) == []


@pytest.mark.parametrize("how", list(BROKEN))
def test_the_same_checks_fail_for_a_broken_prior(result, models, pairs, baselines, how):
    failures = nll_failures(BROKEN[how](models.prior), pairs, baselines) + satisfied_failures(result, broken_row(how))
    assert failures, f"a prior with {how} passes every check"


def test_table_verdict_grid_and_plot_have_a_row_per_source(result):
    assert TESTBED.table(result).count("\n| ") == len(result.rows)
    assert TESTBED.grid(result).width > len(HELD_OUT_PROMPTS) * 64


def test_missing_checkpoint_says_how_to_rebuild(tmp_path):
    with pytest.raises(ToyCheckpointError, match="demo layout --retrain"):
        load(tmp_path)
