"""Dataset collection: distinct seeds per (prompt, j), the reward filter, golden pairs written to shards, resume."""

import hashlib

import pytest
import torch
from test_golden import GaussianData

from noisear import standard_normal
from noisear.golden import GoldenConfig, Schedule, golden_noise, scaled_linear_alphas_cumprod
from noisear.train.collect import PromptItem, collect, golden_function, keep_improved
from noisear.train.data import SEED_SCHEME, DatasetError, DatasetInfo, ShardDataset, ShardWriter, pair_seed, prompt_seeds

ACP = scaled_linear_alphas_cumprod()


def test_reward_filter_keeps_pairs_that_improve_by_more_than_the_margin():
    noise = torch.zeros(4, 1, 2, 2)
    golden = torch.tensor([0.0, 0.05, 0.2, -1.0])[:, None, None, None].expand(4, 1, 2, 2)
    keep = keep_improved(noise, golden, lambda z, c: z.mean(dim=(1, 2, 3)), None, margin=0.1)
    assert keep.tolist() == [False, False, True, False]


def test_pair_seed_is_the_documented_hash_and_distinct_for_every_prompt_and_j():
    digest = hashlib.sha256(b"pair-sha256-v1:7:123456789:3").digest()
    assert pair_seed(7, 123456789, 3) == int.from_bytes(digest[:8], "big") >> 11
    seeds = [pair_seed(0, p, j) for p in range(200) for j in range(50)]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**53 for s in seeds)
    assert prompt_seeds(0, 5, 3) == [pair_seed(0, 5, j) for j in range(3)]
    assert pair_seed(1, 5, 0) != pair_seed(0, 5, 0)  # first_seed gives other noises for the same prompts


def test_collect_writes_golden_noise_of_distinct_seeds_and_resumes(tmp_path):
    schedule = Schedule.vp(ACP, 10)
    denoiser = GaussianData(schedule)
    golden = golden_function(denoiser, schedule, GoldenConfig())
    info = DatasetInfo(source_model="gaussian", prediction="epsilon", steps=10, guidance_denoise=5.5, seed_scheme=SEED_SCHEME)
    items = [PromptItem(p, torch.full((3, 4), float(p)), cond=0.1 * p, uncond=0.0, prompt=f"p{p}") for p in range(3)]
    with ShardWriter(tmp_path, info, shard_size=4) as writer:
        assert collect(golden, writer, items[:2], 3, (2, 4, 4))["written"] == 6
    writer = ShardWriter(tmp_path, info, shard_size=4)
    progress = []
    counts = collect(
        golden,
        writer,
        items,
        3,
        (2, 4, 4),
        reward=lambda z, c: -z.abs().mean(dim=(1, 2, 3)),
        margin=-1e9,
        batch_size=2,
        progress=lambda done, total: progress.append((done, total)),
    )
    assert counts == {"written": 3, "skipped": 6, "rejected": 0}
    assert progress[0] == (3, 9) and progress[-1] == (9, 9) and progress == sorted(progress)  # skipped pairs count too
    dataset = ShardDataset(tmp_path)
    assert dataset.pairs() == {(p, pair_seed(0, p, j)) for p in range(3) for j in range(3)}
    assert dataset.seed_counts()["shared_seeds"] == 0 and dataset.info.seed_scheme == SEED_SCHEME
    batch = next(dataset.iterate(batch_size=1))
    expected = golden_noise(denoiser, schedule, standard_normal((1, 2, 4, 4), [int(batch.seed)]), 0.0, 0.0)
    torch.testing.assert_close(batch.noise, expected)


class LazyPrompt:
    """A prompt that counts how often it is encoded (a host encodes on demand)."""

    def __init__(self, index: int) -> None:
        self.index, self.encodings = index, 0

    def encoded(self) -> PromptItem:
        self.encodings += 1
        return PromptItem(self.index, torch.zeros(3, 4), cond=0.0, prompt=f"p{self.index}")


def test_collect_encodes_only_prompts_with_missing_pairs_and_hands_the_golden_function_their_seeds(tmp_path):
    calls = []

    def golden(noise, item, seeds):  # the starting noise shifted by the prompt's index
        calls.append((item.index, seeds))
        return noise + item.index

    info = DatasetInfo(seed_scheme=SEED_SCHEME)
    with ShardWriter(tmp_path, info) as writer:
        collect(golden, writer, [LazyPrompt(0)], 3, (1, 2, 2), batch_size=2)
    prompts = [LazyPrompt(0), LazyPrompt(1)]
    with ShardWriter(tmp_path, info) as writer:
        assert collect(golden, writer, prompts, 3, (1, 2, 2), batch_size=2) == {"written": 3, "skipped": 3, "rejected": 0}
    assert [p.encodings for p in prompts] == [0, 1]
    assert calls[-2:] == [(1, prompt_seeds(0, 1, 3)[:2]), (1, prompt_seeds(0, 1, 3)[2:])]
    batch = next(iter([b for b in ShardDataset(tmp_path).iterate(batch_size=1) if int(b.prompt_index[0]) == 1]))
    torch.testing.assert_close(batch.noise, standard_normal((1, 1, 2, 2), [int(batch.seed)]) + 1)


def test_an_interrupt_stops_collect_before_the_next_batch(tmp_path):
    batches = []

    def interrupt():
        if len(batches) == 2:
            raise KeyboardInterrupt

    def golden(noise, item, seeds):
        batches.append(seeds)
        return noise

    with ShardWriter(tmp_path, DatasetInfo(seed_scheme=SEED_SCHEME)) as writer:
        with pytest.raises(KeyboardInterrupt):
            collect(golden, writer, [LazyPrompt(0)], 5, (1, 2, 2), batch_size=2, interrupt=interrupt)
    assert len(batches) == 2 and len(ShardDataset(tmp_path)) == 4


def test_collect_refuses_a_writer_that_does_not_record_the_seed_scheme(tmp_path):
    with pytest.raises(DatasetError, match="seed_scheme"):
        collect(None, ShardWriter(tmp_path, DatasetInfo()), [], 3, (2, 4, 4))
