"""Golden noise inside ComfyUI: noisear.golden's re-denoise step driven by the host's own MODEL.

ComfyUI samples in k-diffusion space: epsilon / v-prediction models see x = x0 + s*eps (the
sampler starts at noise*sqrt(1+s_max^2)), flow models x = (1-s)*x0 + s*eps (start s*noise), and the
guider returns the CFG-combined denoised estimate x0. This module maps that onto golden.py's
levels (x_t = alpha*x0 + sigma*eps, for epsilon/v the variance-preserving space alpha =
1/sqrt(1+s^2), sigma = s/sqrt(1+s^2); for flow the k-diffusion space itself), turns x0 back into the
model's own prediction with golden.compose, and lets golden.re_denoise do the two DDIM steps. So
the golden noise of a ComfyUI MODEL is what golden.golden_noise gives for the same network.

Cost: one denoising step at guidance w_l (2 model evaluations when w_l != 1) and one inversion step
at w_w (1 evaluation when w_w == 1): about three, as much as 1.5 sampling steps with CFG.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from noisear.golden import GoldenConfig, Level, Schedule, compose, re_denoise

from . import host
from .noise import gaussian_draws
from .widgets import NoiseARNodeError

GOLDEN_NODE = "NoiseAR Golden Noise"

StepHook = Callable[[], None]  # called before each guided prediction (progress, interrupt)


def level(sigma: float, kind: str) -> Level:
    """golden.py's level for ComfyUI sigma ``sigma`` (its model time)."""
    if kind == "flow":
        return Level(sigma, 1.0 - sigma, sigma)
    alpha = 1.0 / math.sqrt(1.0 + sigma**2)
    return Level(sigma, alpha, sigma * alpha)


def k_scale(at: Level, kind: str) -> float:
    """k-diffusion x = k_scale * golden.py's x at this level."""
    return 1.0 if kind == "flow" else 1.0 / at.alpha


def comfy_schedule(sigmas: torch.Tensor, kind: str) -> Schedule:
    """golden.py's schedule of the first step of a ComfyUI sigma schedule [steps+1]."""
    first, second = float(sigmas[0]), float(sigmas[1])
    if len(sigmas) < 3 or second <= 0.0:
        raise NoiseARNodeError(
            f"golden noise needs a schedule of at least 2 steps (its first step must end above sigma 0); "
            f"got sigmas {[round(float(s), 4) for s in sigmas[:3]]}. Use steps >= 2"
        )
    return Schedule(kind, (level(first, kind), level(second, kind)))


def golden_from_denoised(
    denoised: host.Denoised,
    x_start: torch.Tensor,
    start_scale: float,
    sigmas: torch.Tensor,
    kind: str,
    config: GoldenConfig,
    before_step: StepHook | None = None,
) -> torch.Tensor:
    """ComfyUI's start x_start = start_scale * noise -> golden noise [B,C,H,W] in the same unit-variance space."""
    schedule = comfy_schedule(sigmas, kind)
    top = schedule.levels[0]

    def predict(x: torch.Tensor, timestep: float, cfg: float) -> torch.Tensor:
        if before_step is not None:
            before_step()
        at = level(timestep, kind)
        x0 = denoised(x * k_scale(at, kind), timestep, cfg)
        return compose(x0.to(x.dtype), x, at, kind)

    x_back = re_denoise(predict, x_start / k_scale(top, kind), schedule, config)
    return x_back * k_scale(top, kind) / start_scale


def golden_noise(
    model: Any,
    positive: list,
    negative: list,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    seed: int,
    config: GoldenConfig,
    before_step: StepHook | None = None,
) -> torch.Tensor:
    """Unit-variance noise [B,C,H,W] -> golden noise, fp32 on the CPU, with the host's MODEL and conds."""
    try:
        kind = host.prediction_kind(model)
    except ValueError as err:
        raise NoiseARNodeError(f"{GOLDEN_NODE} supports epsilon, v-prediction and flow models: {err}") from None
    comfy_schedule(sigmas, kind)  # refuse a bad schedule before the model is loaded

    def work(denoised: host.Denoised, x_start: torch.Tensor, start_scale: float) -> torch.Tensor:
        return (
            golden_from_denoised(denoised, x_start, start_scale, sigmas.to(x_start.device), kind, config, before_step)
            .float()
            .cpu()
        )

    return host.run_guided(model, positive, negative, noise.float(), sigmas, seed, work)


class GoldenNoise:
    """NOISE: the draws of an upstream NOISE (or RandomNoise's for ``seed``) after one golden step.

    Needs an empty latent (text-to-image); carries the seed for ancestral/SDE samplers.
    """

    def __init__(
        self,
        model: Any,
        positive: list,
        negative: list,
        seed: int,
        scheduler: str,
        steps: int,
        config: GoldenConfig,
        upstream: Any = None,
    ) -> None:
        self.model, self.positive, self.negative, self.upstream = model, positive, negative, upstream
        self.scheduler, self.steps, self.config = scheduler, steps, config
        self.seed = int(upstream.seed if upstream is not None else seed)
        self._last: tuple[tuple, torch.Tensor] | None = None  # a preview and the sampler share one computation

    def generate_noise(self, latent: dict[str, Any]) -> torch.Tensor:
        """Golden noise of ``latent["samples"]``'s shape, unit-variance space, on the intermediate device."""
        samples = latent["samples"]
        if torch.count_nonzero(samples) > 0:
            raise NoiseARNodeError(
                "NoiseAR Golden Noise is for text-to-image: the latent must be empty (EmptyLatentImage, all zeros). "
                "For image-to-image use RandomNoise"
            )
        key = (tuple(samples.shape), tuple(latent.get("batch_index") or ()))
        if self._last is None or self._last[0] != key:
            self._last = (key, self._compute(gaussian_draws(latent, self.seed, self.upstream)))
        return self._last[1].to(host.intermediate_device())

    def _compute(self, eps: torch.Tensor) -> torch.Tensor:
        sigmas = host.schedule_sigmas(self.model, self.scheduler, self.steps)
        bar, done = host.progress_bar(2), [0]

        def before_step() -> None:
            host.throw_if_interrupted()
            bar.update_absolute(done[0], 2)
            done[0] += 1

        golden = golden_noise(self.model, self.positive, self.negative, eps, sigmas, self.seed, self.config, before_step)
        bar.update_absolute(2, 2)
        return golden
