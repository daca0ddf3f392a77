"""Dataset shards: writer (incremental, resumable), row reader, prompt and seed split, mixed batch plan, inspect."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from noisear.train import data as data_module
from noisear.train.data import (
    BatchPlan,
    DatasetError,
    DatasetInfo,
    ShardDataset,
    ShardWriter,
    inspect_dataset,
    validation_prompt,
    validation_seed,
)

INFO = DatasetInfo(source_model="test", prediction="epsilon", steps=10)


def write(directory, prompts=10, per_prompt=3, shard_size=7, info=INFO, shared_seeds=False):
    """Prompt by prompt. Pair j of prompt p: seed 1000*p + j (j with shared_seeds), text filled with p,
    noise filled with 1000*p + j."""
    with ShardWriter(directory, info, shard_size=shard_size) as writer:
        for p in range(prompts):
            seeds = [j if shared_seeds else 1000 * p + j for j in range(per_prompt)]
            text = torch.full((per_prompt, 3, 5), float(p))
            noise = torch.stack([torch.full((2, 4, 4), 1000.0 * p + j) for j in range(per_prompt)])
            writer.append(text, noise, [p] * per_prompt, seeds, prompts={p: f"prompt {p}"})
    return ShardDataset(directory)


def test_writer_flushes_bounded_shards_and_reader_sees_every_sample(tmp_path):
    dataset = write(tmp_path)
    assert [s.count for s in dataset.shards] == [7, 7, 7, 7, 2]
    assert len(dataset) == 30 and dataset.item_shapes == {"text": (3, 5), "noise": (2, 4, 4)}
    seen = {}
    for batch in dataset.iterate(batch_size=4):
        assert batch.text.dtype == torch.float32 and batch.text_mask.dtype == torch.bool
        for text, noise, p, s in zip(batch.text, batch.noise, batch.prompt_index, batch.seed):
            assert torch.all(text == p) and torch.all(noise == s) and s // 1000 == p
            seen[(int(p), int(s))] = True
    assert set(seen) == dataset.pairs() == {(p, 1000 * p + j) for p in range(10) for j in range(3)}
    assert dataset.prompts()[4] == "prompt 4"


def test_writer_resumes_and_reports_existing_pairs(tmp_path):
    with ShardWriter(tmp_path, INFO, shard_size=4) as writer:
        writer.append(torch.zeros(5, 3, 5), torch.zeros(5, 2, 4, 4), [0] * 5, range(5))
    resumed = ShardWriter(tmp_path, INFO, shard_size=4)
    assert resumed.has(0, 4) and not resumed.has(0, 5) and not resumed.has(1, 0)
    resumed.append(torch.zeros(1, 3, 5), torch.zeros(1, 2, 4, 4), [1], [0])
    resumed.close()
    assert len(ShardDataset(tmp_path)) == 6 and len(list(tmp_path.glob("shard-*"))) == 3
    with pytest.raises(DatasetError, match="refusing to append"):
        ShardWriter(tmp_path, DatasetInfo(source_model="other"))
    with pytest.raises(DatasetError, match="differ"):
        resumed.append(torch.zeros(1, 3, 6), torch.zeros(1, 2, 4, 4), [2], [0])


def test_split_is_by_prompt_and_deterministic(tmp_path):
    dataset = write(tmp_path, prompts=40, per_prompt=2)
    prompts = {}
    for split in ("train", "validation"):
        rows = dataset.rows(split, 0.3)
        prompts[split] = {int(dataset.shards[s].prompt_index[r]) for s, rs in enumerate(rows) for r in rs}
    assert prompts["train"].isdisjoint(prompts["validation"])
    assert prompts["train"] | prompts["validation"] == set(range(40))
    assert prompts["validation"] == {p for p in range(40) if validation_prompt(p, 0.3)}
    assert 4 <= len(prompts["validation"]) <= 20


def test_split_holds_out_seeds_as_well_and_validation_noises_are_never_trained_on(tmp_path):
    dataset = write(tmp_path, prompts=40, per_prompt=8, shard_size=16)
    pairs = {}
    for split in ("train", "validation"):
        rows = dataset.rows(split, 0.2, 0.25)
        pairs[split] = {
            (int(dataset.shards[s].prompt_index[r]), int(dataset.shards[s].seed[r])) for s, rs in enumerate(rows) for r in rs
        }
    assert pairs["train"] | pairs["validation"] == dataset.pairs() and not pairs["train"] & pairs["validation"]
    assert pairs["train"] == {
        (p, s) for p, s in dataset.pairs() if not validation_prompt(p, 0.2) and not validation_seed(s, 0.25)
    }
    unseen_prompt = {(p, s) for p, s in pairs["validation"] if validation_prompt(p, 0.2)}
    assert unseen_prompt and pairs["validation"] - unseen_prompt  # both kinds: unseen prompts, unseen seeds only
    assert {p for p, _ in pairs["validation"] - unseen_prompt} <= {p for p, _ in pairs["train"]}


def test_with_seeds_shared_by_prompts_validation_keeps_only_unseen_noises(tmp_path):
    dataset = write(tmp_path, prompts=40, per_prompt=8, shard_size=16, shared_seeds=True)
    assert dataset.seed_counts() == {"distinct_seeds": 8, "shared_seeds": 8, "samples_with_shared_seed": 320}
    assert sum(map(len, dataset.rows("validation", 0.2))) == 0  # held-out prompts, but every noise was trained on
    train_seeds = {int(dataset.shards[s].seed[r]) for s, rs in enumerate(dataset.rows("train", 0.2, 0.3)) for r in rs}
    validation = [
        (int(dataset.shards[s].prompt_index[r]), int(dataset.shards[s].seed[r]))
        for s, rs in enumerate(dataset.rows("validation", 0.2, 0.3))
        for r in rs
    ]
    assert validation and not train_seeds & {s for _, s in validation}


def test_batches_mix_prompts_of_a_dataset_written_prompt_by_prompt_and_read_only_their_rows(tmp_path, monkeypatch):
    dataset = write(tmp_path, prompts=64, per_prompt=8, shard_size=16)  # a shard holds only 2 prompts
    read = []
    real = data_module._read_rows
    monkeypatch.setattr(data_module, "_read_rows", lambda path, rows: read.append(len(rows)) or real(path, rows))
    plan = BatchPlan(dataset, batch_size=32, seed=0, validation_fraction=0.0)
    batches = [plan.batch(step) for step in range(plan.batches_per_epoch)]
    prompts_per_batch = [len(set(b.prompt_index.tolist())) for b in batches]
    assert min(prompts_per_batch) >= 16, prompts_per_batch  # one shard at a time would give at most 4
    assert sum(read) == 32 * len(batches)  # rows read = rows used, never whole shards
    seeds = torch.cat([b.seed for b in batches])
    assert len(set(seeds.tolist())) == len(seeds) == 512  # each sample once per epoch
    assert all(torch.all(b.noise[:, 0, 0, 0] == b.seed) for b in batches)  # rows are not mixed up


def test_batch_plan_is_deterministic_and_ranks_partition_the_global_batch(tmp_path):
    dataset = write(tmp_path, prompts=10, per_prompt=3)
    plan = BatchPlan(dataset, batch_size=4, seed=1, validation_fraction=0.0)
    assert plan.batches_per_epoch == 7
    one = [plan.batch(step) for step in range(10)]
    again = BatchPlan(dataset, batch_size=4, seed=1, validation_fraction=0.0)
    for step in (9, 3, 0):  # any order, e.g. after resuming
        assert torch.equal(again.batch(step).noise, one[step].noise)
        halves = [again.batch(step, rank, 2) for rank in range(2)]
        assert torch.equal(torch.cat([h.noise for h in halves]), one[step].noise)
    epoch0 = torch.cat([b.noise[:, 0, 0, 0] for b in one[:7]])
    assert len(set(epoch0.tolist())) == 28  # no sample twice within an epoch
    other_seed = BatchPlan(dataset, batch_size=4, seed=2, validation_fraction=0.0)
    assert not torch.equal(other_seed.batch(0).noise, one[0].noise)
    with pytest.raises(DatasetError, match="divisible"):
        plan.batch(0, 0, 3)


def test_inspect_reports_counts_and_channel_statistics(tmp_path):
    generator = torch.Generator().manual_seed(0)
    with ShardWriter(tmp_path, INFO, shard_size=50) as writer:
        noise = (
            torch.randn(120, 2, 4, 4, generator=generator) * torch.tensor([1.0, 3.0])[:, None, None]
            + torch.tensor([0.5, -2.0])[:, None, None]
        )
        writer.append(torch.zeros(120, 3, 5), noise, torch.arange(120) // 4, torch.arange(120) % 4)
    report = inspect_dataset(tmp_path)
    assert report["samples"] == 120 and report["prompts"] == 30 and report["shards"] == 3
    assert report["noise_shape"] == (2, 4, 4) and report["text_shape"] == (3, 5)
    flat = noise.transpose(0, 1).reshape(2, -1).double()
    np.testing.assert_allclose(report["channel_mean"], flat.mean(1).numpy(), atol=1e-9)
    np.testing.assert_allclose(report["channel_std"], flat.std(1, unbiased=False).numpy(), atol=1e-9)
    held_out = 4 * report["split_prompts"]["validation"]
    assert held_out and report["split_samples"] == {"train": 120 - held_out, "validation": 0}  # their noises are trained on
    assert report["seeds"]["distinct_seeds"] == 4 and report["seeds"]["shared_seeds"] == 4  # seeds 0..3 per prompt
    assert "repeat across prompts" in report["warnings"][0]


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="no shard"):
        ShardDataset(tmp_path)
    writer = ShardWriter(tmp_path, INFO)
    with pytest.raises(DatasetError, match="NaN"):
        writer.append(torch.zeros(1, 3, 5), torch.full((1, 2, 4, 4), float("nan")), [0], [0])
    with pytest.raises(DatasetError, match="expects"):
        writer.append(torch.zeros(2, 3, 5), torch.zeros(1, 2, 4, 4), [0], [0])
    (tmp_path / "shard-00000.safetensors").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="not a readable"):
        ShardDataset(tmp_path)


def test_a_shard_written_before_seed_schemes_is_read_with_an_unknown_scheme(tmp_path):
    old_info = (
        '{"extra": {}, "guidance_denoise": 5.5, "guidance_invert": 1.0, "prediction": "epsilon", '
        '"schedule": "unknown", "source_model": "old", "steps": 10}'
    )  # what version 1 wrote
    save_file(
        {
            "text": torch.zeros(4, 3, 5),
            "text_mask": torch.ones(4, 3, dtype=torch.uint8),
            "noise": torch.zeros(4, 2, 4, 4),
            "prompt_index": torch.tensor([0, 0, 1, 1]),
            "seed": torch.tensor([0, 1, 0, 1]),
        },
        str(tmp_path / "shard-00000.safetensors"),
        metadata={"format": "noisear-dataset", "format_version": "1", "info": old_info, "prompts": "{}"},
    )
    dataset = ShardDataset(tmp_path)
    assert dataset.info.seed_scheme == "unknown" and dataset.info.source_model == "old" and len(dataset) == 4
    assert dataset.seed_counts() == {"distinct_seeds": 2, "shared_seeds": 2, "samples_with_shared_seed": 4}


def test_dataset_info_naming_a_family_this_version_does_not_know_is_a_clear_error():
    with pytest.raises(DatasetError, match="model family 'sd9', which this version does not know; known: chroma"):
        DatasetInfo.from_json(json.dumps({"family": "sd9"}))
    assert DatasetInfo.from_json(json.dumps({"family": "flux"})).family == "flux"
