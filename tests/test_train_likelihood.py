"""Likelihood training: schedule, N(0,I) start, mean recovery, exact resume, DDP equals one process."""

import json
import math
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

import noisear
from noisear import NoiseARConfig
from noisear.patches import patchify
from noisear.train.data import (
    SEED_SCHEME,
    Batch,
    DatasetError,
    DatasetInfo,
    ShardDataset,
    ShardWriter,
    prompt_seeds,
    shift_from_start,
    start_noise,
    validation_prompt,
)
from noisear.train.likelihood import LikelihoodObjective, train_likelihood
from noisear.train.loop import TrainConfig, initial_model, learning_rate, train
from noisear.train.metrics import PromptMeanBaseline, held_out_metrics, standard_normal_nll_per_dim
from noisear.train.runs import read_checkpoint

MODEL = NoiseARConfig(patch_size=2, channels=2, latent_height=4, latent_width=4, d_model=16, d_ff=32, text_dim=4, dropout=0.0)
SHAPE = (2, 4, 4)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and the test machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_dataset(directory, prompts=64, per_prompt=16, scale=0.8, seed=0):
    """Noise = m(prompt) + N(0, I) with m a fixed linear map of the prompt embedding. Returns (text, means)."""
    generator = torch.Generator().manual_seed(seed)
    text = torch.randn(prompts, 2, 4, generator=generator)
    mapping = torch.randn(math.prod(SHAPE), 4, generator=generator) / math.sqrt(4)
    means = (scale * text.mean(1) @ mapping.T).reshape(prompts, *SHAPE)
    with ShardWriter(directory, DatasetInfo(source_model="known-mean toy"), shard_size=100) as writer:
        for p in range(prompts):
            noise = means[p] + torch.randn(per_prompt, *SHAPE, generator=generator)
            writer.append(
                text[p].expand(per_prompt, -1, -1), noise, [p] * per_prompt, range(p * per_prompt, (p + 1) * per_prompt)
            )  # a distinct seed per sample
    return text, means


def config(tmp_path, **changes):
    base = TrainConfig(
        out_dir=str(tmp_path / "run"),
        steps=8,
        batch_size=8,
        lr=3e-3,
        warmup_steps=2,
        log_every=2,
        checkpoint_every=4,
        validation_fraction=0.2,
        progress=False,
        device="cpu",
    )
    return replace(base, **changes)


def test_learning_rate_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    c = TrainConfig(steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert [learning_rate(s, c) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert learning_rate(60, c) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert learning_rate(110, c) == pytest.approx(0.1)
    assert learning_rate(35, c) > learning_rate(36, c)


def test_untrained_prior_is_standard_normal_and_init_is_seeded():
    model = initial_model(MODEL, seed=3)
    noise = torch.randn(16, *SHAPE)
    nll = -model.eval().log_prob(torch.randn(16, 2, 4), noise) / noise[0].numel()
    assert torch.allclose(nll.double(), standard_normal_nll_per_dim(noise), atol=2e-3)
    assert torch.equal(
        initial_model(MODEL, seed=3).state_dict()["prediction_head_mu.2.weight"],
        model.state_dict()["prediction_head_mu.2.weight"],
    )


def test_training_recovers_a_prompt_dependent_mean_and_beats_standard_normal(tmp_path):
    text, means = make_dataset(tmp_path / "data")
    c = config(tmp_path, steps=400, batch_size=32, lr=1e-2, warmup_steps=20, checkpoint_every=0, log_every=50)
    prior = train_likelihood(tmp_path / "data", c, model_config=MODEL)
    mean = prior.sample(text, temperature=0.0)  # the mode of each patch given the earlier modes
    error = (mean - means).pow(2).mean().sqrt()
    assert error < 0.4 * means.pow(2).mean().sqrt(), f"rms error {error:.3f} of mean rms {means.pow(2).mean().sqrt():.3f}"
    records = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    final = records[-1]
    assert final["kind"] == "validation" and "train_loss" in records[-2] and "nll" not in records[-2]
    assert final["gap_vs_standard_normal"] > 0.05, final  # validation prompts were never trained on
    assert final["gap_vs_prompt_mean"] > -0.05, final  # about as good as the linear baseline the data was made from
    assert abs(final["sample_std_t1"] / final["data_std"] - 1) < 0.1, final  # calibrated
    assert final["mean_shift_cosine"] > 0.5 and final["mean_shift_cosine_prompt_mean"] > 0.5, final
    assert noisear.load(tmp_path / "run/prior.safetensors").config == MODEL


def test_a_dataset_whose_noises_repeat_across_prompts_is_refused_unless_allowed(tmp_path):
    with ShardWriter(tmp_path / "data", DatasetInfo(source_model="old collector")) as writer:
        for p in range(8):
            writer.append(torch.randn(4, 2, 4), torch.randn(4, *SHAPE), [p] * 4, range(4))  # seeds 0..3 for every prompt
    with pytest.raises(DatasetError, match="allow-repeated-noises"):
        train_likelihood(tmp_path / "data", config(tmp_path), model_config=MODEL)
    c = config(tmp_path, steps=2, validation_seed_fraction=0.3)
    train_likelihood(tmp_path / "data", c, model_config=MODEL, allow_repeated_noises=True)
    final = json.loads((tmp_path / "run/log.jsonl").read_text().splitlines()[-1])
    assert final["kind"] == "validation" and final["val_pairs_unseen_prompts"] < final["val_pairs"]


class KnownPrior(torch.nn.Module):
    """A stand-in prior: N(mean(text), std^2 I) with mean(text) = pooled text @ mapping^T."""

    def __init__(self, mapping, std):
        super().__init__()
        self.mapping, self.std = torch.nn.Parameter(mapping), std
        self.config = MODEL  # an image prior of SHAPE's noise

    def mean(self, text):
        return (text.mean(1) @ self.mapping.T).reshape(len(text), *SHAPE)

    def log_prob(self, text, noise, text_mask=None):
        z = (noise - self.mean(text)) / self.std
        return (-0.5 * z**2 - math.log(self.std) - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)

    def sample(self, text, eps, temperature=1.0, text_mask=None):
        return self.mean(text) + temperature * self.std * eps


def write_known_shift(directory, prompts=48, per_prompt=6, scale=0.3):
    """Golden-like pairs: noise = starting noise of the pair's seed + a linear shift of the pooled prompt.
    Returns the mapping (the shift of prompt text t is t.mean(0) @ mapping.T)."""
    generator = torch.Generator().manual_seed(0)
    text = torch.randn(prompts, 2, 4, generator=generator)
    mapping = torch.randn(math.prod(SHAPE), 4, generator=generator) * scale
    info = DatasetInfo(source_model="known shift", seed_scheme=SEED_SCHEME)
    with ShardWriter(directory, info, shard_size=20) as writer:
        for p in range(prompts):
            seeds = prompt_seeds(0, p, per_prompt)
            shift = (text[p].mean(0) @ mapping.T).reshape(SHAPE)
            writer.append(
                text[p].expand(per_prompt, -1, -1), start_noise(seeds, (per_prompt, *SHAPE)) + shift, [p] * per_prompt, seeds
            )
    return mapping


def test_held_out_metrics_match_a_direct_computation_on_the_whole_validation_split(tmp_path):
    mapping = write_known_shift(tmp_path)
    dataset = ShardDataset(tmp_path)
    baseline = PromptMeanBaseline(dataset, 0.25, ridge=1e-3, seed_fraction=0.2)
    prior = KnownPrior(mapping, std=1.0)  # the true distribution of the noise given the prompt
    metrics = held_out_metrics(prior, dataset, 0.25, 0.2, baseline)

    val = Batch.concat(list(dataset.iterate("validation", 0.25, 1000, 0.2)))
    unseen = torch.tensor([validation_prompt(int(p), 0.25) for p in val.prompt_index])
    nll = -prior.log_prob(val.text, val.noise).detach() / math.prod(SHAPE)
    assert metrics["val_pairs"] == len(val) and metrics["val_pairs_unseen_prompts"] == int(unseen.sum()) > 0
    assert metrics["val_nll"] == pytest.approx(float(nll.mean()), rel=1e-6)
    assert metrics["val_nll_unseen_prompts"] == pytest.approx(float(nll[unseen].mean()), rel=1e-6)
    assert metrics["val_nll_seen_prompts"] == pytest.approx(float(nll[~unseen].mean()), rel=1e-6)
    reference_n01 = 0.5 * (val.noise.double() ** 2 + math.log(2 * math.pi)).mean()
    assert metrics["nll_standard_normal"] == pytest.approx(float(reference_n01), rel=1e-9)
    assert metrics["gap_vs_standard_normal"] == pytest.approx(metrics["nll_standard_normal"] - metrics["val_nll"])
    assert metrics["data_std"] == pytest.approx(float(val.noise.double().std(unbiased=False)), rel=1e-6)
    assert metrics["sample_std_t1"] == pytest.approx(metrics["data_std"], rel=0.1)  # calibrated (64 draws)
    assert metrics["mean_shift_cosine"] == pytest.approx(1.0, abs=1e-6)  # its mean is the true shift
    assert metrics["mean_shift_cosine_prompt_mean"] > 0.95
    train = Batch.concat(list(dataset.iterate("train", 0.25, 1000, 0.2)))  # the ridge fit, directly
    x = torch.cat([train.text.double().mean(1), torch.ones(len(train), 1, dtype=torch.float64)], 1)
    penalty = 1e-3 * (x.T @ x).diagonal()[:-1].mean() * torch.diag(torch.tensor([1.0] * 4 + [0.0], dtype=torch.float64))
    shift = (train.noise - start_noise(train.seed, train.noise.shape)).flatten(1).double()
    torch.testing.assert_close(baseline.weight, torch.linalg.solve(x.T @ x + penalty, x.T @ shift))
    assert held_out_metrics(prior, dataset, 0.0) == {}  # nothing held out: nothing to report


def test_a_mean_target_keeps_the_value_and_gives_the_control_variate_gradient():
    model = initial_model(MODEL, seed=1)
    text, noise, start = torch.randn(3, 2, 4), torch.randn(3, *SHAPE), torch.randn(3, *SHAPE)
    plain = model.log_prob(text, noise)
    mu_weight, logvar_weight = model.prediction_head_mu[2].weight, model.prediction_head_logvar[2].weight

    def gradients(value):
        return torch.autograd.grad(value.sum(), (mu_weight, logvar_weight))

    torch.testing.assert_close(model.log_prob(text, noise, mean_target=noise - start), plain)
    for a, b in zip(gradients(model.log_prob(text, noise, mean_target=noise)), gradients(plain)):
        torch.testing.assert_close(a, b)  # the target = the noise: plain likelihood
    tokens, target = patchify(noise, 2), patchify(noise - start, 2)  # the surrogate written out
    mu, logvar = model(text, tokens[:, :-1])
    surrogate = -0.5 * (
        (target - mu) ** 2 * torch.exp(-logvar.detach()) + (tokens - mu.detach()) ** 2 * torch.exp(-logvar) + logvar
    )
    for a, b in zip(gradients(model.log_prob(text, noise, mean_target=noise - start)), gradients(surrogate)):
        torch.testing.assert_close(a, b)


def test_the_control_variate_finds_a_small_prompt_shift_that_plain_likelihood_misses(tmp_path):
    write_known_shift(tmp_path / "data", prompts=64, per_prompt=16, scale=0.05)  # shift ~0.05 per dimension
    cosines = {}
    for control_variate in (None, False):  # None: auto, on since the seeds say what the starting noise was
        c = config(
            tmp_path,
            steps=150,
            batch_size=64,
            lr=3e-3,
            warmup_steps=10,
            checkpoint_every=0,
            log_every=50,
            validation_fraction=0.2,
            out_dir=str(tmp_path / f"run-{control_variate}"),
        )
        train_likelihood(tmp_path / "data", c, model_config=MODEL, control_variate=control_variate)
        final = json.loads((tmp_path / f"run-{control_variate}/log.jsonl").read_text().splitlines()[-1])
        cosines[control_variate] = final["mean_shift_cosine"]  # on unseen prompts
    assert cosines[None] > 0.5 and cosines[None] > cosines[False] + 0.2, cosines
    make_dataset(tmp_path / "unknown")
    with pytest.raises(DatasetError, match="control variate"):
        train_likelihood(tmp_path / "unknown", c, model_config=MODEL, control_variate=True)


class Crash(RuntimeError):
    pass


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    make_dataset(tmp_path / "data", prompts=12, per_prompt=4)
    dataset = ShardDataset(tmp_path / "data")
    model_config = replace(MODEL, dropout=0.2)  # dropout makes the RNG state matter
    c = config(tmp_path, steps=12, ema_decay=0.9, out_dir=str(tmp_path / "whole"))
    whole = train(initial_model(model_config), LikelihoodObjective(dataset, c), c)

    c = replace(c, out_dir=str(tmp_path / "killed"))
    objective = LikelihoodObjective(dataset, c)
    plain_batch = objective.batch

    def crashing_batch(step, runtime):
        if step == 10:
            raise Crash()
        return plain_batch(step, runtime)

    objective.batch = crashing_batch
    with pytest.raises(Crash):
        train(initial_model(model_config), objective, c)
    assert read_checkpoint(tmp_path / "killed/checkpoint.safetensors")["step"] == 8
    torch.manual_seed(1234)  # the resumed process starts from another RNG state and another model object
    resumed = train(initial_model(model_config), LikelihoodObjective(dataset, c), c)
    for (key, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key
    with pytest.raises(ValueError, match="batch_size"):
        train(initial_model(model_config), LikelihoodObjective(dataset, replace(c, batch_size=4)), replace(c, batch_size=4))


DDP_ARGS = [
    "--family",
    "none",
    "--patch-size",
    "2",
    "--d-model",
    "16",
    "--d-ff",
    "32",
    "--dropout",
    "0",
    "--steps",
    "6",
    "--batch-size",
    "8",
    "--lr",
    "3e-3",
    "--warmup-steps",
    "2",
    "--grad-clip",
    "0.5",
    "--ema-decay",
    "0.5",
    "--adam-eps",
    "1e-6",
    "--log-every",
    "2",
    "--checkpoint-every",
    "3",
    "--validation-fraction",
    "0.2",
    "--no-progress",
    "--device",
    "cpu",
]


def test_two_process_torchrun_equals_one_process_per_global_batch(tmp_path):
    # adam_eps 1e-6: attention key biases have an exactly-zero true gradient, and with eps 1e-8 Adam
    # turns their float rounding noise (different for 1 and 2 processes) into lr-sized steps.
    write_known_shift(tmp_path / "data", prompts=12, per_prompt=4)  # known seeds: the control variate is on
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    command = ["-m", "noisear", "train", str(tmp_path / "data"), *DDP_ARGS]
    subprocess.run(
        [sys.executable, *command, "--out", str(tmp_path / "one")], check=True, env=env, timeout=120, capture_output=True
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            *command,
            "--out",
            str(tmp_path / "two"),
        ],
        check=True,
        env=env,
        timeout=120,
        capture_output=True,
    )
    one = noisear.load(tmp_path / "one/prior.safetensors").state_dict()
    two = noisear.load(tmp_path / "two/prior.safetensors").state_dict()
    start = initial_model(MODEL).state_dict()
    assert not torch.allclose(one["prediction_head_mu.2.weight"], start["prediction_head_mu.2.weight"])
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-5, rtol=1e-4), key
    rng = read_checkpoint(tmp_path / "two/checkpoint.safetensors")["rng"]
    assert len(rng) == 2


def test_a_size_that_is_not_whole_patches_is_trained_on_its_top_left_whole_patches(tmp_path):
    """10 x 10 cells with 4 x 4-cell patches: training reads the top-left 8 x 8 (where the sampler's patches lie),
    and the control variate's starting noise is the seed's draw at 10 x 10, cut the same way."""
    from safetensors.torch import load_file

    stored, seeds = (2, 10, 10), prompt_seeds(0, 0, 4) + prompt_seeds(0, 1, 4)
    text = torch.randn(8, 2, 4, generator=torch.Generator().manual_seed(3))
    with ShardWriter(tmp_path / "data", DatasetInfo(source_model="10 x 10", seed_scheme=SEED_SCHEME)) as writer:
        writer.append(text, start_noise(seeds, (8, *stored)) + 0.3, [0] * 4 + [1] * 4, seeds)
    prior = replace(MODEL, patch_size=4, latent_height=8, latent_width=8, positions="2d", window=2)
    run = config(tmp_path, steps=1, batch_size=8, log_every=1, validation_fraction=0.0)
    train_likelihood(tmp_path / "data", run, model_config=prior)

    record = next(json.loads(line) for line in open(tmp_path / "run" / "log.jsonl") if '"train"' in line)
    written = load_file(next((tmp_path / "data").glob("*.safetensors")))
    cropped = written["noise"][:, :, :8, :8]
    start = initial_model(prior, seed=run.seed)  # the weights step 1's loss was computed with
    with torch.no_grad():
        nll = -start.log_prob(written["text"], cropped, written["text_mask"].bool()) / cropped[0].numel()
    assert record["train_loss"] == pytest.approx(float(nll.mean()), rel=1e-5)

    batch = next(ShardDataset(tmp_path / "data").in_whole_patches((4, 4)).iterate(batch_size=8))
    assert torch.equal(batch.noise, cropped) and batch.stored_shape == stored
    whole_start = start_noise(batch.seed, (8, *stored))[:, :, :8, :8]
    torch.testing.assert_close(shift_from_start(batch), cropped - whole_start)
    assert torch.allclose(shift_from_start(batch), torch.tensor(0.3), atol=1e-5)  # not noise minus another draw


def test_a_size_less_than_one_patch_on_a_side_is_refused(tmp_path):
    with ShardWriter(tmp_path / "data", DatasetInfo(source_model="3 x 10")) as writer:
        writer.append(torch.randn(2, 2, 4), torch.randn(2, 2, 3, 10), [0, 1], [0, 1])
    prior = replace(MODEL, patch_size=4, latent_height=8, latent_width=8, positions="2d", window=2)
    with pytest.raises(DatasetError, match=r"holds noise \[2, 3, 10\], less than one 4 x 4-cell patch on a side"):
        train_likelihood(tmp_path / "data", config(tmp_path, steps=1, batch_size=2, validation_fraction=0.0), prior)
