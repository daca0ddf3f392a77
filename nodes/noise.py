"""NoiseAR noise for ComfyUI: the NOISE objects and the start LATENT for KSamplerAdvanced.

Shapes: latents are [B, C, H, W] (latent cells, 8 pixels each for SDXL-family VAEs); eps are the
standard-normal draws ComfyUI would have used; noise is in unit-variance space.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from noisear.mixing import blend

from . import host
from .conditioning import text_from_conditioning
from .prior import NoiseARNodeError, NoiseARPrior

SIZE_MODES = ("native only", "centre + Gaussian border")
PIXELS_PER_CELL = 8  # SDXL and Hunyuan-DiT VAEs; only used to say sizes in pixels

log = logging.getLogger("NoiseAR")


class Noise(Protocol):
    """ComfyUI's NOISE: an int seed (also seeds ancestral/SDE steps) and one tensor per latent."""

    seed: int

    def generate_noise(self, latent: dict[str, Any]) -> torch.Tensor: ...


@dataclass(frozen=True)
class Window:
    """Where the prior's noise goes in the latent: rows top:top+height, columns left:left+width."""

    top: int
    left: int
    height: int
    width: int
    warning: str | None = None  # set when part of the latent stays plain Gaussian noise


def _pixels(height: int, width: int) -> str:
    return f"{width * PIXELS_PER_CELL}x{height * PIXELS_PER_CELL} px"


def prior_window(prior: NoiseARPrior, shape: tuple[int, ...], size_mode: str) -> Window:
    """Check a latent shape [B,C,H,W] against the prior and say where its noise goes."""
    c = prior.config
    if len(shape) != 4:
        raise NoiseARNodeError(f"NoiseAR works on image latents [batch, channels, height, width]; got shape {list(shape)}")
    _, channels, height, width = shape
    if channels != c.channels:
        raise NoiseARNodeError(
            f"the latent has {channels} channels, but the NoiseAR prior '{prior.name}' ({prior.variant}) models "
            f"{c.channels}-channel latents; use it with the model family it was trained for")
    if c.positions == "2d":  # own priors with 2-D positions sample any grid of whole patches
        if height % c.patch_size or width % c.patch_size:
            raise NoiseARNodeError(
                f"the latent is {height}x{width}; the NoiseAR prior '{prior.name}' needs sides that are multiples "
                f"of its patch size {c.patch_size} (image sides multiples of {c.patch_size * PIXELS_PER_CELL} px)")
        return Window(0, 0, height, width)
    native = (c.latent_height, c.latent_width)
    if (height, width) == native:
        return Window(0, 0, height, width)
    sizes = (f"the NoiseAR prior '{prior.name}' ({prior.variant}) is native to latent {native[0]}x{native[1]} "
             f"({_pixels(*native)}); this latent is {height}x{width} ({_pixels(height, width)})")
    if size_mode == "native only":
        raise NoiseARNodeError(
            f"{sizes}. Set the latent to {_pixels(*native)}, or set size_mode to '{SIZE_MODES[1]}' for larger "
            f"latents (the prior fills the centred {_pixels(*native)} window, the rest stays Gaussian noise)")
    if size_mode != SIZE_MODES[1]:
        raise NoiseARNodeError(f"size_mode must be one of {SIZE_MODES}, got {size_mode!r}")
    if height < native[0] or width < native[1]:
        raise NoiseARNodeError(
            f"{sizes}. '{SIZE_MODES[1]}' needs a latent at least {native[0]}x{native[1]} in both sides; "
            f"use {_pixels(*native)} or larger")
    top, left = (height - native[0]) // 2, (width - native[1]) // 2
    warning = (f"NoiseAR WARNING: {sizes}. Only the centred {_pixels(*native)} window (latent rows {top}-"
               f"{top + native[0] - 1}, columns {left}-{left + native[1] - 1}) holds NoiseAR noise; the border is "
               f"plain Gaussian noise with unit std, unlike the prior's.")
    return Window(top, left, native[0], native[1], warning)


def gaussian_draws(latent: dict[str, Any], seed: int, upstream: Noise | None) -> torch.Tensor:
    """eps [B,C,H,W] fp32 on the CPU: the upstream NOISE's draws for ``latent``, else RandomNoise's for ``seed``."""
    samples = latent["samples"]
    if upstream is not None:
        eps = upstream.generate_noise(latent)
        if tuple(eps.shape) != tuple(samples.shape):
            raise NoiseARNodeError(
                f"the upstream NOISE gave shape {list(eps.shape)} for a latent of shape {list(samples.shape)}")
    else:
        eps = host.prepare_noise(samples, seed, latent.get("batch_index"))
    return eps.to("cpu", torch.float32)


class NoiseARNoise:
    """NOISE drawn by a NoiseAR prior from ComfyUI's own Gaussian draws.

    eps = ComfyUI's prepare_noise(latent, seed, batch_index) (exactly RandomNoise's noise for the
    seed), or the draws of an upstream NOISE, whose seed is then carried. The prior turns eps into
    mu + temperature * std * eps per patch, one batch item at a time.
    """

    def __init__(self, prior: NoiseARPrior, conditioning: list, seed: int, temperature: float, size_mode: str,
                 upstream: Noise | None = None) -> None:
        self.prior, self.temperature, self.size_mode, self.upstream = prior, temperature, size_mode, upstream
        # refuse a wrong width early; warn now (console and on the node) about a prompt cut for the prior
        self.text, self.text_mask, self.text_warning = text_from_conditioning(conditioning, prior)
        if self.text_warning:
            log.warning(self.text_warning)
            host.show_on_node(self.text_warning)
        self.seed = int(upstream.seed if upstream is not None else seed)
        self.warning: str | None = self.text_warning  # text and size warnings of the last draw
        self._last: tuple[tuple, torch.Tensor] | None = None  # (latent key, noise): preview and sampler share a draw

    def generate_noise(self, latent: dict[str, Any]) -> torch.Tensor:
        """Noise of ``latent["samples"]``'s exact shape, unit-variance space, fp32 on the intermediate device."""
        samples = latent["samples"]
        key = (tuple(samples.shape), tuple(latent.get("batch_index") or ()))
        if self._last is None or self._last[0] != key:
            window = prior_window(self.prior, tuple(samples.shape), self.size_mode)
            self.warning = "\n".join(filter(None, [self.text_warning, window.warning])) or None
            if window.warning:
                log.warning(window.warning)
            self._last = (key, self._draw(gaussian_draws(latent, self.seed, self.upstream), window))
        return self._last[1].to(host.intermediate_device())

    def _draw(self, eps: torch.Tensor, window: Window) -> torch.Tensor:
        rows = slice(window.top, window.top + window.height)
        cols = slice(window.left, window.left + window.width)
        patch = self.prior.config.patch_size
        bar = host.progress_bar(eps.shape[0] * (window.height // patch) * (window.width // patch))

        def callback(done: int, total: int) -> None:
            host.throw_if_interrupted()
            bar.update_absolute(done, total)

        noise = eps.clone()
        noise[:, :, rows, cols] = self.prior.draw(self.text, eps[:, :, rows, cols], self.temperature, self.text_mask,
                                                  callback)
        return noise


class BlendedNoise:
    """NOISE mixing a NoiseAR NOISE with a Gaussian NOISE (see noisear.mixing.blend); carries the Gaussian seed."""

    def __init__(self, noisear_noise: Noise, gaussian_noise: Noise, strength: float, mode: str,
                 renormalize: bool) -> None:
        self.noisear_noise, self.gaussian_noise = noisear_noise, gaussian_noise
        self.strength, self.mode, self.renormalize = strength, mode, renormalize
        self.seed = int(gaussian_noise.seed)

    @property
    def warning(self) -> str | None:
        return getattr(self.noisear_noise, "warning", None)

    def generate_noise(self, latent: dict[str, Any]) -> torch.Tensor:
        x = self.noisear_noise.generate_noise(latent)
        eta = self.gaussian_noise.generate_noise(latent)
        return blend(x.float(), eta.float(), self.strength, self.mode, self.renormalize).to(host.intermediate_device())


def start_latent(model: Any, noise: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """The LATENT that makes KSamplerAdvanced (add_noise disable, start_at_step 0) start where a NOISE would.

    SamplerCustomAdvanced starts EPS / V-prediction models at x = noise*sqrt(1+sigma_max^2) +
    process_in(latent) (latent term only when non-zero); KSamplerAdvanced without noise starts at
    process_in(LATENT). So LATENT = process_out(noise*sqrt(1+sigma_max^2) + process_in(latent)).
    """
    sampling, latent_format = host.model_sampling(model), host.latent_format(model)
    if host.is_flow(sampling):
        raise NoiseARNodeError(
            "this MODEL is a flow model (SD3, Flux, ...): it starts from sigma*noise + (1-sigma)*latent with "
            "sigma = 1, so no start LATENT can carry the noise. Use NoiseAR Noise -> SamplerCustomAdvanced instead")
    channels = getattr(latent_format, "latent_channels", samples.shape[1])
    if channels != samples.shape[1]:
        raise NoiseARNodeError(f"the latent has {samples.shape[1]} channels, the MODEL expects {channels}")
    start = noise.float() * math.sqrt(1.0 + float(sampling.sigma_max) ** 2)
    if torch.count_nonzero(samples) > 0:
        start = start + latent_format.process_in(samples.to(start))
    return latent_format.process_out(start)
