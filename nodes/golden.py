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

The recipe per family (``embedded_guidance``): models with real CFG (epsilon, v and flow alike) take w_l and w_w as
the cfg of the two steps. Guidance-distilled models (Family.guidance "embedded": Flux dev) are sampled at cfg 1 and
steered by a guidance value in the conditioning ("guidance", which FluxGuidance sets); CFG on them leaves their
training. Their golden step runs both model evaluations at cfg 1 with the guidance value set to w_l for the denoising
step and to w_w for the inversion step (the conditioning's own value is replaced for those two evaluations only), so
the step keeps the paper's asymmetry, strong guidance down and weak guidance back, in the form the model was trained
to take it (one evaluation per step, no unconditional pass). FluxSchnell (timestep-distilled) has no guidance input:
its two steps see the same model, so golden noise is one Euler step down and back with the same prediction, the
discretisation error of that round trip and nothing more toward the prompt; keep only pairs a reward says improve
(the Dataset Collector's reward filter).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import torch

from noisear.golden import GoldenConfig, Level, Schedule, compose, re_denoise

from . import host
from .family import check_model
from .noise import gaussian_draws
from .widgets import NoiseARNodeError

GOLDEN_NODE = "NoiseAR Golden Noise"
NO_GUIDANCE_INPUT = ("FluxSchnell",)  # models of a guidance-distilled family without a guidance input

log = logging.getLogger("NoiseAR")

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


def embedded_guidance(model: Any) -> bool:
    """Whether the MODEL is steered by a guidance value in its conditioning rather than by CFG (see the module doc)."""
    family = host.model_family(model)
    return family is not None and family.guidance == "embedded"


def recipe_note(model: Any) -> str | None:
    """What the user should know about golden noise of this MODEL (FluxSchnell: no guidance input), or None."""
    if host.model_config_name(model) not in NO_GUIDANCE_INPUT:
        return None
    return (
        f"NoiseAR note: {host.model_config_name(model)} has no guidance input, so golden noise is one step down and back "
        f"with the same model (cfg 1): it moves the noise little and not by guidance. Use the Dataset Collector's reward "
        f"filter to keep only pairs that improve."
    )


def golden_from_denoised(
    denoised: host.Denoised,
    x_start: torch.Tensor,
    start_scale: float,
    sigmas: torch.Tensor,
    kind: str,
    config: GoldenConfig,
    before_step: StepHook | None = None,
    embedded: bool = False,
) -> torch.Tensor:
    """ComfyUI's start x_start = start_scale * noise -> golden noise in the same unit-variance space (any rank).
    ``embedded``: w_l and w_w are the guidance values of a guidance-distilled model, both steps at cfg 1."""
    schedule = comfy_schedule(sigmas, kind)
    top = schedule.levels[0]

    def predict(x: torch.Tensor, timestep: float, scale: float) -> torch.Tensor:
        if before_step is not None:
            before_step()
        at = level(timestep, kind)
        x_k = x * k_scale(at, kind)
        x0 = denoised(x_k, timestep, 1.0, scale) if embedded else denoised(x_k, timestep, scale)
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
    """Unit-variance noise (the latent's shape) -> golden noise, fp32 on the CPU, with the host's MODEL and conds,
    by the MODEL's recipe (CFG, or embedded guidance: see the module doc). The one golden function of the Golden Noise
    node and the Dataset Collector."""
    try:
        kind = host.prediction_kind(model)
    except ValueError as err:
        raise NoiseARNodeError(f"{GOLDEN_NODE} supports epsilon, v-prediction and flow models: {err}") from None
    comfy_schedule(sigmas, kind)  # refuse a bad schedule before the model is loaded
    embedded = embedded_guidance(model)

    def work(denoised: host.Denoised, x_start: torch.Tensor, start_scale: float) -> torch.Tensor:
        golden = golden_from_denoised(
            denoised, x_start, start_scale, sigmas.to(x_start.device), kind, config, before_step, embedded
        )
        return golden.float().cpu()

    return host.run_guided(model, positive, negative, noise.float(), sigmas, seed, work, embedded_guidance=embedded)


class GoldenNoise:
    """NOISE: the draws of an upstream NOISE (or RandomNoise's for ``seed``) after one golden step.

    Needs an empty latent (text-to-image); carries the seed for ancestral/SDE samplers. An upstream NoiseAR noise
    whose prior serves another family than the MODEL is refused.
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
        check_model(getattr(upstream, "prior", None), model, GOLDEN_NODE)
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
            # computed at the MODEL's rank (a NoiseAR Preview may ask with Qwen-Image's 4-D empty latent)
            model_shape = tuple(host.fix_empty_latent(self.model, samples).shape)
            if math.prod(model_shape) != samples.numel():
                raise NoiseARNodeError(
                    f"{GOLDEN_NODE}: the latent {list(samples.shape)} is not this MODEL's (its sampler takes it as "
                    f"{list(model_shape)}); give the empty latent node of the MODEL's family"
                )
            eps = gaussian_draws(latent, self.seed, self.upstream)
            self._last = (key, self._compute(eps.reshape(model_shape)).reshape(samples.shape))
        return self._last[1].to(host.intermediate_device())

    def _compute(self, eps: torch.Tensor) -> torch.Tensor:
        note = recipe_note(self.model)
        if note:
            log.warning(note)
            host.show_on_node(note)
        sigmas = host.schedule_sigmas(self.model, self.scheduler, self.steps)
        bar, done = host.progress_bar(2), [0]

        def before_step() -> None:
            host.throw_if_interrupted()
            bar.update_absolute(done[0], 2)
            done[0] += 1

        golden = golden_noise(self.model, self.positive, self.negative, eps, sigmas, self.seed, self.config, before_step)
        bar.update_absolute(2, 2)
        return golden
