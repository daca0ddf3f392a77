"""noisear.mixing: endpoint identities, variance behaviour of each mode, slerp against a scalar reference."""

import math

import pytest
import torch

from noisear.mixing import MODES, NoiseMixingError, blend, mix_weights, renormalize_std


def pair(shape=(3, 4, 16, 16), scale=0.5):
    generator = torch.Generator().manual_seed(7)
    x = scale * torch.randn(shape, generator=generator) + 0.1  # NoiseAR-like: smaller std, some mean
    eta = torch.randn(shape, generator=generator)
    return x, eta


@pytest.mark.parametrize("mode", MODES)
def test_strength_zero_is_the_gaussian_input_bit_for_bit(mode):
    x, eta = pair()
    assert torch.equal(blend(x, eta, 0.0, mode), eta)


@pytest.mark.parametrize("mode", MODES)
def test_strength_one_is_the_noisear_input_bit_for_bit(mode):
    x, eta = pair()
    assert torch.equal(blend(x, eta, 1.0, mode), x)


def test_linear_is_the_plain_weighted_sum():
    x, eta = pair()
    torch.testing.assert_close(blend(x, eta, 0.3, "linear"), 0.3 * x + 0.7 * eta)


@pytest.mark.parametrize("strength", [0.0, 0.2, 0.5, 0.9, 1.0])
def test_variance_preserving_weights_have_unit_square_sum(strength):
    w_x, w_eta = mix_weights(strength, "variance-preserving")
    assert w_x**2 + w_eta**2 == pytest.approx(1.0, abs=1e-15)


def test_variance_preserving_keeps_unit_variance_where_linear_shrinks_it():
    generator = torch.Generator().manual_seed(0)
    x, eta = torch.randn(2, 4, 256, 256, generator=generator)  # two independent unit noises
    assert blend(x[None], eta[None], 0.5, "variance-preserving").std().item() == pytest.approx(1.0, abs=0.01)
    assert blend(x[None], eta[None], 0.5, "linear").std().item() == pytest.approx(math.sqrt(0.5), abs=0.01)


def test_slerp_matches_a_scalar_reference_per_item():
    x, eta = pair(shape=(2, 3, 4, 4))
    strength = 0.35
    out = blend(x, eta, strength, "slerp")
    for i in range(2):
        a, b = x[i].flatten().double(), eta[i].flatten().double()
        omega = math.acos((a @ b / (a.norm() * b.norm())).item())
        expected = (math.sin((1 - strength) * omega) * b + math.sin(strength * omega) * a) / math.sin(omega)
        torch.testing.assert_close(out[i].flatten().double(), expected, rtol=1e-6, atol=1e-6)


def test_slerp_of_parallel_inputs_is_linear():
    x, _ = pair()
    out = blend(x, 2 * x, 0.25, "slerp")
    torch.testing.assert_close(out, 0.25 * x + 0.75 * 2 * x)


def test_renormalize_gives_unit_std_per_item_and_keeps_the_mean():
    x, eta = pair()
    out = blend(x, eta, 0.5, "linear", renormalize=True)
    mixed = 0.5 * x + 0.5 * eta
    for i in range(out.shape[0]):
        assert out[i].std().item() == pytest.approx(1.0, abs=1e-5)
        assert out[i].mean().item() == pytest.approx(mixed[i].mean().item(), abs=1e-5)
    torch.testing.assert_close(renormalize_std(eta), blend(x, eta, 0.0, "slerp", renormalize=True))


def test_bad_inputs_are_refused_with_the_reason():
    x, eta = pair()
    with pytest.raises(NoiseMixingError, match="different shapes"):
        blend(x, eta[:, :2], 0.5)
    with pytest.raises(NoiseMixingError, match=r"strength must be a number in \[0, 1\]"):
        blend(x, eta, 1.5)
    with pytest.raises(NoiseMixingError, match="unknown blend mode"):
        blend(x, eta, 0.5, "cubic")
