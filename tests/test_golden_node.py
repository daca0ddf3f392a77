"""NoiseAR Golden Noise without ComfyUI: the adapter against golden.py's own golden_noise.

A "ComfyUI model" is simulated from a golden.py Denoiser exactly as ComfyUI wraps networks
(k-diffusion space: epsilon/v models see x_k = x0 + s*eps and get x_k/sqrt(1+s^2); flow models see
x = (1-s)*x0 + s*eps; the guider returns the CFG-combined denoised x0). The node path must give
what golden.golden_noise gives for the Denoiser on the same levels.
"""

from __future__ import annotations

import math

import fake_comfy
import pytest
import torch

from nodes import host
from nodes.definitions import GoldenNoiseNode
from nodes.golden import GoldenNoise, golden_from_denoised
from nodes.widgets import NoiseARNodeError
from noisear.golden import GoldenConfig, Level, Schedule, compose, decompose, golden_noise, scaled_linear_alphas_cumprod

SHAPE = (3, 4, 8, 6)


class Net:
    """A deterministic non-linear Denoiser: prediction = tanh(W x) * (1 + t/1000) + cond."""

    def __init__(self, seed: int = 0, gain: float = 1.0) -> None:
        self.weight = torch.randn(4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * gain

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, cond: float) -> torch.Tensor:
        mixed = torch.einsum("oc,bchw->bohw", self.weight, x)
        return torch.tanh(mixed) * (1 + timestep.view(-1, 1, 1, 1) / 1000) + cond


def comfy_denoised(net: Net, kind: str, timestep_of, cond: float, uncond: float):
    """ComfyUI's view of ``net``: denoised(x_k, sigma, cfg), CFG on x0 (uncond + cfg * (cond - uncond))."""

    def x0(x_k: torch.Tensor, sigma: float, c: float) -> torch.Tensor:
        t = torch.full((x_k.shape[0],), timestep_of(sigma), dtype=x_k.dtype)
        if kind == "flow":
            return x_k - sigma * net(x_k, t, c)  # CONST.calculate_denoised
        out = net(x_k / math.sqrt(1 + sigma**2), t, c)  # EPS.calculate_input
        if kind == "epsilon":
            return x_k - out * sigma
        return x_k / (sigma**2 + 1) - out * sigma / math.sqrt(sigma**2 + 1)  # V_PREDICTION

    def denoised(x_k: torch.Tensor, sigma: float, cfg: float) -> torch.Tensor:
        conditional = x0(x_k, sigma, cond)
        return conditional if cfg == 1.0 else x0(x_k, sigma, uncond) + cfg * (conditional - x0(x_k, sigma, uncond))

    return denoised


def vp_case(kind: str) -> tuple[Schedule, torch.Tensor, dict]:
    """golden.py's SDXL-like schedule (integer timesteps) and the same levels as ComfyUI sigmas."""
    schedule = Schedule.vp(scaled_linear_alphas_cumprod(), steps=10, prediction=kind)
    sigmas = [level.sigma / level.alpha for level in schedule.levels]
    timestep = {round(s, 9): level.timestep for s, level in zip(sigmas, schedule.levels)}
    return schedule, torch.tensor(sigmas + [0.0], dtype=torch.float64), timestep


@pytest.mark.parametrize("kind", ["epsilon", "v", "flow"])
@pytest.mark.parametrize("guidance", [(5.5, 1.0), (3.0, 2.0)])
def test_node_path_equals_golden_noise_of_the_same_network(kind, guidance):
    net, config = Net(), GoldenConfig(*guidance)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    if kind == "flow":
        sigma_list = [1.0, 0.9, 0.75, 0.5, 0.0]
        schedule, sigmas = Schedule.flow(sigma_list[:-1]), torch.tensor(sigma_list, dtype=torch.float64)
        timestep_of, start_scale = (lambda s: s), sigma_list[0]
    else:
        schedule, sigmas, table = vp_case(kind)
        timestep_of, start_scale = (lambda s: table[round(s, 9)]), math.sqrt(1 + float(sigmas[0]) ** 2)
    expected = golden_noise(net, schedule, noise, 0.3, -0.2, config)

    got = golden_from_denoised(
        comfy_denoised(net, kind, timestep_of, 0.3, -0.2), noise * start_scale, start_scale, sigmas, kind, config
    )
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    assert (got - noise).abs().max() > 1e-3  # the step does change the noise


def test_a_start_below_sigma_max_is_mapped_back_with_its_own_scale():
    """ComfyUI starts at noise*sigma (not sqrt(1+sigma^2)) when the schedule does not start at sigma_max."""
    net, config = Net(), GoldenConfig(2.0, 1.0)
    schedule, sigmas, table = vp_case("epsilon")
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    s0 = float(sigmas[0])
    denoised = comfy_denoised(net, "epsilon", lambda s: table[round(s, 9)], 0.3, -0.2)
    got = golden_from_denoised(denoised, noise * s0, s0, sigmas, "epsilon", config)
    # the same computation in golden.py's space: x_T = alpha * noise * s0
    top = schedule.levels[0]
    expected = golden_noise(net, schedule, noise * s0 * top.alpha, 0.3, -0.2, config) / (s0 * top.alpha)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["epsilon", "flow"])
def test_equal_guidances_and_a_prediction_independent_of_x_give_the_noise_back(kind):
    """With w_l == w_w and a constant prediction, inversion undoes the denoising step exactly."""
    constant = torch.randn(1, 4, 1, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sigmas = torch.tensor([1.0, 0.8, 0.0] if kind == "flow" else [14.6, 9.0, 0.0], dtype=torch.float64)

    def denoised(x_k, sigma, cfg):  # eps (epsilon) or velocity (flow) = constant * cfg, for every x
        return x_k - sigma * constant * cfg

    noise = torch.randn(SHAPE, dtype=torch.float64)
    scale = float(sigmas[0]) if kind == "flow" else math.sqrt(1 + float(sigmas[0]) ** 2)
    got = golden_from_denoised(denoised, noise * scale, scale, sigmas, kind, GoldenConfig(4.0, 4.0))
    torch.testing.assert_close(got, noise, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["epsilon", "v", "flow"])
def test_compose_is_the_inverse_of_decompose(kind):
    x, x0 = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    level = Level(0.0, 0.6, 0.4) if kind == "flow" else Level(0.0, 0.6, 0.8)
    back_x0, _ = decompose(compose(x0, x, level, kind), x, level, kind)
    torch.testing.assert_close(back_x0, x0)


# The node with the host faked ----------------------------------------------------------------------
@pytest.fixture
def fakes(monkeypatch, tmp_path):
    """fake_comfy plus what the golden node asks the host: an EPS model with a linear net."""
    installed = fake_comfy.install(monkeypatch, tmp_path)
    net = Net(gain=0.5)
    sigmas = torch.tensor([14.6146, 10.0, 5.0, 0.0])
    runs = []

    def run_guided(model, positive, negative, noise, given_sigmas, seed, work, embedded_guidance=False):
        runs.append({"noise": noise.clone(), "seed": seed, "positive": positive, "negative": negative})
        scale = math.sqrt(1 + float(given_sigmas[0]) ** 2)
        denoised = comfy_denoised(net, "epsilon", lambda s: s, positive, negative)
        return work(lambda x, s, c: denoised(x.double(), s, c).float(), noise * scale, scale)

    monkeypatch.setattr(host, "schedule_sigmas", lambda model, scheduler, steps: sigmas[: steps + 1])
    monkeypatch.setattr(host, "prediction_kind", lambda model: "epsilon")
    monkeypatch.setattr(host, "run_guided", run_guided)
    installed.runs = runs
    return installed


def empty(batch=2, **extra):
    return {"samples": torch.zeros(batch, 4, 8, 8), **extra}


def make(noise=None, seed=7, steps=3, cfgs=(5.5, 1.0)) -> GoldenNoise:
    return GoldenNoiseNode().make(fake_comfy.Model(), 0.3, -0.2, seed, "normal", steps, *cfgs, noise=noise)[0]


def test_node_improves_randomnoise_draws_for_the_seed_and_carries_the_seed(fakes):
    node = make()
    out = node.generate_noise(empty())
    eps = fake_comfy.prepare_noise(torch.zeros(2, 4, 8, 8), 7)
    torch.testing.assert_close(fakes.runs[0]["noise"], eps)
    assert node.seed == 7 and out.shape == (2, 4, 8, 8) and out.dtype == torch.float32
    assert not torch.allclose(out, eps)
    assert fakes.progress_bars[-1].current == 2  # denoise + invert


def test_upstream_noise_is_improved_and_its_seed_carried(fakes):
    class Upstream:
        seed = 99

        def generate_noise(self, latent):
            return torch.ones(latent["samples"].shape)

    node = make(noise=Upstream())
    node.generate_noise(empty())
    assert node.seed == 99 and torch.equal(fakes.runs[0]["noise"], torch.ones(2, 4, 8, 8))


def test_one_computation_is_shared_by_repeated_calls_and_batch_index_is_honoured(fakes):
    node = make()
    first = node.generate_noise(empty())
    assert torch.equal(node.generate_noise(empty()), first) and len(fakes.runs) == 1
    single = node.generate_noise(empty(batch=1, batch_index=[1]))
    torch.testing.assert_close(single, first[1:2])  # the net acts per item


def test_non_empty_latents_and_one_step_schedules_are_refused(fakes):
    with pytest.raises(NoiseARNodeError, match="latent must be empty"):
        make().generate_noise({"samples": torch.ones(1, 4, 8, 8)})
    with pytest.raises(NoiseARNodeError, match="at least 2 steps"):
        make(steps=1).generate_noise(empty())


def test_interrupt_stops_before_the_model_runs(fakes):
    fakes.comfy.model_management.interrupted = True
    with pytest.raises(fake_comfy.InterruptProcessingException):
        make().generate_noise(empty())


def test_unsupported_sampling_is_refused_with_the_supported_kinds(fakes, monkeypatch):
    def refuse(model):
        raise ValueError("the MODEL's sampling (EDM) is not epsilon, v-prediction or flow")

    monkeypatch.setattr(host, "prediction_kind", refuse)
    with pytest.raises(NoiseARNodeError, match="supports epsilon, v-prediction and flow"):
        make().generate_noise(empty())


def test_cost_is_three_model_evaluations_at_the_default_guidances():
    calls = []

    def denoised(x, sigma, cfg):
        calls.append(cfg)
        return x * 0.5

    sigmas = torch.tensor([14.6, 9.0, 0.0])
    golden_from_denoised(denoised, torch.randn(1, 4, 2, 2), 1.0, sigmas, "epsilon", GoldenConfig())
    assert calls == [5.5, 1.0]  # one CFG pair (2 evaluations) + one conditional evaluation
