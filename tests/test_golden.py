"""Golden noise against closed forms: a Gaussian-data denoiser, an oracle denoiser, guidance."""

import math

import pytest
import torch

from noisear.golden import GoldenConfig, Schedule, golden_noise, guided, scaled_linear_alphas_cumprod

ACP = scaled_linear_alphas_cumprod()


def levels(schedule):
    """(alpha, sigma) of the first two levels, computed here from the definitions."""
    out = []
    for level in schedule.levels[:2]:
        if schedule.prediction == "flow":
            out.append((1 - level.timestep, level.timestep))
        else:
            a = ACP[int(level.timestep)].item()
            out.append((math.sqrt(a), math.sqrt(1 - a)))
    return out


def schedules():
    return [
        Schedule.vp(ACP, 50, "epsilon"),
        Schedule.vp(ACP, 30, "v", spacing="trailing"),
        Schedule.flow([1.0, 0.9, 0.5, 0.0]),
        Schedule.flow([0.8, 0.7, 0.0]),
    ]


class GaussianData:
    """Data x0 ~ N(m, s^2) per value: the exact posterior mean E[x0 | x_t] gives the ideal prediction."""

    def __init__(self, schedule, m=0.7, s=0.5):
        self.schedule, self.m, self.s, self.calls = schedule, m, s, 0

    def level(self, t):
        if self.schedule.prediction == "flow":
            return 1 - t, t
        a = ACP[int(round(t))].item()
        return math.sqrt(a), math.sqrt(1 - a)

    def x0(self, x, alpha, sigma):
        return self.m + alpha * self.s**2 * (x - alpha * self.m) / (alpha**2 * self.s**2 + sigma**2)

    def __call__(self, x, timestep, cond):
        self.calls += 1
        alpha, sigma = self.level(float(timestep[0]))
        x0 = self.x0(x, alpha, sigma) + cond
        eps = (x - alpha * x0) / sigma
        return {"epsilon": eps, "v": alpha * eps - sigma * x0, "flow": eps - x0}[self.schedule.prediction]


class Oracle:
    """Knows the x0 and eps behind x_T and returns them as a prediction of the given kind, whatever the input."""

    def __init__(self, schedule, x0, eps):
        self.schedule, self.x0_, self.eps = schedule, x0, eps

    def __call__(self, x, timestep, cond):
        return self.eps if self.schedule.prediction == "epsilon" else self.eps - self.x0_


def test_vp_timesteps_follow_diffusers_spacings():
    assert [level.timestep for level in Schedule.vp(ACP, 50).levels[:3]] == [981, 961, 941]
    assert [level.timestep for level in Schedule.vp(ACP, 50, spacing="trailing").levels[:2]] == [999, 979]
    assert Schedule.vp(ACP, 4, spacing="linspace").levels[0].timestep == 999
    with pytest.raises(ValueError, match="prediction"):
        Schedule.vp(ACP, 50, "x0")


@pytest.mark.parametrize("schedule", schedules(), ids=lambda s: f"{s.prediction}-{s.levels[0].timestep}")
def test_denoise_then_invert_matches_the_gaussian_closed_form(schedule):
    denoiser = GaussianData(schedule)
    noise = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    cond = torch.tensor(0.3, dtype=torch.float64)
    (a, s), (a1, s1) = levels(schedule)
    scale = s if schedule.prediction == "flow" else 1.0  # flow: x_T = sigma_T * noise
    # Written out by hand: guidance on the x0 estimate (the denoiser is affine in cond).
    x_t = scale * noise
    w_l, w_w = 4.0, 1.5
    x0 = denoiser.x0(x_t, a, s) + w_l * cond
    x_down = a1 * x0 + s1 * (x_t - a * x0) / s
    x0_up = denoiser.x0(x_down, a, s) + w_w * cond  # model queried at t_T on x_{T-1}
    pred_eps = (x_down - a * x0_up) / s
    if schedule.prediction == "epsilon":
        x0_re, eps_re = (x_down - s1 * pred_eps) / a1, pred_eps
    elif schedule.prediction == "v":
        v = a * pred_eps - s * x0_up
        x0_re, eps_re = a1 * x_down - s1 * v, s1 * x_down + a1 * v
    else:
        u = pred_eps - x0_up
        x0_re, eps_re = x_down - s1 * u, x_down + a1 * u
    expected = (a * x0_re + s * eps_re) / scale
    result = golden_noise(denoiser, schedule, noise, cond, torch.zeros((), dtype=torch.float64), GoldenConfig(w_l, w_w))
    torch.testing.assert_close(result, expected, rtol=1e-9, atol=1e-9)
    assert denoiser.calls == 4
    assert not torch.allclose(result, noise)


@pytest.mark.parametrize(
    "schedule", [s for s in schedules() if s.prediction != "v"], ids=lambda s: f"{s.prediction}-{s.levels[0].timestep}"
)
def test_equal_guidance_and_a_perfect_model_return_the_start_noise(schedule):
    (a, s), _ = levels(schedule)
    x0, eps = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.randn(2, 4, 8, 8, dtype=torch.float64)
    x_t = a * x0 + s * eps
    noise = x_t / schedule.noise_scale
    result = golden_noise(Oracle(schedule, x0, eps), schedule, noise, None, None, GoldenConfig(3.0, 3.0))
    torch.testing.assert_close(result, noise, rtol=1e-10, atol=1e-10)


def test_guidance_combines_conditional_and_unconditional_and_skips_uncond_at_one():
    calls = []

    def denoiser(x, t, cond):
        calls.append(cond)
        return x * cond

    x = torch.ones(2, 1, 2, 2)
    assert torch.allclose(guided(denoiser, x, 5.0, 3.0, 1.0, 5.5), x * (1.0 + 5.5 * 2.0))
    calls.clear()
    assert torch.allclose(guided(denoiser, x, 5.0, 3.0, 1.0, 1.0), 3 * x) and calls == [3.0]
