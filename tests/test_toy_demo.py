"""The digits testbed's reduced demo on the shipped checkpoints (3 fixed seeds x 500 samples): each learned prior
against the Gaussian of its own std (the matched contrasts, not variance effects) and against the prompt-mean
bar, and its likelihood on golden noise from starting noises it never saw. The same checks must fail for a prior
with its mean head zeroed, an untrained prior and a prior at half strength (tests/toy_priors.py).

The full table (10 seeds x 1,000 samples, per-seed signs, p-values, the verdict) is `python -m noisear demo`;
see docs/demo.md.
"""

import pytest
import torch
from toy_priors import BROKEN

from noisear.toy import demo
from noisear.toy.checkpoints import DEFAULT_DIR, FILES, ToyCheckpointError, load_net
from noisear.toy.classifier import ClassifierConfig, DigitClassifier, RewardConfig, RewardMLP, accuracy
from noisear.toy.data import load_split
from noisear.toy.noisear_prior import prior_nll
from noisear.toy.testbed_digits import DigitsTestbed, held_out_pairs, load
from noisear.train.evaluate import comparisons
from noisear.train.metrics import standard_normal_nll_per_dim

SEEDS, SAMPLES = [7, 8, 9], 500
# ΔFD against the matched Gaussian: the shipped priors are near the bar's -3.6 at T=1 and -0.4 at T=0.5 here
MARGIN = {1.0: 2.0, 0.5: 0.2}
SHARE_OF_BAR = 0.75  # of the prompt-mean bar's FD gain over its matched Gaussian, at T=1
NLL_MARGIN = 3e-4  # nats/dim below N(0, I) on golden pairs of unseen starting noises (the bar gets ~7e-4)
TESTBED = DigitsTestbed()


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    return load(DEFAULT_DIR)


def broken_row(how: str) -> str:
    return f"{demo.PRIOR_T1} ({how})"


@pytest.fixture(scope="module")
def result(models):
    names = {
        demo.GAUSSIAN,
        demo.PROMPT_MEAN,
        demo.PRIOR_T1,
        demo.PRIOR_T05,
        demo.PRIOR_T1 + demo.SEED1,
    }
    broken = [TESTBED.source(broken_row(how), demo.noisear(make(models.prior), 1.0)) for how, make in BROKEN.items()]
    return TESTBED.evaluate(models, SEEDS, SAMPLES, permutations=0, names=names, extra=broken)


@pytest.fixture(scope="module")
def pairs(models):
    return held_out_pairs(models, per_class=300)  # starting noises of first_seed 1; training used first_seed 0


def fd_failures(result, name: str, temperature: float) -> list[str]:
    """What a prior's row fails of: beating the Gaussian of its std by MARGIN on every seed, and (T=1) getting
    SHARE_OF_BAR of the prompt-mean bar's gain."""
    contrast = result.vs_matched(name, "FD")
    failures = []
    if not contrast["diff"] < -MARGIN[temperature]:
        failures.append(f"ΔFD vs matched {contrast['diff']:+.2f}, not below {-MARGIN[temperature]}")
    if contrast["better"] < len(result.seeds):
        failures.append(f"better than its matched Gaussian on {contrast['better']}/{len(result.seeds)} seeds")
    if temperature == 1.0:
        bar = result.vs_matched(demo.PROMPT_MEAN, "FD")["diff"]
        if not contrast["diff"] < SHARE_OF_BAR * bar:
            failures.append(f"{contrast['diff'] / bar:.0%} of the prompt-mean bar's gain")
    return failures


def nll_failures(prior, pairs) -> list[str]:
    gain = float((standard_normal_nll_per_dim(pairs.noise) - prior_nll(prior, pairs)).mean())
    return [] if gain > NLL_MARGIN else [f"held-out NLL gain over N(0,I) {gain:+.5f} nats/dim"]


def test_the_shipped_judge_and_reward_model_reach_97_percent_on_held_out_digits():
    _, test = load_split()
    judge = load_net(DigitClassifier, ClassifierConfig, DEFAULT_DIR / FILES["classifier"])
    reward = load_net(RewardMLP, RewardConfig, DEFAULT_DIR / FILES["reward"])
    assert accuracy(judge, test.images, test.labels) >= 0.99
    assert accuracy(reward, test.images, test.labels) >= 0.95  # an MLP on half the digits: weaker, and not the judge


@pytest.mark.parametrize("name, temperature", [(demo.PRIOR_T1, 1.0), (demo.PRIOR_T1 + demo.SEED1, 1.0), (demo.PRIOR_T05, 0.5)])
def test_each_prior_beats_the_gaussian_of_its_std_and_gets_most_of_the_bars_gain(result, name, temperature):
    assert fd_failures(result, name, temperature) == []


def test_the_bar_beats_the_gaussian_of_its_std_by_more_than_2_fd(result):
    assert result.vs_matched(demo.PROMPT_MEAN, "FD")["diff"] < -2.0


def test_the_priors_give_golden_noise_from_unseen_starting_noises_more_likelihood_than_n01(models, pairs):
    assert len(pairs) > 2500  # the reward filter keeps about 95 %
    for name in ("prior", "prior_seed1"):
        assert nll_failures(getattr(models, name), pairs) == [], name


@pytest.mark.parametrize("how", list(BROKEN))
def test_the_same_checks_fail_for_a_broken_prior(result, models, pairs, how):
    failures = fd_failures(result, broken_row(how), 1.0) + nll_failures(BROKEN[how](models.prior), pairs)
    assert failures, f"a prior with {how} passes every check"


def test_table_verdict_grid_and_plot_have_a_row_per_source(result):
    assert TESTBED.table(result).count("\n| ") == len(result.rows)
    judged = [r.name for r in result.rows if r.control is not None and r.noise_std > 0.75 and r.name != demo.PROMPT_MEAN]
    assert TESTBED.verdict(result).count("\n| ") == len(judged) + 1  # + the header's separator line
    assert TESTBED.grid(result).height > len(result.rows) * 40
    for metric, panel in comparisons(result, TESTBED.plot_metrics).items():
        assert [c.source for c in panel] == [row.name for row in result.rows]
        assert all(abs(c.mean - sum(result.values(c.source, metric)) / len(SEEDS)) < 1e-12 for c in panel)


def test_missing_checkpoint_says_how_to_rebuild(tmp_path):
    with pytest.raises(ToyCheckpointError, match="--retrain"):
        load(tmp_path)
