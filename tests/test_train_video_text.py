"""Training on video noise and on masked text of any length: padding never changes what is computed, buckets may
differ in frames and in text slots, and the likelihood objective, held-out metrics, control variate and DPO run on
[C, T, H, W] noise."""

from __future__ import annotations

import math

import pytest
import torch
from test_train_likelihood import one_thread  # noqa: F401  (fixture)

from noisear.train.data import (
    SEED_SCHEME,
    Batch,
    DatasetError,
    DatasetInfo,
    PromptSet,
    ShardDataset,
    ShardWriter,
    inspect_dataset,
    prompt_seeds,
    start_noise,
)
from noisear.train.design import design_prior
from noisear.train.dpo import DPOConfig, train_dpo
from noisear.train.likelihood import LikelihoodObjective, train_likelihood
from noisear.train.loop import Runtime, TrainConfig, initial_model
from noisear.train.metrics import held_out_metrics, standard_normal_nll_per_dim

WIDTH = 4
LENGTHS = [1, 3, 2, 4, 1, 2, 3, 4, 2, 1, 3, 2]  # real tokens of prompt p


def prompt_rows(p: int) -> torch.Tensor:
    """The embedding of prompt p: [LENGTHS[p], WIDTH], the same in every dataset."""
    return torch.randn(LENGTHS[p], WIDTH, generator=torch.Generator().manual_seed(100 + p))


def write(directory, shape, slots, per_prompt=4, extra=None, prompts=range(len(LENGTHS))):
    """Golden-like pairs of ``prompts``: noise = the seed's starting noise + a shift that follows the prompt, text =
    the prompt's rows followed by ``slots`` - length padding rows (mask 0, filled with junk: never read)."""
    info = DatasetInfo(source_model="toy", seed_scheme=SEED_SCHEME, extra=extra or {})
    with ShardWriter(directory, info, shard_size=10) as writer:
        for p in prompts:
            length = LENGTHS[p]
            text, mask = torch.full((slots, WIDTH), 7.0), torch.zeros(slots, dtype=torch.bool)
            text[:length], mask[:length] = prompt_rows(p), True
            seeds = prompt_seeds(0, p, per_prompt)
            noise = start_noise(seeds, (per_prompt, *shape)) + 0.3 * prompt_rows(p).mean()
            writer.append(text.expand(per_prompt, -1, -1), noise, [p] * per_prompt, seeds, mask.expand(per_prompt, -1))
    return directory


def settings(out, **changes):
    values = dict(out_dir=str(out), steps=3, batch_size=8, lr=3e-3, warmup_steps=1, log_every=1, checkpoint_every=0)
    return TrainConfig(**{**values, "validation_fraction": 0.25, "progress": False, "device": "cpu", **changes})


def test_the_same_prompts_padded_to_two_lengths_give_the_same_log_likelihood_and_the_same_training(tmp_path):
    short, long = (
        ShardDataset(write(tmp_path / "short", (2, 4, 4), slots=4)),
        ShardDataset(write(tmp_path / "long", (2, 4, 4), slots=11)),
    )
    config = design_prior(short, "none", patch_size=2, d_model=16, d_ff=32, dropout=0.1).config
    assert design_prior(long, "none", patch_size=2, d_model=16, d_ff=32, dropout=0.1).config == config
    model = initial_model(config, seed=0).train(False)
    objectives = [LikelihoodObjective(data, settings(tmp_path / "unused"), control_variate=True) for data in (short, long)]
    batches = [objective.batch(0, Runtime()) for objective in objectives]
    assert batches[0].text.shape[1] == 4 and batches[1].text.shape[1] == 11
    with torch.no_grad():
        scores = [model.log_prob(batch.text, batch.noise, batch.text_mask) for batch in batches]
    assert torch.equal(scores[0], scores[1])
    priors = [
        train_likelihood(data, settings(tmp_path / name), model_config=config) for name, data in (("a", short), ("b", long))
    ]
    for (key, a), b in zip(priors[0].state_dict().items(), priors[1].state_dict().values()):
        assert torch.equal(a, b), key  # dropout on: the same masks too
    metrics = [held_out_metrics(prior, data, 0.25) for prior, data in zip(priors, (short, long))]
    assert metrics[0] == metrics[1] and metrics[0]["val_pairs"] > 0


def test_buckets_may_hold_text_of_different_lengths_padded_in_batches_and_prompt_sets(tmp_path):
    write(tmp_path / "a", (2, 4, 4), slots=4, extra={"text_tokens": 4}, prompts=range(0, 8))
    write(tmp_path / "b", (2, 4, 8), slots=6, extra={"text_tokens": 6}, prompts=range(6, 12))  # what a collector was asked
    data = ShardDataset(tmp_path)
    assert data.noise_shapes == [(2, 4, 4), (2, 4, 8)] and data.text_width == WIDTH and data.text_tokens == max(LENGTHS)
    prompts = PromptSet.from_dataset(data, None)
    assert prompts.text.shape == (len(LENGTHS), 6, WIDTH)  # padded to the longest slots
    for p, index in enumerate(prompts.index.tolist()):
        assert prompts.text_mask[p].tolist() == [True] * LENGTHS[index] + [False] * (6 - LENGTHS[index])
        assert torch.equal(prompts.text[p, : LENGTHS[index]], prompt_rows(index))
    parts = [data.load_rows(0, [0, 1]), data.load_rows(len(data.shards) - 1, [0])]
    parts[1].noise = parts[0].noise[:1]  # text of two lengths (a batch never mixes noise sizes)
    merged = Batch.concat(parts)
    assert merged.text.shape == (3, 6, WIDTH) and not merged.text_mask[:2, 4:].any()
    assert torch.equal(merged.text[:2, :4], parts[0].text) and torch.equal(merged.text_mask[2], parts[1].text_mask[0])
    write(tmp_path / "c", (2, 4, 4), slots=4, extra={"text_tokens": 4, "sigmas": [1.0]})  # made otherwise
    with pytest.raises(DatasetError, match="does not match the other shards"):
        ShardDataset(tmp_path)


def test_a_video_prior_trains_on_two_frame_counts_with_the_control_variate_and_is_validated(tmp_path):
    write(tmp_path / "data" / "t2", (2, 2, 4, 4), slots=5)
    write(tmp_path / "data" / "t3", (2, 3, 4, 4), slots=5)
    data = ShardDataset(tmp_path / "data")
    design = design_prior(data, "none", patch_size=2, d_model=12, d_ff=16)
    c = design.config
    assert (c.positions, c.window, c.window_frames, c.latent_size) == ("3d", 2, 3, (3, 4, 4))
    prior = train_likelihood(data, settings(tmp_path / "run", steps=4), model_config=c)
    assert prior.config.video
    metrics = held_out_metrics(prior, data, 0.25)
    assert all(math.isfinite(value) for value in metrics.values()) and metrics["val_pairs"] > 0
    noises = torch.cat([batch.noise.flatten(1) for batch in data.iterate("validation", 0.25) if batch.noise.shape[2] == 2])
    noises3 = torch.cat([batch.noise.flatten(1) for batch in data.iterate("validation", 0.25) if batch.noise.shape[2] == 3])
    direct = torch.cat([standard_normal_nll_per_dim(noises), standard_normal_nll_per_dim(noises3)]).mean()
    assert metrics["nll_standard_normal"] == pytest.approx(float(direct), rel=1e-9)  # N(0, I) on flattened video noise
    text = PromptSet.from_dataset(data, None).select([0])
    drawn = prior.sample(text.text, torch.randn(1, 2, 5, 6, 8), text_mask=text.text_mask)  # beyond the window: sliding
    assert drawn.shape == (1, 2, 5, 6, 8) and torch.isfinite(drawn).all()


def test_one_frame_data_of_a_video_family_trains_an_image_prior(tmp_path):
    data = ShardDataset(write(tmp_path / "data", (2, 1, 4, 4), slots=4))  # [C, 1, H, W]: one-frame videos
    c = design_prior(data, "none", patch_size=2, d_model=16, d_ff=32).config
    assert c.positions == "2d" and not c.video
    prior = train_likelihood(data, settings(tmp_path / "run"), model_config=c, control_variate=True)
    assert held_out_metrics(prior, data, 0.25)["val_pairs"] > 0
    text = PromptSet.from_dataset(data, None).select([0])
    assert prior.sample(text.text, torch.randn(1, 2, 1, 4, 4), text_mask=text.text_mask).shape == (1, 2, 1, 4, 4)


def first_channel_mean(noise, prompts):
    return noise[:, 0].flatten(1).mean(1)


def test_dpo_fine_tunes_a_video_prior_on_prompts_of_different_lengths(tmp_path):
    write(tmp_path / "data", (2, 2, 4, 4), slots=6)
    data = ShardDataset(tmp_path / "data")
    model = initial_model(design_prior(data, "none", patch_size=2, d_model=12, d_ff=16).config, seed=0)
    start = {key: value.clone() for key, value in model.state_dict().items()}
    prompts = PromptSet.from_dataset(data, "train", 0.25)
    dpo = DPOConfig(rollouts=3, prompts_per_round=4, steps_per_round=2)
    tuned = train_dpo(model, prompts, first_channel_mean, settings(tmp_path / "dpo", steps=2, batch_size=4), dpo)
    changed = [key for key, value in tuned.state_dict().items() if not torch.equal(value, start[key])]
    assert changed and all(torch.isfinite(value).all() for value in tuned.state_dict().values())


def test_inspect_reports_video_channels_and_the_longest_text(tmp_path):
    write(tmp_path, (2, 3, 4, 4), slots=5)
    report = inspect_dataset(tmp_path)
    noise = torch.cat([batch.noise for batch in ShardDataset(tmp_path).iterate()]).double()
    assert report["channel_mean"] == pytest.approx([float(noise[:, c].mean()) for c in range(2)], abs=1e-9)
    assert report["channel_std"] == pytest.approx([float(noise[:, c].std(unbiased=False)) for c in range(2)], rel=1e-6)
    assert report["text_tokens"] == max(LENGTHS) and report["noise_shapes"] == [(2, 3, 4, 4)]
