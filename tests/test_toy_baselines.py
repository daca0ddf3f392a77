"""The baselines without autoregression and the verdict against a bar, each against a simpler reference:
the full-covariance Gaussian against torch's MultivariateNormal on per-prompt sample covariances, the cut prior
against the definition of "no autoregression", the verdict against hand-made per-seed values."""

import math

import pytest
import torch

from noisear.config import NoiseARConfig
from noisear.model import NoiseAR
from noisear.patches import patchify
from noisear.toy.noisear_prior import cut_prefix, is_autoregressive
from noisear.train.data import Batch, DatasetInfo, ShardDataset, ShardWriter
from noisear.train.evaluate import Evaluation, Row, verdict
from noisear.train.metrics import PromptCovarianceBaseline, PromptMeanBaseline

DIMS, PROMPTS, PER_PROMPT = 6, 3, 400


def write_correlated(directory) -> torch.Tensor:
    """Per prompt k (one-hot text): noise = mean_k + A_k z, a different full covariance per prompt. Returns A."""
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(PROMPTS, DIMS, DIMS, generator=generator) * 0.5 + torch.eye(DIMS)
    means = torch.randn(PROMPTS, DIMS, generator=generator)
    with ShardWriter(directory, DatasetInfo(), shard_size=500) as writer:
        for k in range(PROMPTS):
            z = torch.randn(PER_PROMPT, DIMS, generator=generator)
            noise = (means[k] + z @ mixing[k].T).view(PER_PROMPT, 1, 1, DIMS)
            text = torch.nn.functional.one_hot(torch.tensor(k), PROMPTS).float().view(1, 1, PROMPTS).expand(PER_PROMPT, 1, -1)
            writer.append(text, noise, [k] * PER_PROMPT, list(range(k * PER_PROMPT, (k + 1) * PER_PROMPT)))
    return mixing


def test_full_covariance_baseline_is_each_prompts_gaussian_for_one_hot_prompts(tmp_path):
    write_correlated(tmp_path)
    dataset = ShardDataset(tmp_path)
    baseline = PromptCovarianceBaseline(dataset, 0.0, ridge=1e-9, shrinkage=0.0, floor=1e-6)
    batch = Batch.concat(list(dataset.iterate(batch_size=PER_PROMPT)))
    y = batch.noise.flatten(1).double()
    expected = torch.zeros(len(batch), dtype=torch.float64)
    for k in range(PROMPTS):
        rows = batch.prompt_index == k
        mean, cov = y[rows].mean(0), torch.cov(y[rows].T, correction=0)
        expected[rows] = -torch.distributions.MultivariateNormal(mean, cov).log_prob(y[rows]) / DIMS
    torch.testing.assert_close(baseline.nll_per_dim(batch), expected, rtol=1e-5, atol=1e-6)
    # it beats the prompt-mean Gaussian (diagonal) on correlated data, and its samples have its covariance
    mean_only = PromptMeanBaseline(dataset, 0.0, ridge=1e-9)
    assert baseline.nll_per_dim(batch).mean() < mean_only.nll_per_dim(batch).mean() - 0.05
    eps = torch.randn(20000, 1, 1, DIMS, generator=torch.Generator().manual_seed(1))
    text, mask = batch.text[:1].expand(20000, -1, -1), batch.text_mask[:1].expand(20000, -1)
    samples = baseline.sample(text, mask, eps).flatten(1).double()
    torch.testing.assert_close(torch.cov(samples.T), baseline.covariance(text[:1], mask[:1])[0], atol=0.08, rtol=0.05)


def test_shrinkage_and_floor_keep_an_unseen_prompts_covariance_positive_definite(tmp_path):
    write_correlated(tmp_path)
    baseline = PromptCovarianceBaseline(ShardDataset(tmp_path), 0.0, shrinkage=0.5, floor=0.05)
    text = torch.tensor([[[1.0, -2.0, 1.5]]])  # far from every training prompt: the raw regression is indefinite
    raw = torch.einsum("bk,kij->bij", baseline.features(text, torch.ones(1, 1, dtype=torch.bool)), baseline.covariance_weight)
    assert torch.linalg.eigvalsh(0.5 * (raw + raw.transpose(1, 2))).min() < 0
    values = torch.linalg.eigvalsh(baseline.covariance(text, torch.ones(1, 1, dtype=torch.bool)))
    assert values.min() >= 0.05 - 1e-9


def test_a_prompt_mean_baseline_rebuilt_from_its_tensors_gives_the_same_likelihood(tmp_path):
    write_correlated(tmp_path)
    dataset = ShardDataset(tmp_path)
    fitted = PromptMeanBaseline(dataset, 0.0)
    batch = Batch.concat(list(dataset.iterate(batch_size=PER_PROMPT)))
    assert torch.equal(PromptMeanBaseline.from_tensors(fitted.tensors()).nll_per_dim(batch), fitted.nll_per_dim(batch))


def test_a_cut_prior_predicts_every_patch_from_the_prompt_alone_and_stays_cut_when_saved(tmp_path):
    from noisear.io import load, save

    config = NoiseARConfig(
        patch_size=2, channels=1, latent_height=4, latent_width=4, d_model=16, d_ff=32, text_dim=3, dropout=0.0
    )
    torch.manual_seed(0)
    prior = NoiseAR(config)
    for p in prior.prediction_head_mu.parameters():
        torch.nn.init.normal_(p, std=0.3)  # a visible mean
    assert is_autoregressive(prior)
    cut = cut_prefix(prior)
    save(cut, tmp_path / "cut.safetensors")
    reloaded = load(tmp_path / "cut.safetensors")
    assert not is_autoregressive(reloaded)
    text = torch.randn(1, 2, 3)
    a, b = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    means = [reloaded(text, patchify(x, 2)[:, :-1])[0] for x in (a, b)]  # teacher forcing on two different prefixes
    torch.testing.assert_close(means[0], means[1])
    assert means[0].abs().max() > 0.1
    # sampling agrees: the mean (T=0) does not depend on the draws
    torch.testing.assert_close(
        reloaded.sample(text, a, temperature=0.0), reloaded.sample(text, b, temperature=0.0), rtol=0, atol=1e-6
    )
    assert not cut.latent_patch_encoder[-1].weight.requires_grad


class Values:
    metrics = ("FD", "coverage")
    lower_is_better = frozenset({"FD"})


def test_the_verdict_needs_the_source_better_on_enough_seeds_on_every_metric():
    def row(name, fd, coverage):
        return Row(name, 1.0, [], {"FD": fd, "coverage": coverage}, torch.zeros(1))

    bar = row("bar", [10.0] * 5, [0.5] * 5)
    sharper = row("exaggerated", [9.0] * 5, [0.4] * 5)  # better FD bought with coverage
    better = row("better", [9.0, 9.0, 9.0, 9.0, 11.0], [0.6] * 5)  # 4/5 seeds on FD: 80 %
    tied = row("tied", [9.0] * 5, [0.5] * 5)  # a tie is not better
    result = Evaluation([bar, sharper, better, tied], Values(), [1, 2, 3, 4, 5], 10, "bar", 0)
    lines = verdict(result, [("exaggerated", "bar"), ("better", "bar"), ("tied", "bar")], ["FD", "coverage"]).splitlines()
    by_source = {line.split(" | ")[0].strip("| "): line for line in lines[2:5]}
    assert by_source["exaggerated"].endswith("| no |") and "-1.000 (5/5)" in by_source["exaggerated"]
    assert by_source["better"].endswith("| **yes** |") and "(4/5)" in by_source["better"]
    assert by_source["tied"].endswith("| no |") and "+0.000 (0/5)" in by_source["tied"]
    with pytest.raises(KeyError, match="no source"):
        verdict(result, [("missing", "bar")], ["FD"])
    assert math.isclose(result.contrast("better", "bar", "FD", test=False)["diff"], -0.6)
