"""The toy prior's training objective: the starting noise as a control variate for the mean."""
import math

import pytest
import torch

from noisear import NoiseARConfig
from noisear.model import standard_normal
from noisear.train.collect import SEED_SCHEME, prompt_seeds
from noisear.train.data import DatasetError, DatasetInfo, ShardDataset, ShardWriter
from noisear.train.trainer import LikelihoodObjective, Runtime, TrainConfig, initial_model, train
from noisear.toy.prior import ShiftControlVariate

CLASSES, SHAPE = 4, (1, 4, 4)
MODEL = NoiseARConfig(patch_size=2, channels=1, latent_height=4, latent_width=4, d_model=16, d_ff=32, n_layers=1,
                      n_heads=2, text_dim=CLASSES, dropout=0.0)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def shifted_pairs(directory, shift, per_class=256, seed_scheme=SEED_SCHEME):
    """Like golden noise: noise = starting noise of its seed + a small per-class shift [CLASSES, *SHAPE]."""
    with ShardWriter(directory, DatasetInfo(seed_scheme=seed_scheme), shard_size=512) as writer:
        for k in range(CLASSES):
            seeds = prompt_seeds(0, k, per_class)
            text = torch.nn.functional.one_hot(torch.tensor([k]), CLASSES).float()[None]
            writer.append(text.expand(per_class, -1, -1), standard_normal((per_class, *SHAPE), seeds) + shift[k],
                          [k] * per_class, seeds)
    return ShardDataset(directory)


def settings(tmp_path, name, steps=60):
    return TrainConfig(out_dir=str(tmp_path / name), steps=steps, batch_size=64, lr=3e-3, warmup_steps=10,
                       validation_fraction=0.0, checkpoint_every=0, resume=False, device="cpu", progress=False,
                       log_every=50)


def mean_cosine(prior, shift):
    """Cosine between the prior's T=0 noise per class and the true shift."""
    text = torch.eye(CLASSES)[:, None, :]
    mean = prior.sample(text, torch.zeros(CLASSES, *SHAPE), temperature=0.0)
    return float(torch.nn.functional.cosine_similarity(mean.flatten(), shift.flatten(), dim=0))


def test_logged_loss_is_the_models_nll_of_the_batch(tmp_path):
    dataset = shifted_pairs(tmp_path / "pairs", 0.1 * torch.randn(CLASSES, *SHAPE), per_class=16)
    config = settings(tmp_path, "run")
    model = initial_model(MODEL, seed=0)
    objective = ShiftControlVariate(model, dataset, config)
    batch = objective.batch(0, Runtime())
    loss, metrics = objective.loss(None, batch)
    with torch.no_grad():
        reference = -model.log_prob(batch.text, batch.noise).double().mean() / math.prod(SHAPE)
    assert metrics["train_loss"] == pytest.approx(float(reference), abs=1e-5)
    assert torch.isfinite(loss)


def test_control_variate_finds_a_small_class_shift_that_plain_likelihood_training_misses(tmp_path):
    shift = 0.08 * torch.randn(CLASSES, *SHAPE, generator=torch.Generator().manual_seed(1))
    dataset = shifted_pairs(tmp_path / "pairs", shift)
    model = initial_model(MODEL, seed=0)
    with_cv = train(model, ShiftControlVariate(model, dataset, settings(tmp_path, "cv")), settings(tmp_path, "cv"))
    plain = train(initial_model(MODEL, seed=0), LikelihoodObjective(dataset, settings(tmp_path, "plain")),
                  settings(tmp_path, "plain"))
    # at this budget: about 0.82 against 0.50
    assert mean_cosine(with_cv, shift) > 0.75
    assert mean_cosine(with_cv, shift) > mean_cosine(plain, shift) + 0.2


def test_control_variate_needs_the_recorded_starting_noises(tmp_path):
    dataset = shifted_pairs(tmp_path / "pairs", torch.zeros(CLASSES, *SHAPE), per_class=8, seed_scheme="unknown")
    with pytest.raises(DatasetError, match="starting noise"):
        ShiftControlVariate(initial_model(MODEL, seed=0), dataset, settings(tmp_path, "run"))
