"""NoiseAR KSampler: ComfyUI's KSampler / KSamplerAdvanced, started from NoiseAR noise.

The noise is exactly NoiseAR Noise's for the same inputs (eps = ComfyUI's draw for the seed and the
latent's batch_index, turned into mu + temperature * std * eps by the prior), and sampling is
ComfyUI's own common_ksampler with that noise (host.common_ksampler). So the result equals
NoiseAR Noise -> SamplerCustomAdvanced (CFGGuider, KSamplerSelect, BasicScheduler) for the same seed,
sampler, scheduler, steps and cfg; ancestral/SDE samplers' per-step noise uses the seed, as in KSampler.

Where the prior is refused (docs/comfyui.md, "NoiseAR KSampler"): the prior models the noise a
text-to-image run STARTS from (the top of the schedule, an empty latent). With denoise < 1, or
start_at_step > 0 with add_noise enable, ComfyUI would instead add that noise at a lower sigma to an
existing latent (img2img, a later stage); with a noise_mask (inpainting) it would re-noise the kept
area with it at every step. The prior was never trained for those, and its std of about the
temperature (0.5) leaves such latents under-noised for their sigma. Those runs stop with an error
naming the way out, rather than quietly doing something the prior does not model.
"""

from __future__ import annotations

from typing import Any

from . import host
from .family import check_model
from .noise import NoiseARNoise
from .prior import NoiseARPrior
from .widgets import NoiseARNodeError

FULL_DENOISE = 0.9999  # ComfyUI's KSampler uses the full schedule above this denoise


def prior_conditioning(positive: list, prior_text: list | None) -> list:
    """The CONDITIONING the prior reads: prior_text when connected, else the sampler's positive."""
    return positive if prior_text is None else prior_text


def check_text_to_image(latent_image: dict[str, Any], denoise: float, start_at_step: int) -> None:
    """Refuse runs that would use the prior's noise other than as a text-to-image start (see the module doc)."""
    if not denoise > FULL_DENOISE:  # also NaN
        raise NoiseARNodeError(
            f"NoiseAR KSampler needs denoise 1.0, got {denoise}: the NoiseAR prior learned the noise a "
            "text-to-image run starts from, not the partial noise of image-to-image (denoise < 1). For "
            "img2img or a hires-fix pass use ComfyUI's KSampler"
        )
    if start_at_step != 0:
        raise NoiseARNodeError(
            f"NoiseAR KSampler (Advanced) with add_noise enable needs start_at_step 0, got {start_at_step}: the "
            "NoiseAR prior learned the noise a run starts from, not noise added part-way down the schedule. "
            "For a later stage (e.g. the refiner of a base + refiner graph) set add_noise to disable, or use "
            "KSamplerAdvanced"
        )
    if "noise_mask" in latent_image:
        raise NoiseARNodeError(
            "NoiseAR KSampler is for text-to-image and does not take a latent with a noise_mask (inpainting): "
            "ComfyUI re-noises the kept area with the start noise at every step, which the NoiseAR prior was "
            "not trained for. Use ComfyUI's KSampler for inpainting"
        )


def sample(
    model: Any,
    noisear_model: NoiseARPrior | None,
    prior_text: list,
    seed: int,
    temperature: float,
    size_mode: str,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: list,
    negative: list,
    latent_image: dict[str, Any],
    *,
    add_noise: bool = True,
    denoise: float = 1.0,
    start_at_step: int = 0,
    end_at_step: int | None = None,
    force_full_denoise: bool = False,
    node: str = "NoiseAR KSampler",
) -> dict[str, Any]:
    """The sampled LATENT; ``prior_text`` is the conditioning the prior reads (see prior_conditioning).

    add_noise False is KSamplerAdvanced's add_noise disable: no noise at all, the prior is not used.
    ``node`` names the node in error messages. A prior of another family than the MODEL's is refused.
    """
    noise = None
    if add_noise:
        check_model(noisear_model, model, node)
        check_text_to_image(latent_image, denoise, start_at_step)
        noise = NoiseARNoise(noisear_model, prior_text, seed, temperature, size_mode, node=node)
    return host.common_ksampler(
        model,
        noise,
        seed,
        steps,
        cfg,
        sampler_name,
        scheduler,
        positive,
        negative,
        latent_image,
        denoise=denoise,
        start_step=start_at_step,
        last_step=end_at_step,
        force_full_denoise=force_full_denoise,
    )
