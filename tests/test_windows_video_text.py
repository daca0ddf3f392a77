"""2-D and video priors with bounded decoding windows, padding-free text, and the cost bound of a draw.

Windowed decoding is checked against a plain reference written here from the rule itself (per axis, the
window of ``window`` patches ending at the patch, clamped at 0; the network's teacher forcing on that
window's earlier patches), independent of DecodingPlan, in fp64.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
import torch

from noisear import NoiseAR, NoiseARConfig, NoiseARInputError
from noisear import cost as cost_module
from noisear import model as model_module
from noisear.config import LIMITS, NoiseARConfigError
from noisear.patches import patchify, unpatchify

IMAGE = NoiseARConfig(
    patch_size=2, channels=3, latent_height=6, latent_width=6, d_model=16, d_ff=24, n_layers=2, n_heads=2,
    text_dim=12, positions="2d", window=3,
)  # fmt: skip
VIDEO = NoiseARConfig(
    patch_size=2, channels=2, latent_height=4, latent_width=4, d_model=24, d_ff=32, n_layers=2, n_heads=2,
    text_dim=12, positions="3d", latent_frames=2, window=2, window_frames=2,
)  # fmt: skip


def random_prior(config: NoiseARConfig, seed: int = 0, dtype: torch.dtype = torch.float64) -> NoiseAR:
    """Every parameter N(0, 0.3^2), so means and variances vary from patch to patch."""
    torch.manual_seed(seed)
    model = NoiseAR(config).to(dtype)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    return model.train(False)


def text(config: NoiseARConfig, tokens: int = 5, batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, tokens, config.text_dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def eps(shape: tuple[int, ...], seed: int = 2) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@torch.no_grad()
def plain_window_sample(model: NoiseAR, text: torch.Tensor, eps: torch.Tensor, temperature: float) -> torch.Tensor:
    """The windowed rule, plainly: eps of whole patches; patch by patch in raster order, the window per axis is
    the ``w`` patches ending at it (fewer when the grid is smaller; clamped at 0), and the patch is drawn from the
    network's prediction after that window's earlier patches, at the window's own positions."""
    c = model.config
    tokens = patchify(eps, c.patch_size, c.patch_frames)
    grid = [n // p for n, p in zip(eps.shape[2:], c.patch)]
    limits = [c.window_frames, c.window, c.window] if c.video else [c.window, c.window]
    window = [min(g, w) for g, w in zip(grid, limits)]
    coords = list(itertools.product(*(range(g) for g in grid)))
    out = torch.zeros_like(tokens)
    for index, coord in enumerate(coords):
        origin = [max(0, x - w + 1) for x, w in zip(coord, window)]
        members = [tuple(o + x for o, x in zip(origin, local)) for local in itertools.product(*(range(w) for w in window))]
        prefix = [out[:, coords.index(m)] for m in members[: members.index(coord)]]
        prefix = torch.stack(prefix, dim=1) if prefix else tokens[:, :0]
        mu, logvar = model(text, prefix, None, tuple(window))
        std = torch.exp(0.5 * logvar[:, -1].clamp(model_module.LOGVAR_MIN, model_module.LOGVAR_MAX))
        out[:, index] = mu[:, -1] + temperature * std * tokens[:, index]
    return unpatchify(out, c.patch, tuple(eps.shape[2:]))


# Windows: cached decoding is the plain rule ---------------------------------------------------------------


@pytest.mark.parametrize("size", [(6, 6), (10, 8), (4, 12), (2, 2)], ids=["one-window", "sliding", "wide", "one-patch"])
def test_image_windows_follow_the_plain_rule(size):
    model = random_prior(IMAGE)
    draws, words = eps((1, 3, *size)), text(IMAGE)
    expected = plain_window_sample(model, words, draws, 0.7)
    assert torch.allclose(model.sample(words, draws, temperature=0.7), expected.float(), atol=1e-6)
    assert torch.allclose(model.sample_naive(words, draws, temperature=0.7), expected.float(), atol=1e-6)


@pytest.mark.parametrize("size", [(2, 4, 4), (5, 4, 4), (3, 6, 8), (1, 2, 2)], ids=["native", "frames", "all-axes", "one"])
def test_video_windows_follow_the_plain_rule(size):
    model = random_prior(VIDEO)
    draws, words = eps((1, 2, *size)), text(VIDEO)
    expected = plain_window_sample(model, words, draws, 1.0)
    assert torch.allclose(model.sample(words, draws, temperature=1.0), expected.float(), atol=1e-6)


def test_a_grid_within_the_window_is_one_sequence_and_larger_grids_slide():
    assert IMAGE.plan(6, 6).describe() == "2-D prior" and VIDEO.plan(2, 4, 4).describe() == "video prior"
    assert IMAGE.plan(10, 8).describe() == "sliding window over 5 x 4 patches"
    assert VIDEO.plan(5, 4, 4).describe() == "sliding window over 5 x 2 x 2 patches"
    unbounded = replace(IMAGE, window=0)
    assert unbounded.plan(40, 40).window == (20, 20)


def test_a_video_shares_one_decoder_per_frame_when_its_frame_fits_the_window():
    plan = VIDEO.plan(5, 4, 4)  # 5 frames of 2 x 2 patches, window 2 frames
    fresh = [step.origin for step in plan.schedule() if step.new.start == 0]
    assert fresh == [(0, 0, 0), (1, 0, 0), (2, 0, 0), (3, 0, 0)]
    assert max(len(step.new) for step in plan.schedule()) <= plan.window_length


# Video latents -------------------------------------------------------------------------------------------


def test_video_noise_is_deterministic_and_an_item_alone_equals_it_in_a_batch():
    model = random_prior(VIDEO, dtype=torch.float32)
    words, draws = text(VIDEO).float(), eps((3, 2, 5, 6, 4)).float()
    batch = model.sample(words, draws)
    assert batch.shape == draws.shape and torch.isfinite(batch).all()
    assert torch.equal(batch, model.sample(words, draws))
    for item in range(3):  # another batch size may round differently (BLAS blocking), hence 1e-5
        torch.testing.assert_close(model.sample(words, draws[item : item + 1]), batch[item : item + 1], atol=1e-5, rtol=1e-5)


def test_an_image_prior_refuses_a_video_latent_and_a_video_prior_an_image_latent():
    image, video = random_prior(IMAGE), random_prior(VIDEO)
    with pytest.raises(NoiseARInputError, match=r"video latent of 4 frames; this own prior is an image prior"):
        image.sample(text(IMAGE), eps((1, 3, 4, 6, 6)))
    with pytest.raises(NoiseARInputError, match=r"an image latent; this own prior is a video prior"):
        video.sample(text(VIDEO), eps((1, 2, 4, 4)))


def test_an_image_prior_draws_a_one_frame_latent_as_the_image_with_its_time_axis():
    """Qwen-Image (and a one-frame Wan image) keep a singleton time axis in their latents."""
    model, words, draws = random_prior(IMAGE), text(IMAGE), eps((2, 3, 6, 8))
    assert torch.equal(model.sample(words, draws[:, :, None]), model.sample(words, draws)[:, :, None])


def test_an_image_prior_scores_a_one_frame_latent_as_the_image():
    """What an image prior samples at [B, C, 1, H, W] it also scores; two frames stay refused."""
    model, words, noise = random_prior(IMAGE), text(IMAGE), eps((2, 3, 6, 6))
    assert torch.equal(model.log_prob(words, noise[:, :, None]), model.log_prob(words, noise))
    with pytest.raises(NoiseARInputError, match=r"noise has shape \[2, 3, 2, 6, 6\]; this prior scores \[batch, 3, H, W\]"):
        model.log_prob(words, torch.stack([noise, noise], dim=2))


def test_a_video_prior_scores_a_video_within_its_window():
    model = random_prior(VIDEO)
    noise = eps((2, 2, 2, 4, 4))
    assert model.log_prob(text(VIDEO), noise).shape == (2,)
    with pytest.raises(NoiseARInputError, match="at most 2 patches per side, 2 patch frames"):
        model.log_prob(text(VIDEO), eps((1, 2, 3, 4, 4)))


# Text: padding never enters ----------------------------------------------------------------------------


def padded(words: torch.Tensor, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``words`` [1, T, D] followed by garbage rows up to ``length``, and the mask that marks the real ones."""
    garbage = 100 * torch.randn(1, length - words.shape[1], words.shape[2], generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(1, length, dtype=torch.bool)
    mask[:, : words.shape[1]] = True
    return torch.cat([words, garbage.to(words)], dim=1), mask


@pytest.mark.parametrize("config", [IMAGE, VIDEO], ids=["image", "video"])
def test_the_same_prompt_padded_to_two_lengths_gives_the_same_noise_and_likelihood(config):
    model = random_prior(config, dtype=torch.float32)
    words = text(config).float()
    size = (1, config.channels, *config.latent_size)
    draws, noise = eps(size).float(), eps(size, seed=5).float()
    short, short_mask = padded(words, 9, seed=3)
    long, long_mask = padded(words, 40, seed=4)
    expected = model.sample(words, draws)
    assert torch.equal(model.sample(short, draws, text_mask=short_mask), expected)
    assert torch.equal(model.sample(long, draws, text_mask=long_mask), expected)
    likelihood = model.log_prob(words, noise)
    assert torch.equal(model.log_prob(short, noise, short_mask), likelihood)
    assert torch.equal(model.log_prob(long, noise, long_mask), likelihood)


def test_a_batch_of_prompts_of_different_lengths_scores_each_as_alone():
    model = random_prior(IMAGE, dtype=torch.float32)
    a, b = text(IMAGE, tokens=3, seed=1).float(), text(IMAGE, tokens=7, seed=2).float()
    batch_text, mask = torch.zeros(2, 7, IMAGE.text_dim), torch.zeros(2, 7, dtype=torch.bool)
    batch_text[0, :3], batch_text[1], mask[0, :3], mask[1] = a[0], b[0], True, True
    noise = eps((2, 3, 6, 6)).float()
    alone = torch.cat([model.log_prob(a, noise[:1]), model.log_prob(b, noise[1:])])
    assert torch.allclose(model.log_prob(batch_text, noise, mask), alone, rtol=1e-6)


def test_text_beyond_the_priors_limit_and_text_without_tokens_are_refused():
    model = random_prior(replace(IMAGE, text_tokens=4))
    words, mask = padded(text(IMAGE, tokens=4), 8, seed=3)
    assert model.sample(words, eps((1, 3, 6, 6)), text_mask=mask).shape == (1, 3, 6, 6)  # 4 real tokens: fine
    with pytest.raises(
        NoiseARInputError, match="the text has 5 tokens .padding excluded.; this own prior reads at most 4: shorten the prompt"
    ):
        model.sample(text(IMAGE, tokens=5), eps((1, 3, 6, 6)))
    with pytest.raises(NoiseARInputError, match="the text has no tokens"):
        model.sample(text(IMAGE, tokens=0), eps((1, 3, 6, 6)))


def test_texts_for_more_items_than_the_latent_has_are_refused_saying_what_to_give():
    model = random_prior(IMAGE)
    with pytest.raises(
        NoiseARInputError, match=r"text batch 3 does not match noise batch 1; give one text \(batch 1\) for every item$"
    ):
        model.sample(text(IMAGE, batch=3), eps((1, 3, 6, 6)))
    with pytest.raises(NoiseARInputError, match=r"batch 2; give one text \(batch 1\) for every item or one per item \(batch 2\)"):
        model.sample(text(IMAGE, batch=3), eps((2, 3, 6, 6)))


# The cost of a draw ---------------------------------------------------------------------------------------


def per_patch_flops(config: NoiseARConfig, side: int) -> float:
    estimate = cost_module.estimate(config, (side, side), text_tokens=5)
    return estimate.flops / estimate.patches


def test_a_windowed_draw_costs_the_same_per_patch_at_every_size_and_an_unbounded_one_grows():
    windowed, unbounded = replace(IMAGE, window=4), replace(IMAGE, window=0)
    small, large = per_patch_flops(windowed, 128), per_patch_flops(windowed, 256)  # 64 x 64 and 128 x 128 patches
    assert large < 1.1 * small
    assert per_patch_flops(unbounded, 128) > 5 * per_patch_flops(unbounded, 32)


def test_the_estimate_follows_the_schedule_the_sampler_runs(monkeypatch):
    fed = []
    original = model_module._CachedDecoder.step
    monkeypatch.setattr(model_module._CachedDecoder, "step", lambda self, x: fed.append(x.shape[1]) or original(self, x))
    model = random_prior(IMAGE)
    model.sample(text(IMAGE), eps((1, 3, 10, 8)))
    estimate = model.draw_cost((10, 8), text_tokens=5)
    assert estimate.steps == len(fed) == estimate.patches == 20


def test_a_draw_over_the_bound_is_refused_with_its_estimate_before_the_latent_is_touched(monkeypatch):
    monkeypatch.setattr(model_module, "pad_eps", lambda *args: pytest.fail("the latent was padded"))
    monkeypatch.setattr(cost_module, "LIMITS", replace(LIMITS, draw_seconds=1e-9))
    with pytest.raises(NoiseARInputError, match=r"too large: 16 patches in 16 decoder steps.*estimated .* s per item"):
        random_prior(IMAGE).sample(text(IMAGE), torch.zeros(1, 3, 8, 8, dtype=torch.float64))


def test_a_grid_beyond_the_patch_bound_is_refused_without_being_simulated():
    huge = replace(IMAGE, patch_size=1, latent_height=1, latent_width=1)
    estimate = cost_module.estimate(huge, (16384, 16384), text_tokens=5)
    assert estimate.patches == 16384**2 and math.isinf(estimate.flops)
    assert "too large" in cost_module.problem(estimate, "cuda")


# Families ----------------------------------------------------------------------------------------------


def test_a_prior_must_fit_the_family_it_names():
    flux = NoiseARConfig(
        patch_size=8, channels=16, latent_height=64, latent_width=64, d_model=64, d_ff=64, text_dim=4096,
        positions="2d", family="flux",
    )  # fmt: skip
    assert flux.title == "own Flux.1 dev / schnell" and flux.family_key == "flux"
    with pytest.raises(NoiseARConfigError, match="16-channel latents, but channels is 4"):
        replace(flux, channels=4)
    with pytest.raises(NoiseARConfigError, match="makes images; a video prior"):
        replace(flux, positions="3d")
    with pytest.raises(NoiseARConfigError, match="family must be one of"):
        replace(flux, family="flux2")
    assert NoiseARConfig().family_key == "sdxl" and NoiseARConfig(text_dim=1024).family_key == "hunyuan-dit"


# Hostile sizes: the estimate itself ---------------------------------------------------------------------


def test_the_schedule_of_a_very_wide_sliding_window_is_linear_in_its_patches():
    """A grid 4 patches tall and 20,000 wide keeps thousands of decoders' origins in one row; each
    step must not scan them all (that made the estimate of a legal wide draw take minutes before any draw)."""
    import signal

    def hang(*_):
        raise TimeoutError("DecodingPlan.schedule took over 30 s for 40,000 patches")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(30)
    try:
        steps = list(replace(IMAGE, window=2).plan(8, 2 * 20_000).schedule())
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert len(steps) == 80_000 and sum(len(step.dropped) for step in steps) == 2 * 19_999  # rows 2 and 3 start anew


def test_a_small_priors_draw_of_many_patches_is_estimated_with_its_per_step_overhead():
    """A tiny prior's step is nearly all fixed overhead (about 1 ms on a CPU): weights and FLOPs alone made
    2^20 patches about 5 s, so a draw of over half an hour passed the bound."""
    tiny = replace(IMAGE, patch_size=1, latent_height=1, latent_width=1, d_model=8, d_ff=8)
    estimate = cost_module.estimate(tiny, (256, 256), text_tokens=5)
    assert estimate.seconds("cpu") >= 256 * 256 * 3e-4
