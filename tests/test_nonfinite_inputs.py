"""Non-finite or absurd inputs are errors that name the input, in the library and in the nodes; never NaN noise."""

from __future__ import annotations

import fake_comfy
import pytest
import torch
from builders import TINY, model_from_state, random_eps, random_model, random_state_dict, random_text

from nodes.definitions import GoldenNoiseNode, NoiseARBlendNode, NoiseARNoiseNode
from nodes.prior import NoiseARPrior
from nodes.widgets import SIZE_MODES, NoiseARNodeError
from noisear import NoiseARInputError
from noisear.mixing import NoiseMixingError, blend

BAD_NUMBERS = [float("nan"), float("inf"), float("-inf"), "0.5", None, True]


@pytest.fixture(scope="module")
def model():
    return random_model(TINY)


def with_value(tensor: torch.Tensor, value: float) -> torch.Tensor:
    tensor = tensor.clone()
    tensor.view(-1)[3] = value
    return tensor


# The library ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["sample", "sample_naive"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_text_is_refused(model, sampler, bad):
    with pytest.raises(NoiseARInputError, match=r"the text embedding holds NaN or infinite values .* encode the prompt"):
        getattr(model, sampler)(with_value(random_text(TINY), bad), random_eps(TINY))


@pytest.mark.parametrize("sampler", ["sample", "sample_naive"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_eps_is_refused(model, sampler, bad):
    with pytest.raises(NoiseARInputError, match=r"eps must be finite standard-normal draws"):
        getattr(model, sampler)(random_text(TINY), with_value(random_eps(TINY), bad))


@pytest.mark.parametrize("temperature", [*BAD_NUMBERS, -0.1, 10.5, 1e30, torch.tensor(0.5)], ids=lambda value: repr(value)[:20])
def test_temperature_must_be_a_number_in_range(model, temperature):
    with pytest.raises(NoiseARInputError, match=r"temperature must be a number from 0 to 10 \(0\.5 as published\), got"):
        model.sample(random_text(TINY), random_eps(TINY), temperature=temperature)


def test_a_mask_leaving_an_item_without_tokens_is_refused(model):
    mask = torch.ones(2, 77, dtype=torch.bool)
    mask[1] = False
    with pytest.raises(NoiseARInputError, match=r"text_mask leaves an item without any token"):
        model.sample(random_text(TINY, 2), random_eps(TINY, 2), text_mask=mask)


def test_finite_text_that_overflows_the_prior_is_an_error_not_nan_noise(model):
    with pytest.raises(NoiseARInputError, match=r"the prior produced NaN or infinite noise from these inputs"):
        model.sample(random_text(TINY) * 1e30, random_eps(TINY))


def test_valid_extremes_still_sample(model):
    for temperature in (0, 0.0, 10):
        assert torch.isfinite(model.sample(random_text(TINY), random_eps(TINY), temperature=temperature)).all()


@pytest.mark.parametrize("strength", BAD_NUMBERS + [-0.5, 1.5], ids=repr)
def test_blend_strength_must_be_a_number_in_0_1(strength):
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(NoiseMixingError, match=r"strength must be a number in \[0, 1\]"):
        blend(x, x, strength)


@pytest.mark.parametrize("which", ["NoiseAR", "Gaussian"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_blend_refuses_non_finite_inputs_and_names_which(which, bad):
    good, damaged = torch.randn(1, 3, 4, 4), with_value(torch.randn(1, 3, 4, 4), bad)
    inputs = (damaged, good) if which == "NoiseAR" else (good, damaged)
    with pytest.raises(NoiseMixingError, match=rf"the {which} noise holds NaN or infinite values"):
        blend(*inputs, 0.5, "slerp")


def test_blend_overflow_is_an_error():
    huge = torch.full((1, 3, 4, 4), 3e38)
    with pytest.raises(NoiseMixingError, match=r"blending gave NaN or infinite values"):
        blend(huge, huge, 0.5, "variance-preserving")


# The nodes (ComfyUI's min/max check lets NaN through in API workflows) -------------------------------------


@pytest.fixture
def host_fakes(monkeypatch, tmp_path):
    return fake_comfy.install(monkeypatch, tmp_path)


def prior() -> NoiseARPrior:
    return NoiseARPrior(model_from_state(TINY, random_state_dict(TINY)), "tiny", "cpu", "fp32")


def cond(value: float | None = None) -> list:
    text = random_text(TINY)
    return [[text if value is None else with_value(text, value), {}]]


@pytest.mark.parametrize("temperature", BAD_NUMBERS + [2.5, -1.0], ids=repr)
def test_noise_node_checks_its_temperature(host_fakes, temperature):
    with pytest.raises(
        NoiseARNodeError,
        match=r"NoiseAR Noise: temperature must be a number from 0 to 2, got "
        r".*set a number in the widget",
    ):
        NoiseARNoiseNode().make(prior(), cond(), 0, temperature, SIZE_MODES[0])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_noise_node_refuses_non_finite_conditioning(host_fakes, bad):
    with pytest.raises(NoiseARNodeError, match=r"the positive conditioning holds NaN or infinite values"):
        NoiseARNoiseNode().make(prior(), cond(bad), 0, 0.5, SIZE_MODES[0])


@pytest.mark.parametrize("strength", BAD_NUMBERS + [1.01], ids=repr)
def test_blend_node_checks_its_strength(host_fakes, strength):
    noise = NoiseARNoiseNode().make(prior(), cond(), 0, 0.5, SIZE_MODES[0])[0]
    with pytest.raises(NoiseARNodeError, match=r"NoiseAR Blend: strength must be a number from 0 to 1"):
        NoiseARBlendNode().make(noise, noise, strength, "linear", False)


@pytest.mark.parametrize("cfgs", [(float("nan"), 1.0), (5.5, float("inf")), (5.5, -1.0)], ids=repr)
def test_golden_node_checks_its_guidance(host_fakes, cfgs):
    with pytest.raises(
        NoiseARNodeError,
        match=r"NoiseAR Golden Noise: cfg_(denoise|invert) must be a number from 0 "
        r"to 100",
    ):
        GoldenNoiseNode().make(object(), [], [], 0, "normal", 3, *cfgs)


def test_a_valid_node_chain_gives_finite_noise(host_fakes):
    latent = {"samples": torch.zeros(1, 3, 6, 6)}
    noise = NoiseARNoiseNode().make(prior(), cond(), 0, 0.5, SIZE_MODES[0])[0]
    assert torch.isfinite(noise.generate_noise(latent)).all()
