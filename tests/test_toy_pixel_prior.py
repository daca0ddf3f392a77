"""The pixel prior is autoregressive: a pixel's distribution never depends on itself or later pixels."""

import torch

from noisear.toy.blog_methods import ar_blend_noise
from noisear.toy.pixel_prior import PixelPrior, PixelPriorConfig


def test_pixel_logits_depend_on_earlier_pixels_only():
    torch.manual_seed(0)
    model = PixelPrior(PixelPriorConfig(hidden=64, layers=2))
    labels = torch.tensor([4])
    image = torch.rand(1, 1, 8, 8) * 2 - 1
    for j in (0, 17, 63):
        changed = image.clone()
        changed.view(-1)[j] += 1.0
        before, after = model(image, labels)[0], model(changed, labels)[0]
        assert torch.equal(before[: j + 1], after[: j + 1])  # pixels 0..j unaffected
        if j < 63:
            assert not torch.equal(before[j + 1 :], after[j + 1 :])


def test_single_pixel_logits_equal_the_full_forward_and_sampling_is_seeded():
    torch.manual_seed(0)
    model = PixelPrior(PixelPriorConfig(hidden=64, layers=1))
    labels, image = torch.arange(5), torch.rand(5, 1, 8, 8) * 2 - 1
    assert torch.allclose(model.pixel_logits(image, labels, 20), model(image, labels)[:, 20], atol=1e-6)
    first = model.sample(labels, torch.Generator().manual_seed(3))
    assert torch.equal(first, model.sample(labels, torch.Generator().manual_seed(3)))
    assert first.min() >= -1 and first.max() <= 1


def test_method2_is_the_linear_blend_of_an_ar_sample_and_the_gaussian():
    torch.manual_seed(0)
    model = PixelPrior(PixelPriorConfig(hidden=32, layers=1))
    labels, eta = torch.arange(3), torch.randn(3, 1, 8, 8)
    sample = model.sample(labels, torch.Generator().manual_seed(1))
    mixed = ar_blend_noise(model, labels, eta, 0.2, torch.Generator().manual_seed(1))
    assert torch.allclose(mixed, 0.2 * sample + 0.8 * eta)
