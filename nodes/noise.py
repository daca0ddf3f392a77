"""NoiseAR noise for ComfyUI: the NOISE objects and the start LATENT for KSamplerAdvanced.

Shapes: latents are [B, C, H, W] images, [B, C, T, H, W] videos (Wan) and [B, C, 1, H, W] images of a
3-D latent format (Qwen-Image); a cell is the family's pixels (8 for most VAEs, 32 for HunyuanImage 2.1, 1 for
ChromaRadiance's pixels). eps are the standard-normal draws ComfyUI would have used; noise is in unit-variance
space, with the latent's shape.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Protocol

import torch

from noisear.config import NoiseARError
from noisear.cost import problem as cost_problem
from noisear.mixing import blend
from noisear.patches import DecodingPlan

from . import host
from .conditioning import text_from_conditioning
from .family import of_prior, prior_side, with_channels
from .prior import NoiseARPrior
from .widgets import (
    SIZE_MODES,
    TEMPERATURE_RANGE,
    NoiseARNodeError,
    number_in_range,
    size_mode_note,
    size_mode_problem,
    size_text,
)

log = logging.getLogger("NoiseAR")
LONG_DRAW_SECONDS = 10.0  # an estimated draw longer than this per item is announced before it starts


class Noise(Protocol):
    """ComfyUI's NOISE: an int seed (also seeds ancestral/SDE steps) and one tensor per latent."""

    seed: int

    def generate_noise(self, latent: dict[str, Any]) -> torch.Tensor: ...


def latent_plan(prior: NoiseARPrior, shape: tuple[int, ...], size_mode: str, node: str) -> DecodingPlan:
    """Check a latent shape ([B,C,H,W], or [B,C,T,H,W]) against the prior; say how its noise is decoded.
    ``size_mode`` is one NoiseARNoise checked when it was made; ``node`` names the NoiseAR node in messages
    (errors inside a NOISE are shown on the sampler that asked for it)."""
    c, family = prior.config, of_prior(prior)
    if len(shape) not in (4, 5):
        raise NoiseARNodeError(
            f"{node}: NoiseAR works on image latents [batch, channels, height, width] and video latents [batch, "
            f"channels, frames, height, width]; got shape {list(shape)}"
        )
    batch, channels, *size = shape
    if batch == 0:
        raise NoiseARNodeError(
            f"{node}: the latent holds no image (batch 0, shape {list(shape)}); give a latent of batch 1 or more "
            f"(e.g. EmptyLatentImage with batch_size 1)"
        )
    if 0 in size:
        raise NoiseARNodeError(
            f"{node}: the latent has shape {list(shape)}: every side must be at least 1 latent cell; give the empty "
            f"latent of the model's family ({family.empty_latent if family is not None else 'EmptyLatentImage'})"
        )
    if channels != c.channels:
        raise NoiseARNodeError(
            f"{node}: the latent {list(shape)} has {channels} channels{with_channels(channels)}, but {prior_side(prior)} "
            f"models {c.channels}-channel latents; use the prior with the model family it was trained for (and that "
            f"family's empty latent node)"
        )
    if c.video and len(size) == 2:
        raise NoiseARNodeError(
            f"{node}: the latent {list(shape)} is an image latent, but {prior_side(prior)} is a video prior: give it a "
            f"video latent [batch, {c.channels}, frames, H, W] ({family.empty_latent if family else 'a video latent node'}"
            f"; one frame is length 1)"
        )
    if not c.video and len(size) == 3 and size[0] != 1:
        raise NoiseARNodeError(
            f"{node}: the latent {list(shape)} is a video of {size[0]} latent frames, but {prior_side(prior)} is an "
            f"image prior: use a video prior of the family, or an image latent"
        )
    size = tuple(size) if c.video else tuple(size[-2:])
    plan = c.plan(*size)
    if size_mode == "native only" and plan.mode != "native" and c.positions == "table":
        raise NoiseARNodeError(
            f"{node}: the NoiseAR prior '{prior.name}' ({prior.variant}) is native to "
            f"{size_text(c.latent_size, family)}; this latent is {size_text(size, family)} and "
            f"size_mode is 'native only'. Set the latent to the native size, or size_mode to '{SIZE_MODES[0]}' "
            f"(sliding-window decoding)"
        )
    return plan


def latent_samples(latent: Any, node: str) -> torch.Tensor:
    """``latent["samples"]``, or NoiseARNodeError naming ``node`` when ``latent`` is not a LATENT."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor):
        raise NoiseARNodeError(
            f"{node}: latent_image is not a LATENT (a dict with a 'samples' tensor), got "
            f"{type(samples if isinstance(latent, dict) else latent).__name__}; connect e.g. EmptyLatentImage"
        )
    return samples


def check_text_batch(embeddings: int, images: int, node: str) -> None:
    """One conditioning serves the whole batch, or there is one per image; anything else is refused."""
    if embeddings not in (1, images):
        raise NoiseARNodeError(
            f"{node}: the positive conditioning holds {embeddings} embeddings (batch {embeddings}) for a latent batch "
            f"of {images} images; give one conditioning (batch 1, used for every image) or one per image "
            f"(batch {images})"
        )


def decoding_info(plan: DecodingPlan, prior: NoiseARPrior) -> str:
    """One line for info/preview: which decoding was used, for which size."""
    return f"NoiseAR decoding: {plan.describe()} for {size_text(plan.size, of_prior(prior))}"


def announce_cost(prior: NoiseARPrior, plan: DecodingPlan, text_tokens: int, batch: int, node: str) -> None:
    """Before a draw: refuse one over the library's bound (LIMITS.draw_*, with its estimate), and announce a long
    one (over LONG_DRAW_SECONDS per item on the drawing device) on the console and under the node's title."""
    device = prior.compute_device().type
    cost = prior.model.draw_cost(plan.size, text_tokens)
    problem = cost_problem(cost, device)
    if problem:
        raise NoiseARNodeError(f"{node}: {problem}")
    if cost.seconds(device) > LONG_DRAW_SECONDS:
        note = f"{node}: drawing {batch} item{'s' if batch > 1 else ''}, each {cost.describe(device)}"
        log.warning(note)
        host.show_on_node(note)


def gaussian_draws(latent: dict[str, Any], seed: int, upstream: Noise | None) -> torch.Tensor:
    """eps [B,C,H,W] fp32 on the CPU: the upstream NOISE's draws for ``latent``, else RandomNoise's for ``seed``."""
    samples = latent["samples"]
    if upstream is not None:
        eps = upstream.generate_noise(latent)
        if tuple(eps.shape) != tuple(samples.shape):
            raise NoiseARNodeError(f"the upstream NOISE gave shape {list(eps.shape)} for a latent of shape {list(samples.shape)}")
    else:
        eps = host.prepare_noise(samples, seed, latent.get("batch_index"))
    return eps.to("cpu", torch.float32)


class NoiseARNoise:
    """NOISE drawn by a NoiseAR prior from ComfyUI's own Gaussian draws.

    eps = ComfyUI's prepare_noise(latent, seed, batch_index) (exactly RandomNoise's noise for the
    seed), or the draws of an upstream NOISE, whose seed is then carried. The prior turns eps into
    mu + temperature * std * eps per patch, one batch item at a time.
    """

    def __init__(
        self,
        prior: NoiseARPrior,
        conditioning: list,
        seed: int,
        temperature: float,
        size_mode: str,
        upstream: Noise | None = None,
        node: str = "NoiseAR Noise",
    ) -> None:
        problem = size_mode_problem(size_mode)
        if problem:
            raise NoiseARNodeError(f"{node}: {problem}")
        self.temperature = number_in_range(node, "temperature", temperature, *TEMPERATURE_RANGE)
        self.prior, self.size_mode, self.upstream = prior, size_mode, upstream
        self.node = node
        # refuse a wrong width early; warn now (console and on the node) about a prompt cut for the prior, padding
        # read as text, and a retired size_mode
        self.text, self.text_mask, self.text_warning = text_from_conditioning(conditioning, prior, node)
        self.note = size_mode_note(size_mode)
        self.warning = "\n".join(filter(None, [self.text_warning, self.note])) or None
        if self.warning:
            log.warning(self.warning)
            host.show_on_node(self.warning)
        self.seed = int(upstream.seed if upstream is not None else seed)
        self.info: str | None = self.warning  # of the last draw: the decoding used, then the warnings
        self._last: tuple[tuple, torch.Tensor] | None = None  # (latent key, noise): preview and sampler share a draw

    def generate_noise(self, latent: dict[str, Any]) -> torch.Tensor:
        """Noise of ``latent["samples"]``'s exact shape, unit-variance space, fp32 on the intermediate device."""
        samples = latent_samples(latent, self.node)
        key = (tuple(samples.shape), tuple(latent.get("batch_index") or ()))
        if self._last is None or self._last[0] != key:
            plan = latent_plan(self.prior, tuple(samples.shape), self.size_mode, self.node)
            check_text_batch(self.text.shape[0], samples.shape[0], self.node)
            log.info(decoding_info(plan, self.prior))
            self.info = "\n".join(filter(None, [decoding_info(plan, self.prior), self.warning]))
            announce_cost(self.prior, plan, self.text_tokens, samples.shape[0], self.node)
            self._last = (key, self._draw(gaussian_draws(latent, self.seed, self.upstream), plan))
        return self._last[1].to(host.intermediate_device())

    @property
    def text_tokens(self) -> int:
        """Tokens the prior reads: those some item attends to (padding is dropped before the network)."""
        return self.text.shape[1] if self.text_mask is None else int(self.text_mask.any(dim=0).sum())

    def _draw(self, eps: torch.Tensor, plan: DecodingPlan) -> torch.Tensor:
        bar = host.progress_bar(eps.shape[0] * plan.patches)

        def callback(done: int, total: int) -> None:
            host.throw_if_interrupted()
            bar.update_absolute(done, total)

        try:
            return self.prior.draw(self.text, eps, self.temperature, self.text_mask, callback)
        except NoiseARError as err:  # the library's refusal (e.g. a prompt over the prior's text limit), named by node
            raise NoiseARNodeError(f"{self.node}: {err}") from None


class BlendedNoise:
    """NOISE mixing a NoiseAR NOISE with a Gaussian NOISE (see noisear.mixing.blend); carries the Gaussian seed."""

    def __init__(self, noisear_noise: Noise, gaussian_noise: Noise, strength: float, mode: str, renormalize: bool) -> None:
        self.noisear_noise, self.gaussian_noise = noisear_noise, gaussian_noise
        self.strength = number_in_range("NoiseAR Blend", "strength", strength, 0.0, 1.0)
        self.mode, self.renormalize = mode, renormalize
        self.seed = int(gaussian_noise.seed)

    @property
    def info(self) -> str | None:
        return getattr(self.noisear_noise, "info", None)

    @property
    def prior(self) -> NoiseARPrior | None:
        """The NoiseAR input's prior (checked against a MODEL downstream), if it has one."""
        return getattr(self.noisear_noise, "prior", None)

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
            "NoiseAR Latent: this MODEL is a flow model (SD3, Flux, Chroma, Lumina2, Qwen-Image, HunyuanImage, Wan, ...): "
            "it starts from sigma*noise + (1-sigma)*latent with sigma = 1, so no start LATENT can carry the noise. "
            "Use NoiseAR KSampler (in place of KSampler), or NoiseAR Noise -> SamplerCustomAdvanced instead"
        )
    channels = getattr(latent_format, "latent_channels", samples.shape[1])
    if channels != samples.shape[1]:
        raise NoiseARNodeError(f"the latent has {samples.shape[1]} channels, the MODEL expects {channels}")
    start = noise.float() * math.sqrt(1.0 + float(sampling.sigma_max) ** 2)
    if torch.count_nonzero(samples) > 0:
        start = start + latent_format.process_in(samples.to(start))
    return latent_format.process_out(start)
