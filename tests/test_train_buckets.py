"""Aspect-ratio buckets: one dataset of several latent sizes, batches of one size, a 2-D prior trained on both."""

from __future__ import annotations

import pytest
import torch

from noisear import NoiseARConfig
from noisear.train.data import BatchPlan, DatasetError, DatasetInfo, ShardDataset, ShardWriter
from noisear.train.likelihood import train_likelihood
from noisear.train.loop import TrainConfig

SIZES = {"8x8": (8, 8), "8x16": (8, 16)}
CONFIG = NoiseARConfig(patch_size=4, channels=4, latent_height=8, latent_width=8, d_model=16, d_ff=32, text_dim=6, positions="2d")


def write_buckets(root, samples: int = 24, shard_size: int = 5) -> None:
    generator = torch.Generator().manual_seed(0)
    for b, (name, (h, w)) in enumerate(SIZES.items()):
        with ShardWriter(root / name, DatasetInfo(source_model="toy"), shard_size) as writer:
            for i in range(samples):
                text = torch.randn(1, 3, 6, generator=generator)
                # a learnable target: the noise mean follows the prompt
                noise = torch.randn(1, 4, h, w, generator=generator) * 0.5 + text[0, 0, 0]
                writer.append(text, noise, [i % 8], [b * 1000 + i])


def test_batches_never_mix_sizes_and_an_epoch_visits_every_full_batch_of_both(tmp_path):
    write_buckets(tmp_path)
    data = ShardDataset(tmp_path)
    assert data.noise_shapes == [(4, 8, 8), (4, 8, 16)] and len(data) == 48
    plan = BatchPlan(data, batch_size=4, seed=3, validation_fraction=0.0)
    assert plan.batches_per_epoch == 12
    batches = [plan.batch(step) for step in range(plan.batches_per_epoch)]
    shapes = [tuple(batch.noise.shape[1:]) for batch in batches]
    assert shapes.count((4, 8, 8)) == shapes.count((4, 8, 16)) == 6
    assert shapes != sorted(shapes)  # the buckets are interleaved, not one after the other
    seeds = torch.cat([batch.seed for batch in batches]).tolist()
    assert sorted(seeds) == sorted(set(seeds)) and len(seeds) == 48  # each sample once per epoch
    halves = [torch.cat([plan.batch(step, rank, 2).seed for rank in (0, 1)]) for step in range(3)]
    assert all(torch.equal(h, b.seed) for h, b in zip(halves, batches))  # ranks split the same global batch


def test_a_2d_prior_trains_on_both_sizes_and_samples_both(tmp_path):
    write_buckets(tmp_path / "data")
    prior = train_likelihood(
        tmp_path / "data",
        TrainConfig(
            out_dir=str(tmp_path / "run"), steps=4, batch_size=4, warmup_steps=1, progress=False, validation_fraction=0.25
        ),
        CONFIG,
    )
    text = torch.randn(1, 3, 6)
    for h, w in SIZES.values():
        assert prior.sample(text, torch.randn(1, 4, h, w)).shape == (1, 4, h, w)
    log = (tmp_path / "run" / "log.jsonl").read_text()
    assert "gap_vs_standard_normal" in log and "nll_prompt_mean" not in log  # no fixed-size baseline


def test_a_native_only_prior_refuses_a_bucketed_dataset(tmp_path):
    write_buckets(tmp_path / "data")
    table = NoiseARConfig(**{**CONFIG.__dict__, "positions": "table"})
    with pytest.raises(DatasetError, match="positions='2d'"):
        train_likelihood(
            tmp_path / "data", TrainConfig(out_dir=str(tmp_path / "run"), steps=1, batch_size=4, progress=False), table
        )


def test_sizes_may_not_differ_inside_one_directory(tmp_path):
    write_buckets(tmp_path)
    (tmp_path / "8x16" / "shard-00000.safetensors").rename(tmp_path / "8x8" / "shard-00099.safetensors")
    with pytest.raises(DatasetError, match="one latent size per bucket"):
        ShardDataset(tmp_path / "8x8")
