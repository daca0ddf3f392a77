"""The toy diffusion model's samplers, checked against an oracle denoiser whose answer is known."""

import math

import torch

from noisear.toy.diffusion import ALPHAS_CUMPROD, NULL_LABEL, Denoiser, ddim_invert, ddim_sample, schedule, unconditional


class Oracle(torch.nn.Module):
    """The exact eps for a data set holding one image per label: eps = (x - sqrt(a) x0) / sqrt(1 - a)."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.images = images  # [classes + 1, 1, 8, 8]; the last is the unconditional answer

    def unconditional(self, labels):
        return unconditional(labels)

    def forward(self, x, t, labels):
        a = ALPHAS_CUMPROD[t.long()].float().view(-1, 1, 1, 1)
        return (x - a.sqrt() * self.images[labels.expand(x.shape[0])]) / (1 - a).sqrt()


def test_scaled_linear_schedule_keeps_signal_at_the_last_step():
    assert math.isclose(float(ALPHAS_CUMPROD[-1]), 0.00466, rel_tol=1e-2)
    assert [level.timestep for level in schedule(25).levels][:3] == [999.0, 959.0, 919.0]


def test_ddim_with_the_oracle_lands_on_the_image_from_any_noise():
    images = torch.rand(11, 1, 8, 8) * 2 - 1
    labels = torch.tensor([3, 7])
    noise = torch.randn(2, 1, 8, 8)
    out = ddim_sample(Oracle(images), noise, labels, steps=25)
    assert torch.allclose(out, images[labels], atol=1e-4)


def test_ddim_inversion_then_sampling_returns_the_image():
    images = torch.rand(11, 1, 8, 8) * 1.6 - 0.8
    labels = torch.tensor([1, 2, 3])
    noise = ddim_invert(Oracle(images), images[labels], labels, steps=10)
    assert torch.allclose(ddim_sample(Oracle(images), noise, labels, steps=10), images[labels], atol=1e-4)


def test_guidance_one_is_the_conditional_model_and_guidance_moves_away_from_unconditional():
    torch.manual_seed(0)
    model = Denoiser()
    torch.nn.init.normal_(model.output[1].weight, std=0.1)  # an untrained model outputs zeros
    noise, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    conditional = ddim_sample(model, noise, labels, steps=3, guidance=1.0)
    guided = ddim_sample(model, noise, labels, steps=3, guidance=3.0)
    assert not torch.allclose(conditional, guided)
    assert unconditional(labels).eq(NULL_LABEL).all()


def test_training_is_deterministic_for_a_seed():
    from noisear.toy.data import load_split
    from noisear.toy.diffusion import DenoiserTraining, train_denoiser

    train, _ = load_split()
    config = DenoiserTraining(steps=5, batch_size=16)
    first, second = train_denoiser(train, config), train_denoiser(train, config)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    other = train_denoiser(train, DenoiserTraining(steps=5, batch_size=16, seed=1))
    assert not torch.equal(first.output[1].weight, other.output[1].weight)
