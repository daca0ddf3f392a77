"""The prior `noisear train` designs for a dataset: its family, patch, positions, window, text and encoder, each
from the family and the data unless given, and the refusals that say what to give instead."""

from __future__ import annotations

import pytest
import torch

from noisear.config import NoiseARConfigError
from noisear.families import FAMILIES
from noisear.train.data import DatasetError, DatasetInfo, ShardDataset, ShardWriter
from noisear.train.design import TOKEN_VALUES_MAX, design_prior


def write(directory, noise_shape, width, tokens=(3,), slots=4, family="", samples=2, extra=None):
    """``samples`` pairs per prompt of noise ``noise_shape`` and text [slots, width]; prompt p's text has tokens[p]
    real rows (mask 1), then padding."""
    info = DatasetInfo(source_model="test", family=family, extra=extra or {})
    with ShardWriter(directory, info) as writer:
        for p, count in enumerate(tokens):
            text, mask = torch.zeros(samples, slots, width), torch.zeros(samples, slots, dtype=torch.bool)
            text[:, :count], mask[:, :count] = 1.0, True
            seeds = [1000 * p + j for j in range(samples)]
            writer.append(text, torch.randn(samples, *noise_shape), [p] * samples, seeds, mask)


def family_data(root, key, sizes, recorded=True, **options):
    """A dataset of family ``key`` (recorded in its info or not) with one bucket per size ((H, W) or (T, H, W) in
    latent cells)."""
    family = FAMILIES[key]
    for size in sizes:
        write(root / "x".join(map(str, size)), (family.channels, *size), family.text_dim, family=key * recorded, **options)
    return ShardDataset(root)


def test_a_flux_dataset_gets_the_familys_patch_two_d_positions_a_window_over_its_buckets_and_a_wide_encoder(tmp_path):
    design = design_prior(family_data(tmp_path, "flux", [(16, 24), (32, 8)], tokens=(5, 83), slots=96))
    c = design.config
    assert (c.family, c.channels, c.text_dim, c.positions) == ("flux", 16, 4096, "2d")
    assert c.patch_size == 8 and c.patch_dim == 16 * 8 * 8 == 1024
    assert c.window == 4  # the 32 x 8 bucket is 4 patches high; the 16 x 24 one 3 wide
    assert c.text_tokens == 512  # the family's limit is above the data's longest text (83)
    assert c.patch_hidden_dim == 512  # K/2: the published 2*P*P would be 128
    assert (c.latent_height, c.latent_width) == (16, 24)  # the largest bucket (384 cells)
    block = design.describe()
    for words in (
        "flux: Flux.1 dev / schnell (from the dataset)",
        "8 x 8 cells = 1,024 values per token (Flux.1 dev / schnell's)",
        "4 patches a side (covers the largest bucket, 32 x 8 cells)",
        "4096 wide, up to 512 tokens",
        "the data's longest text: 83",
        "hidden 512 (max(2*Pt*P*P = 128, K/2 = 512) for K = 1,024)",
        f"parameters  {c.num_values:,}",
    ):
        assert words in block, (words, block)


def test_a_wan_video_dataset_gets_video_positions_and_a_window_in_frames_too(tmp_path):
    c = design_prior(family_data(tmp_path, "wan", [(2, 8, 16), (3, 8, 8)])).config
    assert (c.positions, c.patch, c.window, c.window_frames) == ("3d", (1, 8, 8), 2, 3)
    assert (c.latent_frames, c.latent_height, c.latent_width) == (2, 8, 16)


def test_one_frame_data_of_a_video_family_gives_an_image_prior_of_that_family(tmp_path):
    c = design_prior(family_data(tmp_path, "wan", [(1, 8, 16)])).config
    assert (c.family, c.positions, c.latent_frames, c.window_frames) == ("wan", "2d", 1, 0)


def test_a_many_channel_family_gets_small_patches_and_an_encoder_as_wide_as_half_a_token(tmp_path):
    c = design_prior(family_data(tmp_path, "hunyuan-image-2.1", [(8, 8)])).config
    assert c.patch_size == 4 and c.patch_dim == 64 * 16
    assert c.patch_hidden_dim == c.patch_dim // 2 > 2 * 4 * 4


def test_every_family_gets_its_own_patch_and_text_limit(tmp_path):
    for key, family in FAMILIES.items():
        size = (2, 2 * family.patch_size, family.patch_size) if family.video else (2 * family.patch_size, family.patch_size)
        c = design_prior(family_data(tmp_path / key, key, [size])).config
        token = family.channels * family.patch_frames * family.patch_size**2
        assert (c.family, c.patch_size, c.patch_dim, c.text_tokens) == (key, family.patch_size, token, family.text_tokens)
        assert c.patch_hidden_dim == max(2 * family.patch_frames * family.patch_size**2, token // 2)
        assert c.positions == ("3d" if family.video else "2d") and c.window == 2


def test_every_choice_can_be_given(tmp_path):
    data = family_data(tmp_path, "flux", [(16, 16)], tokens=(5,), slots=8)
    given = dict(patch_size=4, window=8, text_tokens=6, patch_hidden_dim=100, d_model=32, d_ff=64, n_heads=2, dropout=0.0)
    design = design_prior(data, **given)
    assert {name: getattr(design.config, name) for name in given} == given
    assert design.reasons["window"] == "given" and "(given)" in design.describe()


def test_the_family_comes_from_the_option_or_the_dataset_and_a_mismatch_names_both(tmp_path):
    data = family_data(tmp_path, "chroma", [(8, 8)])
    assert design_prior(data, family="chroma").reasons["family"] == "given"
    with pytest.raises(DatasetError, match=r"--family flux names another family than .* records \(chroma: Chroma\)"):
        design_prior(data, family="flux")
    with pytest.raises(DatasetError, match="--family none names another family"):
        design_prior(data, family="none")
    with pytest.raises(DatasetError, match="cannot train a Lumina Image 2.0 / Z-Image prior: its text is 4096 wide"):
        design_prior(family_data(tmp_path / "unrecorded", "chroma", [(8, 8)], recorded=False), family="lumina2")


def test_without_a_recorded_family_the_shapes_must_fit_exactly_one(tmp_path):
    write(tmp_path / "sdxl", (4, 32, 32), 2048)
    design = design_prior(ShardDataset(tmp_path / "sdxl"))
    assert design.config.family == "sdxl" and "the only family" in design.reasons["family"]
    write(tmp_path / "sixteen", (16, 8, 8), 4096)
    with pytest.raises(DatasetError, match=r"records no model family .* fit sd3, flux, chroma\. Give --family KEY"):
        design_prior(ShardDataset(tmp_path / "sixteen"))
    write(tmp_path / "toy", (2, 4, 4), 6)
    with pytest.raises(DatasetError, match="fit no known family.* or --family none"):
        design_prior(ShardDataset(tmp_path / "toy"))
    c = design_prior(ShardDataset(tmp_path / "toy"), family="none", patch_size=2).config
    assert c.family == "" and c.text_tokens == 3  # no family: the data's longest text


def test_a_bucket_that_is_not_whole_patches_is_trained_on_its_top_left_whole_patches_and_the_block_says_so(tmp_path):
    qwen = design_prior(family_data(tmp_path / "qwen", "qwen-image", [(166, 166)], samples=1))  # 1328 x 1328 px
    assert (qwen.config.patch_size, qwen.config.window, qwen.config.latent_size) == (8, 20, (160, 160))
    cropped = "166 x 166 cells trained on their top-left 160 x 160 (1,956 cells, 7.1%, left out): the sampler pads"
    assert f"  cropped     {cropped}" in qwen.describe()
    flux = design_prior(family_data(tmp_path / "flux", "flux", [(16, 24), (20, 12)]))
    assert flux.config.window == 3 and flux.config.latent_size == (16, 24)  # 20 x 12 is read as 16 x 8
    assert "20 x 12 cells trained on their top-left 16 x 8 (112 cells, 46.7%, left out)" in flux.describe()
    assert "16 x 24 cells trained" not in flux.describe()  # whole patches: read as they are
    whole = design_prior(family_data(tmp_path / "whole", "flux", [(16, 24)]))
    assert whole.cropped == "" and "cropped" not in whole.describe()


def test_a_bucket_less_than_one_patch_on_a_side_is_refused(tmp_path):
    data = family_data(tmp_path, "flux", [(16, 24), (4, 16)])
    with pytest.raises(DatasetError, match=r"holds noise \[16, 4, 16\], less than one 8 x 8-cell patch on a side"):
        design_prior(data)
    assert design_prior(data, patch_size=4).config.window == 6


def test_a_token_of_too_many_values_is_refused(tmp_path):
    data = family_data(tmp_path, "hunyuan-image-2.1", [(32, 32)])
    with pytest.raises(
        DatasetError,
        match=rf"32 x 32-cell patch of 64-channel noise is 65,536 values per token, more than {TOKEN_VALUES_MAX:,}.*\(e\.g\. 8",
    ):
        design_prior(data, patch_size=32)


def test_settings_that_cannot_train_on_the_data_are_refused(tmp_path):
    data = family_data(tmp_path, "flux", [(16, 32)], tokens=(7,), slots=8)
    with pytest.raises(DatasetError, match="--text-tokens 5 is fewer than the data's longest text"):
        design_prior(data, text_tokens=5)
    with pytest.raises(DatasetError, match="a window of 2 patches a side does not hold the bucket 16 x 32"):
        design_prior(data, window=2)
    with pytest.raises(DatasetError, match="positions '3d' make a video prior"):
        design_prior(data, positions="3d")
    with pytest.raises(NoiseARConfigError, match="2-D positions need d_model divisible by 4"):
        design_prior(data, d_model=30)
    video = family_data(tmp_path / "video", "wan", [(3, 8, 8)])
    with pytest.raises(DatasetError, match="holds videos .* an image prior"):
        design_prior(video, positions="2d")
    two = design_prior(video, patch_frames=2)  # frames too: the first whole patch frames, as the sampler pads them
    assert (two.config.latent_frames, two.config.window_frames) == (2, 1)
    assert "3 x 8 x 8 cells trained on their top-left 2 x 8 x 8" in two.describe()
