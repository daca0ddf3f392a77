"""The layout testbed's world: prompts, tokens, canvases, the detector, the held-out prompts, and the multi-step
golden recipe on an oracle denoiser whose answer is known."""

import torch

from noisear.golden import GoldenConfig
from noisear.toy.data import Digits, load_split
from noisear.toy.diffusion import ALPHAS_CUMPROD, PromptDenoiser, PromptDenoiserConfig, multistep_golden, schedule
from noisear.toy.layout import (
    ALLOWED,
    EMPTY,
    HELD_OUT_PROMPTS,
    LAYOUTS,
    NUM_PROMPTS,
    PAD,
    VOCABULARY,
    allowed_quadrants,
    canvas_examples,
    canvases,
    detect,
    empty_tokens,
    place,
    prompt_conditioning,
    prompt_log_prob,
    prompt_text,
    quadrant_crops,
    tokens,
)


def test_prompts_tokens_and_the_quadrants_they_allow():
    assert prompt_text(3 * 9) == "3" and prompt_text(3 * 9 + LAYOUTS.index("bottom left")) == "3 bottom left"
    ids = tokens(torch.tensor([3 * 9, 3 * 9 + LAYOUTS.index("left"), 3 * 9 + LAYOUTS.index("top right")]))
    words = [[VOCABULARY[i] for i in row if i != PAD] for row in ids.tolist()]
    assert words == [["3"], ["3", "left"], ["3", "top", "right"]]
    assert allowed_quadrants(torch.tensor([0, LAYOUTS.index("right"), LAYOUTS.index("bottom left")])).tolist() == [
        [True, True, True, True],
        [False, True, False, True],
        [False, False, True, False],
    ]
    assert empty_tokens(2).tolist() == [[EMPTY, PAD, PAD]] * 2


def test_held_out_prompts_recombine_words_the_prior_trained_on():
    trained = [p for p in range(NUM_PROMPTS) if p not in HELD_OUT_PROMPTS]
    assert len(HELD_OUT_PROMPTS) == 20 and len(set(HELD_OUT_PROMPTS)) == 20
    for prompt in HELD_OUT_PROMPTS:
        digit, layout = divmod(prompt, len(LAYOUTS))
        assert any(p // len(LAYOUTS) == digit for p in trained)  # the digit is seen with other layouts
        assert any(p % len(LAYOUTS) == layout for p in trained)  # the layout is seen with other digits
    assert {p % len(LAYOUTS) for p in HELD_OUT_PROMPTS} == set(range(len(LAYOUTS)))  # every kind of layout


def test_canvases_hold_the_digit_where_the_prompt_allows_and_the_detector_finds_it():
    _, test = load_split()
    images, prompts, quadrant = canvases(test, torch.Generator().manual_seed(0))
    assert images.shape == (len(test), 1, 16, 16)
    assert allowed_quadrants(prompts)[torch.arange(len(test)), quadrant].all()
    assert torch.equal(quadrant_crops(images)[torch.arange(len(test)), quadrant], test.images)
    found = detect(images)
    assert torch.equal(found.quadrant, quadrant) and (found.count == 1).all()
    two = place(test.images[:4], torch.tensor([0, 1, 2, 3])).maximum(place(test.images[4:8], torch.tensor([3, 2, 1, 0])))
    assert (detect(two).count == 2).all()
    assert (detect(torch.full((3, 1, 16, 16), -1.0)).count == 0).all()


def test_every_layout_prompt_is_drawn_with_its_quadrants_equally_likely():
    digits = Digits(torch.zeros(40000, 1, 8, 8), torch.zeros(40000, dtype=torch.long))
    _, ids = prompt_conditioning(digits.images, digits.labels, torch.Generator().manual_seed(1))
    _, prompts, quadrant = canvases(digits, torch.Generator().manual_seed(1))
    assert torch.equal(ids, tokens(prompts))  # what the denoiser trains on
    for layout, allowed in ALLOWED.items():
        rows = prompts == LAYOUTS.index(layout)
        share = torch.bincount(quadrant[rows], minlength=4).float() / rows.sum()
        expected = torch.tensor([1.0 / len(allowed) if q in allowed else 0.0 for q in range(4)])
        torch.testing.assert_close(share, expected, atol=0.03, rtol=0)


def test_judge_classes_and_the_prompt_probability():
    images, classes = canvas_examples(torch.zeros(8, 1, 8, 8), torch.arange(8), torch.Generator().manual_seed(0))
    assert torch.equal(classes % 4, detect(images).quadrant) and torch.equal(classes // 4, torch.arange(8))
    logits = torch.full((1, 40), -30.0)
    logits[0, 3 * 4 + 2] = 0.0  # all mass on "3 in the bottom left"
    allows = torch.tensor([3 * 9 + LAYOUTS.index("left"), 3 * 9 + LAYOUTS.index("right"), 4 * 9])
    log_p = prompt_log_prob(logits.expand(3, -1), allows)
    assert log_p[0] > -1e-6 and log_p[1] < -20 and log_p[2] < -20


class Oracle(torch.nn.Module):
    """The exact eps when every prompt's data set is one canvas: eps = (x - sqrt(a) x0) / sqrt(1 - a)."""

    def __init__(self, images):
        super().__init__()
        self.images = images  # [2, 1, 16, 16]: the prompt's and the empty prompt's answer

    def unconditional(self, ids):
        return empty_tokens(len(ids))

    def forward(self, x, t, ids):
        a = ALPHAS_CUMPROD[t.long()].float().view(-1, 1, 1, 1)
        x0 = self.images[(ids[:, 0] == EMPTY).long()].expand_as(x)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()


def test_multistep_golden_returns_the_noise_when_denoising_and_inversion_agree():
    images = torch.rand(2, 1, 16, 16) * 2 - 1
    oracle, noise, ids = Oracle(images), torch.randn(3, 1, 16, 16), tokens(torch.tensor([5, 6, 7]))
    for steps in (1, 10):
        back = multistep_golden(oracle, noise, ids, GoldenConfig(1.0, 1.0), steps)
        torch.testing.assert_close(back, noise, atol=1e-4, rtol=0)
    # guidance above 1 at the way down moves the noise towards the prompt's image, more with more steps
    moved = [(multistep_golden(oracle, noise, ids, GoldenConfig(5.5, 1.0), k) - noise) for k in (1, 10)]
    direction = (images[0] - images[1]).flatten()
    assert 0 < float(moved[0][0].flatten() @ direction) < float(moved[1][0].flatten() @ direction)
    assert schedule(25).levels[10].timestep == 599.0


def test_the_prompt_denoiser_predicts_v_and_returns_eps():
    torch.manual_seed(0)
    model = PromptDenoiser(PromptDenoiserConfig(hidden=32, blocks=1, heads=2))
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([999, 10])
    # the untrained network outputs v = 0, so eps = sqrt(1 - a) x exactly
    a = ALPHAS_CUMPROD[t].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(model(x, t, tokens(torch.tensor([1, 2]))), (1 - a).sqrt() * x)
    torch.nn.init.normal_(model.output[1].weight, std=0.1)
    outputs = [model(x, t, tokens(torch.tensor([p, p]))) for p in (27, 27 + LAYOUTS.index("top left"))]
    assert not torch.allclose(outputs[0], outputs[1])  # the prompt's position words reach the output
