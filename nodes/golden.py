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
from .prior import CATEGORY, NoiseARNodeError, number_in_range

GOLDEN_NODE = "NoiseAR Golden Noise"
CFG_RANGE = (0.0, 100.0)  # the guidance widgets' min and max, checked again at run time

# (x [B,C,H,W] k-diffusion space, sigma, cfg) -> CFG-combined denoised x0, as host.run_guided gives it
Denoised = Callable[[torch.Tensor, float, float], torch.Tensor]
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
    denoised: Denoised,
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
        raise NoiseARNodeError(f"NoiseAR Golden Noise supports epsilon, v-prediction and flow models: {err}") from None
    comfy_schedule(sigmas, kind)  # refuse a bad schedule before the model is loaded

    def work(denoised: Denoised, x_start: torch.Tensor, start_scale: float) -> torch.Tensor:
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


def schedule_inputs() -> dict[str, Any]:
    """scheduler + steps of the sampler the noise is meant for (the golden step is its first step)."""
    return {
        "scheduler": (
            host.scheduler_names(),
            {
                "default": "normal",
                "tooltip": (
                    "The scheduler the image will be sampled with (as in BasicScheduler / KSampler); the golden step "
                    "goes from its first sigma to its second and back."
                ),
            },
        ),
        "steps": (
            "INT",
            {
                "default": 30,
                "min": 2,
                "max": 10000,
                "tooltip": ("The number of sampling steps the image will be sampled with (at least 2)."),
            },
        ),
        "cfg_denoise": (
            "FLOAT",
            {
                "default": 5.5,
                "min": CFG_RANGE[0],
                "max": CFG_RANGE[1],
                "step": 0.1,
                "round": 0.01,
                "tooltip": "Guidance of the denoising step (w_l, 5.5 in the Golden Noise paper).",
            },
        ),
        "cfg_invert": (
            "FLOAT",
            {
                "default": 1.0,
                "min": CFG_RANGE[0],
                "max": CFG_RANGE[1],
                "step": 0.1,
                "round": 0.01,
                "tooltip": "Guidance of the inversion step (w_w, 1.0 = conditional model only).",
            },
        ),
    }


class GoldenNoiseNode:
    DESCRIPTION = (
        "Training-free golden noise (Golden Noise paper's re-denoise step): the seed's Gaussian noise "
        "goes one denoising step down the sampling schedule at cfg_denoise and one inversion step back "
        "at cfg_invert with this MODEL, for epsilon, v-prediction and flow models. Costs about three "
        "model evaluations. Output is unit-variance NOISE for SamplerCustomAdvanced with an empty latent."
    )
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = ("NOISE",)
    RETURN_NAMES = ("noise",)
    OUTPUT_TOOLTIPS = (
        "Golden NOISE for SamplerCustomAdvanced (computed when the sampler asks, for the latent's "
        "shape and batch); carries the seed for ancestral/SDE samplers.",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model that will sample the image."}),
                "positive": ("CONDITIONING", {"tooltip": "The positive conditioning the image will be sampled with."}),
                "negative": ("CONDITIONING", {"tooltip": "The negative conditioning (used when a cfg is not 1)."}),
                "noise_seed": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 0xFFFFFFFFFFFFFFFF,
                        "control_after_generate": True,
                        "tooltip": "Seed of the Gaussian noise to improve (RandomNoise's draws for it). "
                        "Ignored when a noise input is connected.",
                    },
                ),
                **schedule_inputs(),
            },
            "optional": {
                "noise": (
                    "NOISE",
                    {
                        "tooltip": (
                            "Optional: the NOISE to improve (e.g. RandomNoise or NoiseAR Noise) instead of noise_seed's; its "
                            "seed is carried on."
                        )
                    },
                )
            },
        }

    def make(
        self,
        model: Any,
        positive: list,
        negative: list,
        noise_seed: int,
        scheduler: str,
        steps: int,
        cfg_denoise: float,
        cfg_invert: float,
        noise: Any = None,
    ) -> tuple[GoldenNoise]:
        config = GoldenConfig(
            guidance_denoise=number_in_range(GOLDEN_NODE, "cfg_denoise", cfg_denoise, *CFG_RANGE),
            guidance_invert=number_in_range(GOLDEN_NODE, "cfg_invert", cfg_invert, *CFG_RANGE),
        )
        return (GoldenNoise(model, positive, negative, noise_seed, scheduler, steps, config, noise),)
