"""NoiseAR KSampler (Advanced) without ComfyUI: what the nodes hand to ComfyUI's sampling function.

fake_comfy's comfy.sample.sample records its arguments and returns noise + latent_image; the real
sampler's agreement with SamplerCustomAdvanced / KSamplerAdvanced is checked in tests/host.
"""

from __future__ import annotations

import fake_comfy
import pytest
import torch
from test_nodes import SMALL, conditioning, empty_latent, load, recording_prior, small_ckpt  # noqa: F401 (fixture)

from nodes.definitions import NoiseARKSamplerAdvancedNode, NoiseARKSamplerNode, NoiseARNoiseNode
from nodes.widgets import SIZE_MODES, NoiseARNodeError

SEED = 11
# ComfyUI v0.3.64 nodes.py: KSampler's and KSamplerAdvanced's inputs in order, with their defaults.
KSAMPLER = [
    ("model", None),
    ("seed", 0),
    ("steps", 20),
    ("cfg", 8.0),
    ("sampler_name", None),
    ("scheduler", None),
    ("positive", None),
    ("negative", None),
    ("latent_image", None),
    ("denoise", 1.0),
]
KSAMPLER_ADVANCED = [
    ("model", None),
    ("add_noise", None),
    ("noise_seed", 0),
    ("steps", 20),
    ("cfg", 8.0),
    ("sampler_name", None),
    ("scheduler", None),
    ("positive", None),
    ("negative", None),
    ("latent_image", None),
    ("start_at_step", 0),
    ("end_at_step", 10000),
    ("return_with_leftover_noise", None),
]
PRIOR_INPUTS = ["noisear_model", "temperature", "size_mode"]


@pytest.fixture(autouse=True)
def host_fakes(monkeypatch, tmp_path):
    return fake_comfy.install(monkeypatch, tmp_path)


def ksampler(prior, latent, *, cond=None, prior_text=None, denoise=1.0, sampler="euler_ancestral"):
    cond = cond if cond is not None else conditioning(width=prior.config.text_dim)
    return NoiseARKSamplerNode().sample(
        fake_comfy.Model(),
        SEED,
        4,
        5.5,
        sampler,
        "karras",
        cond,
        conditioning(seed=6),
        latent,
        denoise,
        prior,
        0.5,
        SIZE_MODES[0],
        prior_text,
    )[0]


def advanced(prior, latent, *, add_noise="enable", start=0, end=3, leftover="enable"):
    return NoiseARKSamplerAdvancedNode().sample(
        fake_comfy.Model(),
        add_noise,
        SEED,
        4,
        5.5,
        "euler",
        "normal",
        conditioning(width=prior.config.text_dim),
        conditioning(seed=6),
        latent,
        start,
        end,
        leftover,
        prior,
        0.5,
        SIZE_MODES[0],
    )[0]


def test_inputs_are_ksamplers_in_its_order_with_its_defaults_then_the_priors():
    for node, reference in ((NoiseARKSamplerNode, KSAMPLER), (NoiseARKSamplerAdvancedNode, KSAMPLER_ADVANCED)):
        inputs = node.INPUT_TYPES()
        assert list(inputs["required"]) == [name for name, _ in reference] + PRIOR_INPUTS
        assert list(inputs["optional"]) == ["prior_text"] and inputs["optional"]["prior_text"][0] == "CONDITIONING"
        for name, default in reference:
            if default is not None:
                assert inputs["required"][name][1]["default"] == default, name
        seed = inputs["required"][reference[1 if node is NoiseARKSamplerNode else 2][0]][1]
        assert seed["control_after_generate"] and seed["max"] == 0xFFFFFFFFFFFFFFFF
        assert inputs["required"]["sampler_name"][0] == ["euler", "euler_ancestral", "dpmpp_2m"]
        assert inputs["required"]["scheduler"][0] == ["simple", "normal", "karras"]
        assert inputs["required"]["size_mode"] == NoiseARNoiseNode.INPUT_TYPES()["required"]["size_mode"]


@pytest.mark.usefixtures("small_ckpt")
def test_ksampler_samples_with_noisear_noises_draw_for_the_seed_and_batch_index(host_fakes):
    prior, cond = load(), conditioning()
    latent = empty_latent(batch=2, batch_index=[3, 5])
    out = ksampler(prior, latent, cond=cond)
    call = host_fakes.sample_calls[-1]
    expected = NoiseARNoiseNode().make(prior, cond, SEED, 0.5, SIZE_MODES[0])[0].generate_noise(latent)
    assert torch.equal(call["noise"], expected)
    assert not torch.equal(expected, fake_comfy.prepare_noise(latent["samples"], SEED, [3, 5]))  # not plain noise
    assert (call["seed"], call["steps"], call["cfg"], call["sampler_name"], call["scheduler"]) == (
        SEED,
        4,
        5.5,
        "euler_ancestral",
        "karras",
    )
    assert call["positive"] is cond and call["denoise"] == 1.0 and call["disable_noise"] is False
    assert call["noise_mask"] is None and call["callback"] is not None
    assert out["batch_index"] == [3, 5] and torch.equal(out["samples"], expected + latent["samples"])


def test_progress_shows_the_draw_then_the_sampling_steps(host_fakes):
    ksampler(recording_prior(SMALL), empty_latent(batch=2))
    draw, steps = host_fakes.progress_bars[-2:]
    assert draw.total == 2 * SMALL.num_patches and draw.updates[-1] == draw.total
    assert steps.total == 4  # latent_preview.prepare_callback(model, steps), as KSampler makes it


def test_prior_text_feeds_the_prior_and_positive_the_sampler(host_fakes):
    prior = recording_prior(SMALL)
    positive, prior_text = conditioning(seed=1), conditioning(seed=2)
    ksampler(prior, empty_latent(), cond=positive, prior_text=prior_text)
    assert torch.equal(prior.model.calls[0]["text"], prior_text[0][0])
    assert host_fakes.sample_calls[-1]["positive"] is positive


def test_an_empty_latent_gets_the_models_channels_before_the_draw(host_fakes):
    prior = recording_prior(SMALL)
    out = ksampler(prior, empty_latent(channels=16))  # EmptySD3LatentImage into a 4-channel model
    assert prior.model.calls[0]["eps"].shape == (1, 4, 8, 8) and out["samples"].shape == (1, 4, 8, 8)


@pytest.mark.parametrize("denoise", [0.5, 0.9999, float("nan")])
def test_denoise_below_one_is_refused_before_anything_is_drawn(denoise, host_fakes):
    prior = recording_prior(SMALL)
    with pytest.raises(NoiseARNodeError, match="denoise 1.0.*use ComfyUI's KSampler"):
        ksampler(prior, empty_latent(), denoise=denoise)
    assert prior.model.calls == [] and host_fakes.sample_calls == []


@pytest.mark.usefixtures("small_ckpt")
def test_advanced_add_noise_enable_is_the_ksamplers_noise_with_the_step_range(host_fakes):
    prior, latent = load(), empty_latent(batch=2)
    advanced(prior, latent, end=3, leftover="enable")
    call = host_fakes.sample_calls[-1]
    ksampler(prior, latent)
    assert torch.equal(call["noise"], host_fakes.sample_calls[-1]["noise"])
    assert (call["start_step"], call["last_step"], call["force_full_denoise"]) == (0, 3, False)
    advanced(prior, latent, leftover="disable")
    assert host_fakes.sample_calls[-1]["force_full_denoise"] is True


def test_advanced_add_noise_disable_adds_no_noise_and_leaves_the_prior_alone(host_fakes):
    prior, latent = recording_prior(SMALL), empty_latent()
    latent["samples"] = torch.randn(1, 4, 8, 8)  # a base stage's latent with leftover noise
    out = advanced(prior, latent, add_noise="disable", start=3, end=10000, leftover="disable")
    call = host_fakes.sample_calls[-1]
    assert prior.model.calls == [] and torch.equal(call["noise"], torch.zeros(1, 4, 8, 8))
    assert call["disable_noise"] is True and call["seed"] == SEED and call["start_step"] == 3
    assert torch.equal(out["samples"], latent["samples"])


def test_advanced_refuses_noisear_noise_part_way_down_the_schedule(host_fakes):
    prior = recording_prior(SMALL)
    with pytest.raises(NoiseARNodeError, match="start_at_step 0.*add_noise to disable"):
        advanced(prior, empty_latent(), start=2)
    assert prior.model.calls == [] and host_fakes.sample_calls == []


def test_inpainting_latents_are_refused_with_noise_and_passed_through_without(host_fakes):
    prior, masked = recording_prior(SMALL), empty_latent(noise_mask=torch.ones(1, 8, 8))
    with pytest.raises(NoiseARNodeError, match="noise_mask.*KSampler for inpainting"):
        ksampler(prior, masked)
    advanced(prior, masked, add_noise="disable")
    assert prior.model.calls == [] and host_fakes.sample_calls[-1]["noise_mask"] is masked["noise_mask"]
