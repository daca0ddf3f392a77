"""NoiseAR KSampler: ComfyUI's KSampler / KSamplerAdvanced, started from NoiseAR noise.

The noise is exactly NoiseAR Noise's for the same inputs (eps = ComfyUI's draw for the seed and the
latent's batch_index, turned into mu + temperature * std * eps by the prior), and sampling is
ComfyUI's own common_ksampler with that noise (host.common_ksampler). So the result equals
NoiseAR Noise -> SamplerCustomAdvanced (CFGGuider, KSamplerSelect, BasicScheduler) for the same seed,
sampler, scheduler, steps and cfg; ancestral/SDE samplers' per-step noise uses the seed, as in KSampler.

Where the prior is refused (docs/comfyui.md, "NoiseAR KSampler"): the prior models the noise a
text-to-image run STARTS from (sigma_max, the top of the schedule). With denoise < 1, or
start_at_step > 0 with add_noise enable, ComfyUI instead adds the noise at a lower sigma to an
existing latent (img2img, a later stage): a use the prior was never trained for, where its std of
about temperature (0.5) leaves the latent under-noised for that sigma. Those runs stop with an error
naming the way out rather than quietly doing something else.
"""
from __future__ import annotations

from typing import Any

from . import host
from .noise import NoiseARNoise
from .prior import NoiseARNodeError, NoiseARPrior

FULL_DENOISE = 0.9999  # ComfyUI's KSampler uses the full schedule above this denoise


def prior_conditioning(positive: list, prior_text: list | None) -> list:
    """The CONDITIONING the prior reads: prior_text when connected, else the sampler's positive."""
    return positive if prior_text is None else prior_text


def check_start(denoise: float, start_at_step: int) -> None:
    """Refuse runs that would add the prior's noise below the top of the schedule (see the module doc)."""
    if not denoise > FULL_DENOISE:  # also NaN
        raise NoiseARNodeError(
            f"NoiseAR KSampler needs denoise 1.0, got {denoise}: the NoiseAR prior learned the noise a "
            "text-to-image run starts from, not the partial noise of image-to-image (denoise < 1). For "
            "img2img or a hires-fix pass use ComfyUI's KSampler")
    if start_at_step != 0:
        raise NoiseARNodeError(
            f"NoiseAR KSampler (Advanced) with add_noise enable needs start_at_step 0, got {start_at_step}: the "
            "NoiseAR prior learned the noise a run starts from, not noise added part-way down the schedule. "
            "For a later stage (e.g. the refiner of a base + refiner graph) set add_noise to disable, or use "
            "KSamplerAdvanced")


def sample(model: Any, noisear_model: NoiseARPrior | None, prior_text: list, seed: int, temperature: float,
           size_mode: str, steps: int, cfg: float, sampler_name: str, scheduler: str, positive: list, negative: list,
           latent_image: dict[str, Any], *, add_noise: bool = True, denoise: float = 1.0, start_at_step: int = 0,
           end_at_step: int | None = None, force_full_denoise: bool = False) -> dict[str, Any]:
    """The sampled LATENT; ``prior_text`` is the conditioning the prior reads (see prior_conditioning).

    add_noise False is KSamplerAdvanced's add_noise disable: no noise at all, the prior is not used.
    """
    noise = None
    if add_noise:
        check_start(denoise, start_at_step)
        noise = NoiseARNoise(noisear_model, prior_text, seed, temperature, size_mode)
    return host.common_ksampler(model, noise, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                latent_image, denoise=denoise, start_step=start_at_step, last_step=end_at_step,
                                force_full_denoise=force_full_denoise)
