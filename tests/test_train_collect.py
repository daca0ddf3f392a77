"""Dataset collection: the reward filter, golden pairs written to shards, resume."""
import torch

from noisear import standard_normal
from noisear.golden import GoldenConfig, Schedule, golden_noise, scaled_linear_alphas_cumprod
from noisear.train.collect import PromptItem, collect, keep_improved
from noisear.train.data import DatasetInfo, ShardDataset, ShardWriter
from test_golden import GaussianData

ACP = scaled_linear_alphas_cumprod()


def test_reward_filter_keeps_pairs_that_improve_by_more_than_the_margin():
    noise = torch.zeros(4, 1, 2, 2)
    golden = torch.tensor([0.0, 0.05, 0.2, -1.0])[:, None, None, None].expand(4, 1, 2, 2)
    keep = keep_improved(noise, golden, lambda z, c: z.mean(dim=(1, 2, 3)), None, margin=0.1)
    assert keep.tolist() == [False, False, True, False]


def test_collect_writes_golden_noise_and_resumes(tmp_path):
    schedule = Schedule.vp(ACP, 10)
    denoiser = GaussianData(schedule)
    info = DatasetInfo(source_model="gaussian", prediction="epsilon", steps=10, guidance_denoise=5.5)
    items = [PromptItem(p, torch.full((3, 4), float(p)), cond=0.1 * p, uncond=0.0, prompt=f"p{p}") for p in range(3)]
    with ShardWriter(tmp_path, info, shard_size=4) as writer:
        assert collect(denoiser, schedule, writer, items[:2], [0, 1, 2], (2, 4, 4), progress=False)["written"] == 6
    writer = ShardWriter(tmp_path, info, shard_size=4)
    counts = collect(denoiser, schedule, writer, items, [0, 1, 2], (2, 4, 4), progress=False,
                     reward=lambda z, c: -z.abs().mean(dim=(1, 2, 3)), config=GoldenConfig(margin=-1e9))
    assert counts == {"written": 3, "skipped": 6, "rejected": 0}
    dataset = ShardDataset(tmp_path)
    assert dataset.pairs() == {(p, s) for p in range(3) for s in range(3)}
    batch = next(dataset.iterate(batch_size=1))
    expected = golden_noise(denoiser, schedule, standard_normal((1, 2, 4, 4), [int(batch.seed)]), 0.0, 0.0)
    torch.testing.assert_close(batch.noise, expected)
