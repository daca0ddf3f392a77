"""Golden noise (Golden Noise / NPNet recipe), for any denoiser: epsilon-, v- or flow-prediction.

x_T --one DDIM denoising step at guidance w_l--> x_{T-1} --one DDIM inversion step at guidance w_w,
model queried at the same timestep t_T--> x'_T.

Conventions (one place): a noise level is x_t = alpha * x0 + sigma * eps. Epsilon/v models use
alpha = sqrt(alphas_cumprod[t]), sigma = sqrt(1 - alphas_cumprod[t]); flow models alpha = 1 - s,
sigma = s. The caller works in unit-variance noise space: the model input at the first step is
x_T = noise for epsilon/v models (diffusers' ``latents=``, init_noise_sigma = 1) and
x_T = sigma_T * noise for flow models (an empty latent), and the golden noise comes back in that
same space. A DDIM step decomposes the prediction into (x0, eps) at the level of its input x and
recomposes them at the target level; for flow this is the Euler step, for inversion it is what
diffusers' DDIMInverseScheduler does.

Host-free: the Golden Noise node adapts a ComfyUI MODEL to :class:`Denoiser`; dataset collection
(``noisear.train.collect``) runs it over prompts and seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch

PREDICTIONS = ("epsilon", "v", "flow")
SPACINGS = ("leading", "trailing", "linspace")


class Denoiser(Protocol):
    """The model as golden noise sees it: (x [B,C,H,W], timestep [B], conditioning) -> prediction [B,C,H,W].

    ``timestep`` is the schedule's model time (an integer step for epsilon/v, sigma for flow);
    the prediction is of the schedule's ``prediction`` kind. ``cond`` is whatever the model takes.
    """

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, cond: Any) -> torch.Tensor: ...


@dataclass(frozen=True)
class Level:
    """One noise level: the model time and x_t = alpha * x0 + sigma * eps."""

    timestep: float
    alpha: float
    sigma: float


@dataclass(frozen=True)
class Schedule:
    """The levels a sampler visits, first (t_T) to last, and the model's prediction kind."""

    prediction: str
    levels: tuple[Level, ...]

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if len(self.levels) < 2:
            raise ValueError("a schedule needs at least two levels (sampling steps >= 2)")

    @classmethod
    def vp(
        cls,
        alphas_cumprod: torch.Tensor,
        steps: int,
        prediction: str = "epsilon",
        spacing: str = "leading",
        steps_offset: int = 1,
    ) -> "Schedule":
        """Epsilon/v model with its training ``alphas_cumprod`` [N], sampled in ``steps`` steps.

        Timesteps as diffusers' DDIM: leading (SDXL: steps_offset 1, 50 steps -> 981, 961, ...),
        trailing or linspace.
        """
        total = len(alphas_cumprod)
        if spacing == "leading":
            timesteps = [i * (total // steps) + steps_offset for i in reversed(range(steps))]
        elif spacing == "trailing":
            timesteps = [round(total - i * total / steps) - 1 for i in range(steps)]
        elif spacing == "linspace":
            timesteps = torch.linspace(0, total - 1, steps).round().long().flip(0).tolist()
        else:
            raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
        acp = alphas_cumprod.double()
        return cls(prediction, tuple(Level(float(t), float(acp[t].sqrt()), float((1 - acp[t]).sqrt())) for t in timesteps))

    @classmethod
    def flow(cls, sigmas: Sequence[float]) -> "Schedule":
        """Flow (velocity = eps - x0) model; ``sigmas`` are the sampler's levels, descending, in [0, 1]."""
        return cls("flow", tuple(Level(float(s), 1.0 - float(s), float(s)) for s in sigmas))

    @property
    def noise_scale(self) -> float:
        """Model input at the first step = noise_scale * unit-variance noise."""
        return self.levels[0].sigma if self.prediction == "flow" else 1.0


def scaled_linear_alphas_cumprod(total: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """The SD/SDXL training schedule ("scaled_linear"), [total] float64."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, total, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def decompose(prediction: torch.Tensor, x: torch.Tensor, level: Level, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) implied by a prediction of ``kind`` for input x at ``level``."""
    a, s = level.alpha, level.sigma
    if kind == "epsilon":
        return (x - s * prediction) / a, prediction
    if kind == "v":  # v = alpha * eps - sigma * x0, alpha^2 + sigma^2 = 1
        return a * x - s * prediction, s * x + a * prediction
    if kind == "flow":  # velocity = eps - x0, alpha + sigma = 1
        return x - s * prediction, x + a * prediction
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {kind!r}")


def compose(x0: torch.Tensor, x: torch.Tensor, level: Level, kind: str) -> torch.Tensor:
    """The prediction of ``kind`` that :func:`decompose` turns back into (x0, eps) for input x at ``level``.

    For hosts whose models return the denoised estimate x0 (ComfyUI): eps = (x - alpha * x0) / sigma.
    """
    eps = (x - level.alpha * x0) / level.sigma
    if kind == "epsilon":
        return eps
    if kind == "v":
        return level.alpha * eps - level.sigma * x0
    if kind == "flow":
        return eps - x0
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {kind!r}")


def ddim_step(x: torch.Tensor, prediction: torch.Tensor, source: Level, target: Level, kind: str) -> torch.Tensor:
    """Deterministic DDIM move of x from ``source`` to ``target`` (down: denoising, up: inversion)."""
    x0, eps = decompose(prediction, x, source, kind)
    return target.alpha * x0 + target.sigma * eps


def guided(denoiser: Denoiser, x: torch.Tensor, timestep: float, cond: Any, uncond: Any, scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond); scale 1 queries the conditional model only."""
    t = torch.full((x.shape[0],), timestep, dtype=x.dtype, device=x.device)
    conditional = denoiser(x, t, cond)
    if scale == 1.0:
        return conditional
    unconditional = denoiser(x, t, uncond)
    return unconditional + scale * (conditional - unconditional)


@dataclass(frozen=True)
class GoldenConfig:
    """w_l = guidance_denoise, w_w = guidance_invert; pairs kept when reward(x'_T) - reward(x_T) > margin."""

    guidance_denoise: float = 5.5
    guidance_invert: float = 1.0
    margin: float = 0.0


def golden_noise(
    denoiser: Denoiser,
    schedule: Schedule,
    noise: torch.Tensor,
    cond: Any,
    uncond: Any = None,
    config: GoldenConfig = GoldenConfig(),
) -> torch.Tensor:
    """Unit-variance noise [B,C,H,W] -> golden noise [B,C,H,W] in the same space.

    ``uncond`` is only needed when a guidance scale differs from 1.
    """

    def predict(x: torch.Tensor, timestep: float, scale: float) -> torch.Tensor:
        return guided(denoiser, x, timestep, cond, uncond, scale)

    x_top = noise * schedule.noise_scale
    return re_denoise(predict, x_top, schedule, config) / schedule.noise_scale


# (x [B,C,H,W], model time, guidance scale) -> guided prediction of the schedule's kind
Predict = Callable[[torch.Tensor, float, float], torch.Tensor]


def re_denoise(predict: Predict, x_top: torch.Tensor, schedule: Schedule, config: GoldenConfig = GoldenConfig()) -> torch.Tensor:
    """x_T (model input at the first level) -> x'_T: the two steps above, in the schedule's space."""
    top, below, kind = schedule.levels[0], schedule.levels[1], schedule.prediction
    with torch.no_grad():
        x_below = ddim_step(x_top, predict(x_top, top.timestep, config.guidance_denoise), top, below, kind)
        return ddim_step(x_below, predict(x_below, top.timestep, config.guidance_invert), below, top, kind)
