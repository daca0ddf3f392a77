"""The ComfyUI node classes (classic API). Thin: the work is in prior, noise, preview and noisear."""

from __future__ import annotations

import os
from typing import Any

from noisear.mixing import MODES

from . import host, ksampler
from .collector import DatasetCollectorNode
from .golden import GoldenNoiseNode
from .noise import SIZE_MODES, TEMPERATURE_RANGE, BlendedNoise, NoiseARNoise, size_mode_problem, start_latent
from .preview import channel_stats, noise_to_image
from .prior import CATEGORY, DEVICES, DTYPES, NoiseARNodeError, NoiseARPrior, checkpoint_problem, device_problem, load_prior
from .text_encode import NoiseARTextEncodeNode

PRIOR_INPUT = ("NOISEAR_MODEL", {"tooltip": "A NoiseAR prior from the NoiseAR Loader."})
POSITIVE_INPUT = (
    "CONDITIONING",
    {
        "tooltip": (
            "The prompt for the prior; its first entry is used and broadcast over the batch. Best: NoiseAR Text "
            "Encode's prior_text, exactly the embedding the prior was trained on. A CLIPTextEncode conditioning works "
            "too, but weight syntax such as (word:1.2) changes what the prior sees, and of a prompt over 75 tokens "
            "published priors read the first 77 tokens (a warning says so). SDXL / DreamShaper-XL priors need SDXL "
            "conditioning (2048-d), Hunyuan-DiT priors the 1024-d BERT stream."
        )
    },
)
SEED_INPUT = (
    "INT",
    {
        "default": 0,
        "min": 0,
        "max": 0xFFFFFFFFFFFFFFFF,
        "control_after_generate": True,
        "tooltip": "Seed of the Gaussian draws eps; the same seed gives the very eps RandomNoise "
        "would. Ignored when a noise input is connected.",
    },
)
TEMPERATURE_INPUT = (
    "FLOAT",
    {
        "default": 0.5,
        "min": TEMPERATURE_RANGE[0],
        "max": TEMPERATURE_RANGE[1],
        "step": 0.01,
        "tooltip": "Scale of the prior's standard deviation: noise = mu + temperature * std "
        "* eps per patch. 0.5 as published; 0 gives the mean only.",
    },
)
SIZE_MODE_INPUT = (
    list(SIZE_MODES),
    {
        "default": SIZE_MODES[0],
        "tooltip": (
            "'any size': every latent size. Published priors (native 1024 x 1024 px) decode other sizes with a "
            "sliding window: each 32 x 32-cell patch is predicted from the native 4 x 4-patch window that contains "
            "it; the prior never saw those positions in training (see docs/comfyui.md). 'native only': refuse "
            "every size but the prior's native one. Own priors with 2-D positions decode any size directly."
        ),
    },
)
UPSTREAM_NOISE_INPUT = (
    "NOISE",
    {
        "tooltip": (
            "Optional: a NOISE (e.g. RandomNoise) whose draws become eps instead of noise_seed's; its seed is "
            "carried on for ancestral/SDE samplers."
        )
    },
)
LATENT_INPUT = (
    "LATENT",
    {"tooltip": "The latent to start from (e.g. EmptyLatentImage); gives the shape, batch and batch_index of the noise."},
)


def _common_inputs() -> dict[str, Any]:
    return {
        "noisear_model": PRIOR_INPUT,
        "positive": POSITIVE_INPUT,
        "noise_seed": SEED_INPUT,
        "temperature": TEMPERATURE_INPUT,
        "size_mode": SIZE_MODE_INPUT,
    }


class NoiseARLoader:
    DESCRIPTION = (
        "Loads a NoiseAR prior (.safetensors or the published model.pth) from models/noisear and "
        "shows which variant it is. The weights stay on the CPU and visit the GPU only while "
        "noise is drawn, so the prior holds no VRAM while the diffusion model samples."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("NOISEAR_MODEL", "STRING")
    RETURN_NAMES = ("noisear_model", "info")
    OUTPUT_TOOLTIPS = (
        "The loaded prior, for NoiseAR Noise / NoiseAR Latent.",
        "The detected variant (SDXL, Hunyuan-DiT or own) and the prior's shapes.",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "ckpt_name": (
                    host.checkpoint_names(),
                    {
                        "tooltip": (
                            "Checkpoint in models/noisear: sdxl_and_dreamshaper(_dpo) for SDXL and DreamShaper-XL, "
                            "dit(_dpo) for Hunyuan-DiT v1.2."
                        )
                    },
                ),
                "device": (
                    list(DEVICES),
                    {
                        "default": "auto",
                        "tooltip": ("Where noise is drawn: auto = ComfyUI's device (the GPU if there is one), cpu, or gpu."),
                    },
                ),
                "dtype": (
                    list(DTYPES),
                    {
                        "default": "fp32",
                        "tooltip": (
                            "Precision of the prior. fp32 (default, as published): the same noise on every device. bf16, "
                            "on every device including the CPU: reads half the bytes, so drawing is about 1.4-2x faster, "
                            "but the noise differs slightly from fp32 (docs/comfyui.md has the figures). fp16: GPU only."
                        ),
                    },
                ),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, ckpt_name: str, device: str, dtype: str) -> bool | str:
        """Refuse a file that is not in the list (ComfyUI skips its own list check for an input named here:
        this says where files go and how to get them) and device/dtype pairs this host cannot run (both
        checked again when loading)."""
        return checkpoint_problem(ckpt_name) or device_problem(device, dtype) or True

    @classmethod
    def IS_CHANGED(cls, ckpt_name: str, device: str, dtype: str) -> str:
        """Re-run when the file on disk changes."""
        try:
            path = host.checkpoint_path(ckpt_name)
            return f"{path}:{os.path.getmtime(path)}:{device}:{dtype}"
        except FileNotFoundError:
            return f"missing:{ckpt_name}"

    def load(self, ckpt_name: str, device: str, dtype: str) -> dict[str, Any]:
        prior = load_prior(ckpt_name, device, dtype)
        info = prior.describe()
        return {"ui": {"text": (info,)}, "result": (prior, info)}


class NoiseARNoiseNode:
    DESCRIPTION = (
        "NoiseAR noise for SamplerCustomAdvanced: the prior turns ComfyUI's Gaussian draws for the "
        "seed into prompt-conditioned initial noise. Use with an empty latent; works with every "
        "sampler, ancestral/SDE ones stay seeded."
    )
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = ("NOISE",)
    RETURN_NAMES = ("noise",)
    OUTPUT_TOOLTIPS = (
        "NOISE for SamplerCustomAdvanced (or NoiseAR Blend / NoiseAR Preview); drawn when the "
        "sampler asks, in unit-variance space, with the latent's exact shape.",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": _common_inputs(), "optional": {"noise": UPSTREAM_NOISE_INPUT}}

    @classmethod
    def VALIDATE_INPUTS(cls, size_mode: str) -> bool | str:
        """Before the run: a size_mode this version takes (old workflows' centre mode is read as 'any size')."""
        return size_mode_problem(size_mode) or True

    def make(
        self, noisear_model: NoiseARPrior, positive: list, noise_seed: int, temperature: float, size_mode: str, noise: Any = None
    ) -> tuple[NoiseARNoise]:
        return (NoiseARNoise(noisear_model, positive, noise_seed, temperature, size_mode, noise),)


class NoiseARLatentNode:
    DESCRIPTION = (
        "NoiseAR noise as a start LATENT for KSamplerAdvanced with add_noise = disable and "
        "start_at_step = 0: the noise is scaled with the MODEL's sigma_max and latent format so "
        "sampling starts from exactly the state NoiseAR Noise + SamplerCustomAdvanced gives. "
        "Not for flow models (SD3, Flux): use NoiseAR Noise there."
    )
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = ("LATENT", "STRING")
    RETURN_NAMES = ("latent", "info")
    OUTPUT_TOOLTIPS = (
        "Start latent for KSamplerAdvanced (add_noise disable, start_at_step 0, any scheduler but "
        "ddim_uniform, which does not start at sigma_max); keeps batch_index.",
        "What was drawn: the decoding used (native, sliding window, 2-D prior) and per-channel statistics.",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        required = {
            "model": ("MODEL", {"tooltip": "The diffusion model that will sample (gives sigma_max and the latent format)."})
        }
        required.update(_common_inputs())
        required["latent_image"] = LATENT_INPUT
        return {"required": required, "optional": {"noise": UPSTREAM_NOISE_INPUT}}

    VALIDATE_INPUTS = NoiseARNoiseNode.VALIDATE_INPUTS

    def make(
        self,
        model: Any,
        noisear_model: NoiseARPrior,
        positive: list,
        noise_seed: int,
        temperature: float,
        size_mode: str,
        latent_image: dict,
        noise: Any = None,
    ) -> dict[str, Any]:
        if "noise_mask" in latent_image:
            raise NoiseARNodeError(
                "NoiseAR Latent does not support latents with a noise_mask (inpainting); use "
                "NoiseAR Noise with SamplerCustomAdvanced, which keeps the mask"
            )
        source = NoiseARNoise(noisear_model, positive, noise_seed, temperature, size_mode, noise, "NoiseAR Latent")
        drawn = source.generate_noise(latent_image)
        samples = start_latent(model, drawn, latent_image["samples"]).to(host.intermediate_device())
        info = "\n".join(filter(None, [source.info, channel_stats(drawn)]))
        latent = {key: value for key, value in latent_image.items() if key != "samples"}
        latent["samples"] = samples
        return {"ui": {"text": (info,)}, "result": (latent, info)}


class NoiseARBlendNode:
    DESCRIPTION = (
        "Training-free mix of NoiseAR noise with Gaussian noise ('AR prior blending'). strength 0 "
        "gives the Gaussian noise exactly, 1 the NoiseAR noise exactly (with renormalize off)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = ("NOISE",)
    RETURN_NAMES = ("noise",)
    OUTPUT_TOOLTIPS = ("The mixed NOISE for SamplerCustomAdvanced; carries the Gaussian input's seed.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "noisear_noise": ("NOISE", {"tooltip": "NoiseAR noise (from NoiseAR Noise)."}),
                "gaussian_noise": (
                    "NOISE",
                    {
                        "tooltip": "Gaussian noise (e.g. RandomNoise) with a seed other than the "
                        "NoiseAR Noise's: with the same seed both share their draws and "
                        "the mix is no longer variance-preserving. Its seed is carried on."
                    },
                ),
                "strength": (
                    "FLOAT",
                    {
                        "default": 0.5,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "Share of the NoiseAR noise: 0 = all Gaussian, 1 = all NoiseAR.",
                    },
                ),
                "mode": (
                    list(MODES),
                    {
                        "default": MODES[0],
                        "tooltip": (
                            "linear: a*x_AR + (1-a)*eta (lowers the variance in between); variance-preserving: "
                            "sin(a*pi/2)*x_AR + cos(a*pi/2)*eta; slerp: spherical interpolation per image."
                        ),
                    },
                ),
                "renormalize": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": ("Rescale each image's mixed noise to unit std (this also undoes the temperature)."),
                    },
                ),
            }
        }

    def make(self, noisear_noise: Any, gaussian_noise: Any, strength: float, mode: str, renormalize: bool) -> tuple[BlendedNoise]:
        return (BlendedNoise(noisear_noise, gaussian_noise, strength, mode, renormalize),)


class NoiseARPreviewNode:
    DESCRIPTION = (
        "Shows the noise a sampler will start from: channels mapped to colours on a fixed scale "
        "(lower std looks greyer; temperature 0.5 halves it) and per-channel mean/std."
    )
    CATEGORY = CATEGORY
    FUNCTION = "preview"
    OUTPUT_NODE = True
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("image", "stats")
    OUTPUT_TOOLTIPS = (
        "The noise as an image: latent channel c drives colour c mod 3, 0.5 + value/6, each latent cell 4x4 pixels.",
        "The decoding used (for NoiseAR noise) and the mean and std of the noise, overall and per channel.",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "noise": ("NOISE", {"tooltip": "The NOISE to look at (NoiseAR Noise, NoiseAR Blend, RandomNoise, ...)."}),
                "latent_image": LATENT_INPUT,
            }
        }

    def preview(self, noise: Any, latent_image: dict) -> dict[str, Any]:
        drawn = noise.generate_noise(latent_image)
        image = noise_to_image(drawn)
        stats = "\n".join(filter(None, [getattr(noise, "info", None), channel_stats(drawn)]))
        return {"ui": {"images": host.save_temp_images(image, "noisear_preview"), "text": (stats,)}, "result": (image, stats)}


# NoiseAR KSampler (issue 14): ComfyUI's KSampler / KSamplerAdvanced inputs, in their order, then the prior's.
def _ksampler_inputs(seed_name: str) -> dict[str, Any]:
    """KSampler's sampling inputs with its defaults; the seed input is named ``seed_name``."""
    return {
        "model": ("MODEL", {"tooltip": "The model used for denoising the input latent."}),
        seed_name: (
            "INT",
            {
                "default": 0,
                "min": 0,
                "max": 0xFFFFFFFFFFFFFFFF,
                "control_after_generate": True,
                "tooltip": "The random seed: ComfyUI's Gaussian draws for it (what KSampler would add) "
                "are the eps the prior turns into NoiseAR noise; ancestral/SDE samplers' "
                "per-step noise uses it too, as in KSampler.",
            },
        ),
        "steps": (
            "INT",
            {"default": 20, "min": 1, "max": 10000, "tooltip": "The number of steps used in the denoising process."},
        ),
        "cfg": (
            "FLOAT",
            {
                "default": 8.0,
                "min": 0.0,
                "max": 100.0,
                "step": 0.1,
                "round": 0.01,
                "tooltip": "The Classifier-Free Guidance scale (as in KSampler).",
            },
        ),
        "sampler_name": (host.sampler_names(), {"tooltip": "The sampling algorithm (as in KSampler)."}),
        "scheduler": (host.scheduler_names(), {"tooltip": "How the noise level falls over the steps (as in KSampler)."}),
        "positive": (
            "CONDITIONING",
            {
                "tooltip": (
                    "The conditioning describing what you want in the image; the prior reads it too unless prior_text is "
                    "connected."
                )
            },
        ),
        "negative": ("CONDITIONING", {"tooltip": "The conditioning describing what you want to exclude."}),
        "latent_image": (
            "LATENT",
            {
                "tooltip": "The latent to denoise: an empty latent (EmptyLatentImage); gives "
                "the shape, batch and batch_index of the noise."
            },
        ),
    }


def _prior_inputs() -> dict[str, Any]:
    """The NoiseAR Noise node's own prior inputs (its size behaviour included)."""
    return {"noisear_model": PRIOR_INPUT, "temperature": TEMPERATURE_INPUT, "size_mode": SIZE_MODE_INPUT}


PRIOR_TEXT_INPUT = (
    "CONDITIONING",
    {
        "tooltip": (
            "Optional: NoiseAR Text Encode's prior_text, exactly the embedding the prior was trained on; the prior then "
            "reads it instead of positive (the sampler keeps positive). Without it the prior reads positive "
            "(CLIPTextEncode: weight syntax changes what the prior sees; of prompts over 75 tokens it reads the first "
            "77 tokens, with a warning)."
        )
    },
)


class NoiseARKSamplerNode:
    DESCRIPTION = (
        "KSampler that starts from NoiseAR noise: the same inputs and result as ComfyUI's KSampler, "
        "except that the seed's Gaussian noise is turned into prompt-conditioned noise by the prior "
        "first (exactly NoiseAR Noise -> SamplerCustomAdvanced for the same seed, sampler, scheduler, "
        "steps and cfg). Text-to-image only: denoise must be 1."
    )
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The denoised latent.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        required = _ksampler_inputs("seed")
        required["denoise"] = (
            "FLOAT",
            {
                "default": 1.0,
                "min": 0.0,
                "max": 1.0,
                "step": 0.01,
                "tooltip": (
                    "Must be 1 (full text-to-image): the prior learned the noise sampling starts from, not the partial "
                    "noise of image-to-image; lower values stop with an error. Use KSampler for img2img."
                ),
            },
        )
        required.update(_prior_inputs())
        return {"required": required, "optional": {"prior_text": PRIOR_TEXT_INPUT}}

    VALIDATE_INPUTS = NoiseARNoiseNode.VALIDATE_INPUTS

    def sample(
        self,
        model: Any,
        seed: int,
        steps: int,
        cfg: float,
        sampler_name: str,
        scheduler: str,
        positive: list,
        negative: list,
        latent_image: dict,
        denoise: float,
        noisear_model: NoiseARPrior,
        temperature: float,
        size_mode: str,
        prior_text: list | None = None,
    ) -> tuple[dict]:
        return (
            ksampler.sample(
                model,
                noisear_model,
                ksampler.prior_conditioning(positive, prior_text),
                seed,
                temperature,
                size_mode,
                steps,
                cfg,
                sampler_name,
                scheduler,
                positive,
                negative,
                latent_image,
                denoise=denoise,
            ),
        )


class NoiseARKSamplerAdvancedNode:
    DESCRIPTION = (
        "KSamplerAdvanced that starts from NoiseAR noise, for multi-stage graphs (base + refiner): "
        "add_noise enable draws NoiseAR noise for noise_seed (start_at_step must be 0); add_noise "
        "disable adds no noise and leaves the prior unused, exactly like KSamplerAdvanced."
    )
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The (partly) denoised latent.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        inputs = _ksampler_inputs("noise_seed")
        required = {
            "model": inputs.pop("model"),
            "add_noise": (
                ["enable", "disable"],
                {
                    "tooltip": (
                        "enable: start from NoiseAR noise for noise_seed (needs start_at_step 0). disable: add no noise, the "
                        "prior is not used (a later stage that continues a latent with leftover noise)."
                    )
                },
            ),
        }
        required.update(inputs)
        required.update(
            {
                "start_at_step": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 10000,
                        "tooltip": (
                            "First step to run. With add_noise enable it must be 0 (the prior's noise is a start noise)."
                        ),
                    },
                ),
                "end_at_step": (
                    "INT",
                    {"default": 10000, "min": 0, "max": 10000, "tooltip": "Step to stop at (e.g. where the refiner takes over)."},
                ),
                "return_with_leftover_noise": (
                    ["disable", "enable"],
                    {
                        "tooltip": (
                            "enable: stop at end_at_step with the noise left in, for the next stage; disable: denoise fully."
                        )
                    },
                ),
            }
        )
        required.update(_prior_inputs())
        return {"required": required, "optional": {"prior_text": PRIOR_TEXT_INPUT}}

    VALIDATE_INPUTS = NoiseARNoiseNode.VALIDATE_INPUTS

    def sample(
        self,
        model: Any,
        add_noise: str,
        noise_seed: int,
        steps: int,
        cfg: float,
        sampler_name: str,
        scheduler: str,
        positive: list,
        negative: list,
        latent_image: dict,
        start_at_step: int,
        end_at_step: int,
        return_with_leftover_noise: str,
        noisear_model: NoiseARPrior,
        temperature: float,
        size_mode: str,
        prior_text: list | None = None,
    ) -> tuple[dict]:
        return (
            ksampler.sample(
                model,
                noisear_model,
                ksampler.prior_conditioning(positive, prior_text),
                noise_seed,
                temperature,
                size_mode,
                steps,
                cfg,
                sampler_name,
                scheduler,
                positive,
                negative,
                latent_image,
                add_noise=add_noise == "enable",
                start_at_step=start_at_step,
                end_at_step=end_at_step,
                force_full_denoise=return_with_leftover_noise != "enable",
                node="NoiseAR KSampler (Advanced)",
            ),
        )


NODE_CLASS_MAPPINGS = {
    "NoiseARLoader": NoiseARLoader,
    "NoiseARNoise": NoiseARNoiseNode,
    "NoiseARLatent": NoiseARLatentNode,
    "NoiseARBlend": NoiseARBlendNode,
    "NoiseARPreview": NoiseARPreviewNode,
    "NoiseARGoldenNoise": GoldenNoiseNode,
    "NoiseARDatasetCollector": DatasetCollectorNode,
    "NoiseARTextEncode": NoiseARTextEncodeNode,
    "NoiseARKSampler": NoiseARKSamplerNode,
    "NoiseARKSamplerAdvanced": NoiseARKSamplerAdvancedNode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "NoiseARLoader": "NoiseAR Loader",
    "NoiseARNoise": "NoiseAR Noise",
    "NoiseARLatent": "NoiseAR Latent",
    "NoiseARBlend": "NoiseAR Blend",
    "NoiseARPreview": "NoiseAR Preview",
    "NoiseARGoldenNoise": "NoiseAR Golden Noise",
    "NoiseARDatasetCollector": "NoiseAR Dataset Collector",
    "NoiseARTextEncode": "NoiseAR Text Encode",
    "NoiseARKSampler": "NoiseAR KSampler",
    "NoiseARKSamplerAdvanced": "NoiseAR KSampler (Advanced)",
}
