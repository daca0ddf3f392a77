"""Every latent size: sliding-window decoding of 1-D position tables, 2-D priors on any grid, padding.

The sliding window is checked against tests/reference_noisear.py's plain version (each window's
whole prefix recomputed with the independent network), in fp64 on small configs.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import reference_noisear as reference
import torch
from builders import TINY, model_from_state, random_model, random_state_dict, random_text

from noisear import NoiseAR, NoiseARConfig, NoiseARInputError
from noisear import model as model_module
from noisear.patches import decoding_plan, pad_eps

# 2x2 window of 2x2 patches; the same at 2 layers, 2 heads, a 2x3 window and 12-d text through dim_adapter
WINDOW_2X2 = NoiseARConfig(patch_size=2, channels=3, latent_height=4, latent_width=4, d_model=16, d_ff=24, text_dim=16)
DEEP_2X3 = NoiseARConfig(
    patch_size=2, channels=4, latent_height=4, latent_width=6, d_model=24, d_ff=32, n_layers=2, n_heads=2, text_dim=12
)
CONFIGS = {"window-2x2": WINDOW_2X2, "tiny-3x3": TINY, "deep-2x3": DEEP_2X3}
SIZES = {  # latent (height, width) in cells, for patches of 2
    "wider-and-taller": (10, 8),
    "taller": (8, 6),
    "non-multiples": (9, 7),
    "shorter-than-native": (2, 10),
    "narrower-than-native": (10, 2),
    "one-cell": (1, 1),
    "one-row": (1, 9),
}
TWO_D = NoiseARConfig(patch_size=2, channels=3, latent_height=4, latent_width=4, d_model=16, d_ff=24, text_dim=16, positions="2d")


def two_d_model(seed: int = 0) -> NoiseAR:
    """A TWO_D prior with the builders' random weights (its table twin's, minus the table)."""
    state = random_state_dict(replace(TWO_D, positions="table"), seed)
    del state["pos_encoding"]
    model = NoiseAR(TWO_D)
    model.load_state_dict(state, strict=True)
    return model.eval()


def draws(batch: int, channels: int, height: int, width: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(seed))


# Against the independent reference -------------------------------------------------------------------


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_sliding_window_matches_the_plain_reference(name, size):
    """fp64: ours (cached and naive) == the reference run on our padded eps, cropped to the latent."""
    config = CONFIGS[name]
    state = {key: value.double() for key, value in random_state_dict(config, seed=3).items()}
    model = model_from_state(config, state)
    text, eps = random_text(config, 2, tokens=5).double(), draws(2, config.channels, *SIZES[size]).double()
    padded = pad_eps(eps, config.plan(*eps.shape[2:]))
    expected = reference.sample_windows(state, text, padded, config.grid_height, config.grid_width, 0.7, config.n_heads)[
        :, :, : eps.shape[2], : eps.shape[3]
    ].float()
    cached = model.sample(text, eps, temperature=0.7)
    assert cached.shape == eps.shape and cached.dtype == torch.float32
    torch.testing.assert_close(cached, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.sample_naive(text, eps, temperature=0.7), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", ["wider-and-taller", "non-multiples", "narrower-than-native"])
def test_cached_equals_naive_in_float32_with_a_text_mask(size):
    """fp32, as users run it: the cached sampler agrees with its naive form at every size."""
    model, text = random_model(TINY, seed=4), random_text(TINY, 3, tokens=6)
    eps = draws(3, 3, *SIZES[size])
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2, [True] + [False] * 5])
    cached = model.sample(text, eps, temperature=0.9, text_mask=mask)
    torch.testing.assert_close(cached, model.sample_naive(text, eps, temperature=0.9, text_mask=mask), atol=1e-5, rtol=0)


# Properties users rely on ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_top_left_native_window_is_the_native_sample_of_the_cropped_eps(name):
    config = CONFIGS[name]
    model, text = random_model(config, seed=5), random_text(config, 2, tokens=5)
    height, width = config.latent_height, config.latent_width
    eps = draws(2, config.channels, height + 5, width + 3)
    noise = model.sample(text, eps)
    assert torch.equal(noise[:, :, :height, :width], model.sample(text, eps[:, :, :height, :width]))


def test_top_left_native_window_at_the_published_size(published):
    """1216x832 px -> latent 104 x 152 cells: a 4 x 5 grid of patches, the last row partly cropped."""
    text = random_text(published.config)
    eps = draws(1, 4, 104, 152)
    noise = published.model.sample(text, eps)
    assert noise.shape == (1, 4, 104, 152) and torch.isfinite(noise).all()
    native = published.model.sample(text, pad_eps(eps, published.model.config.plan(104, 152))[:, :, :128, :128])
    assert torch.equal(noise[:, :, :104, :128], native[:, :, :104])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_shorter_latent_is_the_top_of_a_native_sample(name):
    """Rows below a short latent are never needed: its noise is the native sample's top rows."""
    config = CONFIGS[name]
    model, text = random_model(config, seed=6), random_text(config, 1, tokens=5)
    eps = draws(1, config.channels, config.patch_size, config.latent_width)
    full = torch.cat(
        [eps, draws(1, config.channels, config.latent_height - config.patch_size, config.latent_width, seed=9)], dim=2
    )
    torch.testing.assert_close(model.sample(text, eps), model.sample(text, full)[:, :, : config.patch_size], atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", list(SIZES))
def test_every_size_gives_that_shape_deterministically_and_item_by_item(size):
    model, text = random_model(TINY, seed=7), random_text(TINY, 3, tokens=5)
    eps = draws(3, 3, *SIZES[size])
    noise = model.sample(text, eps)
    assert noise.shape == eps.shape and torch.isfinite(noise).all()
    assert torch.equal(model.sample(text, eps), noise)
    for i in range(3):  # the same draws; another batch size may round differently (BLAS blocking), hence 1e-6
        torch.testing.assert_close(model.sample(text[i : i + 1], eps[i : i + 1]), noise[i : i + 1], atol=1e-6, rtol=0)


def test_native_size_uses_one_window_and_other_sizes_cost_at_most_a_window_per_patch(monkeypatch):
    """No quadratic prefix: a step feeds at most one window's length, and in all at most one per patch."""
    fed = []
    step = model_module._CachedDecoder.step
    monkeypatch.setattr(model_module._CachedDecoder, "step", lambda self, x: fed.append(x.shape[1]) or step(self, x))
    model, text = random_model(WINDOW_2X2), random_text(WINDOW_2X2)
    model.sample(text, draws(1, 3, 4, 4))
    assert fed == [1, 1, 1, 1]
    for rows, cols in [(5, 5), (5, 12), (12, 5)]:
        fed.clear()
        plan = model.config.plan(2 * rows, 2 * cols)
        model.sample(text, draws(1, 3, 2 * rows, 2 * cols))
        assert len(fed) == plan.patches == rows * cols
        assert max(fed) <= plan.window_length and sum(fed) <= plan.window_length * plan.patches


def test_callback_counts_the_decoded_patches():
    model, text = random_model(TINY), random_text(TINY)
    seen = []
    model.sample(text, draws(1, 3, 9, 3), callback=lambda done, total: seen.append((done, total)))
    plan = model.config.plan(9, 3)  # 5 x 2 visible patches, widened to 3 columns, nothing after the last visible patch
    assert (plan.rows, plan.cols, plan.patches) == (5, 3, 14)
    assert seen == [(k, 14) for k in range(1, 15)]


# Padding ----------------------------------------------------------------------------------------------------


def test_padding_keeps_eps_and_adds_gaussian_draws_seeded_by_each_items_eps():
    plan = decoding_plan((9, 7), (4, 4), (2, 2))  # 3 x 2 patches of 4 cells
    eps = draws(3, 4, 9, 7)
    padded = pad_eps(eps, plan)
    assert padded.shape == (3, 4, 12, 8) and torch.equal(padded[:, :, :9, :7], eps)
    assert torch.equal(pad_eps(eps, plan), padded) and torch.equal(pad_eps(eps[1:2], plan), padded[1:2])
    changed = eps.clone()
    changed[0, 0, 0, 0] += 1.0
    assert not torch.equal(pad_eps(changed, plan)[0, :, 9:], padded[0, :, 9:])
    large = pad_eps(draws(1, 4, 1, 1), decoding_plan((1, 1), (64, 64), None))[0].flatten()[1:]  # 16383 padded cells
    assert abs(large.mean().item()) < 0.03 and abs(large.std().item() - 1.0) < 0.03


def test_a_non_multiple_latent_is_the_crop_of_the_sample_of_its_padded_eps():
    for model in (random_model(TINY), two_d_model()):
        text, eps = random_text(model.config), draws(1, 3, 7, 5)
        padded = pad_eps(eps, model.config.plan(7, 5))
        assert torch.equal(model.sample(text, eps), model.sample(text, padded)[:, :, :7, :5])


# 2-D priors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("height, width", [(4, 4), (6, 10), (10, 2), (5, 3), (1, 1)])
def test_two_d_priors_decode_any_grid_as_one_sequence(height, width):
    model, text = two_d_model(), random_text(TWO_D, 2)
    eps = draws(2, 3, height, width)
    plan = model.config.plan(height, width)
    assert plan.window == plan.grid and plan.describe() == "2-D prior"
    noise = model.sample(text, eps)
    assert noise.shape == eps.shape
    torch.testing.assert_close(noise, model.sample_naive(text, eps), atol=1e-5, rtol=0)


# The plan and what stays native ---------------------------------------------------------------------------


def test_plan_names_the_decoding_and_anchors_windows_as_far_up_and_left_as_possible():
    native = decoding_plan((128, 128), (32, 32), (4, 4))
    assert native.describe() == "native" and native.patches == 16 and {native.origin(k) for k in range(16)} == {(0, 0)}
    wide = decoding_plan((104, 152), (32, 32), (4, 4))  # 1216 x 832 px
    assert wide.describe() == "sliding window over 4 x 5 patches" and wide.patches == 20
    assert [wide.origin(k) for k in range(10)] == [(0, 0)] * 4 + [(0, 1)] + [(0, 0)] * 4 + [(0, 1)]
    assert wide.local(9) == 7 and wide.member((0, 1), 7) == 9
    tall = decoding_plan((192, 80), (32, 32), (4, 4))  # 640 x 1536 px: 6 x 3 patches, widened to 4 columns
    assert (tall.rows, tall.cols, tall.window[0], tall.patches) == (6, 4, 4, 23)
    assert tall.origin(4 * 5 + 2) == (2, 0) and tall.local(4 * 5 + 2) == 14
    short = decoding_plan((80, 192), (32, 32), (4, 4))  # 1536 x 640 px: a 3 x 4 window
    assert (short.window, short.origin(17)) == ((3, 4), (0, 2))


def test_log_prob_stays_on_the_native_grid_of_a_position_table():
    model, text = random_model(TINY), random_text(TINY)
    with pytest.raises(NoiseARInputError, match=r"noise has shape \[1, 3, 8, 6\].*\[batch, 3, 6, 6\]"):
        model.log_prob(text, draws(1, 3, 8, 6))
    assert model.log_prob(text, draws(1, 3, 6, 6)).shape == (1,)


def test_bf16_samples_every_size_close_to_fp32():
    """bf16 (a Loader choice on every device) runs the same plan; its noise stays near the fp32 noise."""
    model, text = random_model(TINY, seed=8), random_text(TINY, 2)
    for size in ("wider-and-taller", "non-multiples"):
        eps = draws(2, 3, *SIZES[size])
        full = model.sample(text, eps)
        half = random_model(TINY, seed=8).to(torch.bfloat16)
        low = half.sample(text, eps)
        assert low.dtype == torch.float32 and low.shape == eps.shape
        torch.testing.assert_close(low, half.sample_naive(text, eps), atol=0.02, rtol=0)
        assert 0 < (low - full).abs().max() < 0.1
