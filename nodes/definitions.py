"""Every NoiseAR node class (ComfyUI's classic API) and the one table that registers them with their display names.

Thin: a class declares its inputs and outputs and hands the values to the logic (prior, noise, preview,
golden, collector, text_encode, ksampler and noisear); shared input specs and number checks are in widgets.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from noisear.golden import GoldenConfig
from noisear.mixing import MODES
from noisear.train.collect import Reward
from noisear.train.data import SHARD_BYTES

from . import collector, host, ksampler, text_encode
from .compare_grid import compare_grid
from .family import check_model
from .golden import GOLDEN_NODE, GoldenNoise
from .noise import BlendedNoise, NoiseARNoise, latent_samples, start_latent
from .preview import channel_stats, noise_to_image
from .prior import DEVICES, DTYPES, NoiseARPrior, checkpoint_identity, checkpoint_problem, load_prior
from .widgets import (
    CATEGORY,
    CFG_RANGE,
    LATENT_INPUT,
    PRIOR_TEXT_INPUT,
    SEED_MAX,
    UPSTREAM_NOISE_INPUT,
    NoiseARNodeError,
    check_numbers,
    ksampler_inputs,
    noise_inputs,
    number_in_range,
    prior_inputs,
    schedule_inputs,
    size_mode_problem,
)

log = logging.getLogger("NoiseAR")
COLLECTOR_NODE = "NoiseAR Dataset Collector"


class NoiseARLoader:
    DESCRIPTION = (
        "Loads a NoiseAR prior (.safetensors or the published model.pth) from models/noisear and "
        "shows which variant it is and the model family it serves. The weights stay on the CPU and visit the GPU "
        "only while noise is drawn, so the prior holds no VRAM while the diffusion model samples."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("NOISEAR_MODEL", "STRING")
    RETURN_NAMES = ("noisear_model", "info")
    OUTPUT_TOOLTIPS = (
        "The loaded prior, for NoiseAR Noise / NoiseAR Latent.",
        "The detected variant (SDXL, Hunyuan-DiT or own), the model family it serves and the prior's shapes.",
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
                            "on every device including the CPU: reads half the bytes, so drawing is faster, but the noise "
                            "differs slightly from fp32 (figures: docs/testing-and-benchmarks.md). fp16: GPU only."
                        ),
                    },
                ),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, ckpt_name: str) -> bool | str:
        """Refuse a file that is not in the list (ComfyUI skips its own list check for an input named here:
        this says where files go and how to get them). Only ckpt_name is taken: ComfyUI attaches the message
        to every input named here, so naming device and dtype too would show it three times; device/dtype
        pairs this host cannot run are refused when the Loader runs, before any file is read."""
        return checkpoint_problem(ckpt_name) or True

    @classmethod
    def IS_CHANGED(cls, ckpt_name: str, device: str, dtype: str) -> str:
        """Re-run when the file's content may have changed (also when replaced with the same mtime and size)."""
        return f"{checkpoint_identity(ckpt_name)}:{device}:{dtype}"

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
        return {"required": noise_inputs(), "optional": {"noise": UPSTREAM_NOISE_INPUT}}

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
        "Epsilon / v-prediction models only (SDXL, Hunyuan-DiT); not for flow models (SD3, Flux, Chroma, Lumina2, "
        "Qwen-Image, HunyuanImage, Wan): use NoiseAR KSampler or NoiseAR Noise there."
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
        required.update(noise_inputs())
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
        samples = latent_samples(latent_image, "NoiseAR Latent")
        if not torch.isfinite(samples).all():
            raise NoiseARNodeError(
                "NoiseAR Latent: the latent_image holds NaN or infinite values, which would reach the sampler; give "
                "an empty latent (EmptyLatentImage) or a finite one"
            )
        if "noise_mask" in latent_image:
            raise NoiseARNodeError(
                "NoiseAR Latent does not support latents with a noise_mask (inpainting); use "
                "NoiseAR Noise with SamplerCustomAdvanced, which keeps the mask"
            )
        check_model(noisear_model, model, "NoiseAR Latent")
        source = NoiseARNoise(noisear_model, positive, noise_seed, temperature, size_mode, noise, "NoiseAR Latent")
        drawn = source.generate_noise(latent_image)
        samples = start_latent(model, drawn, samples).to(host.intermediate_device())
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


class GoldenNoiseNode:
    DESCRIPTION = (
        "Training-free golden noise (Golden Noise paper's re-denoise step): the seed's Gaussian noise "
        "goes one denoising step down the sampling schedule at cfg_denoise and one inversion step back "
        "at cfg_invert with this MODEL, for epsilon, v-prediction and flow models. On guidance-distilled models "
        "(Flux dev) both steps run at cfg 1 with the conditioning's guidance value set to cfg_denoise, then "
        "cfg_invert. Costs about three model evaluations. Output is unit-variance NOISE for SamplerCustomAdvanced "
        "with an empty latent (image or video)."
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
                        "max": SEED_MAX,
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


class DatasetCollectorNode:
    DESCRIPTION = (
        "Collects a NoiseAR training set for this MODEL: for every prompt line and j < seeds_per_prompt, the "
        "golden noise of RandomNoise's draw for the pair's own seed (see NoiseAR Golden Noise; no starting "
        "noise repeats across prompts) with the prompt's embedding (the text the prior will read, padding left "
        "out), written as dataset shards for `python -m noisear train`, for the MODEL's family (recorded). "
        "Resumable: pairs already in the folder are skipped. Use one folder per latent size (aspect-ratio bucket)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "collect"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("summary",)
    OUTPUT_TOOLTIPS = ("What was written, skipped and rejected, and where.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model to collect golden noise for."}),
                "clip": ("CLIP", {"tooltip": "Its text encoder; each prompt line is encoded like CLIPTextEncode does."}),
                "prompts": ("STRING", {"multiline": True, "default": "", "tooltip": "One prompt per line."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative conditioning for the denoising step's guidance."}),
                "latent_image": (
                    "LATENT",
                    {
                        "tooltip": "An empty latent of the size (and channels) to collect at: the model family's "
                        "empty latent node (EmptyLatentImage, EmptySD3LatentImage, EmptyHunyuanLatentVideo for Wan, "
                        "...); its batch size is ignored."
                    },
                ),
                "seeds_per_prompt": (
                    "INT",
                    {
                        "default": 4,
                        "min": 1,
                        "max": 100000,
                        "tooltip": (
                            "k: starting noises per prompt. Pair (prompt, j) uses its own seed, a hash of (first_seed, prompt, "
                            "j), so no noise repeats across prompts; raising k later adds pairs and keeps the ones written."
                        ),
                    },
                ),
                "first_seed": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 2**53 - 1,
                        "tooltip": (
                            "Salt of the seed hash: another first_seed gives other noises for the same prompts (e.g. more data)."
                        ),
                    },
                ),
                **schedule_inputs(),
                "dataset": (
                    "STRING",
                    {
                        "default": "noisear_dataset/1024x1024",
                        "tooltip": (
                            "Folder of the shards inside ComfyUI's output folder (a relative name, like SaveImage's prefix; "
                            "nothing is written elsewhere). One folder per size."
                        ),
                    },
                ),
                "text_tokens": (
                    "INT",
                    {
                        "default": 77,
                        "min": 1,
                        "max": 4096,
                        "tooltip": (
                            "Token slots stored per prompt: the prompt's tokens (the family's padding left out), then "
                            "empty slots with mask 0. A prompt with more tokens is refused, not cut (SDXL: 77; SD3 "
                            "reads 77 CLIP rows plus its T5 tokens, Wan, Flux, Chroma up to 512)."
                        ),
                    },
                ),
                "batch_size": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": "Seeds computed together."}),
                "shard_size": (
                    "INT",
                    {
                        "default": 256,
                        "min": 1,
                        "max": 4096,
                        "tooltip": (
                            f"Samples per shard file, at most {SHARD_BYTES // 2**20} MiB of them: that is all that is held "
                            f"in memory before a write."
                        ),
                    },
                ),
                "model_name": ("STRING", {"default": "", "tooltip": "Name of the model, stored in the dataset metadata."}),
            },
            "optional": {
                "reward": (
                    "NOISEAR_REWARD",
                    {
                        "tooltip": (
                            "Optional filter: keeps a pair only when reward(golden) - reward(noise) > reward_margin. A "
                            "NOISEAR_REWARD is a callable (noise [B,C,H,W], conditioning) -> [B] from a custom node."
                        )
                    },
                ),
                "reward_margin": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": -1e6,
                        "max": 1e6,
                        "step": 0.01,
                        "tooltip": "Margin of the reward filter (0 as in the Golden Noise paper).",
                    },
                ),
            },
        }

    @classmethod
    def IS_CHANGED(cls, **inputs: Any) -> float:
        """Always run when queued: the folder may have changed, and a re-run only adds what is missing."""
        return float("nan")

    def collect(
        self,
        model: Any,
        clip: Any,
        prompts: str,
        negative: list,
        latent_image: dict,
        seeds_per_prompt: int,
        first_seed: int,
        scheduler: str,
        steps: int,
        cfg_denoise: float,
        cfg_invert: float,
        dataset: str,
        text_tokens: int,
        batch_size: int,
        shard_size: int,
        model_name: str,
        reward: Reward | None = None,
        reward_margin: float = 0.0,
    ) -> dict[str, Any]:
        check_numbers(
            COLLECTOR_NODE,
            self.INPUT_TYPES(),
            seeds_per_prompt=seeds_per_prompt,
            first_seed=first_seed,
            steps=steps,
            cfg_denoise=cfg_denoise,
            cfg_invert=cfg_invert,
            text_tokens=text_tokens,
            batch_size=batch_size,
            shard_size=shard_size,
            reward_margin=reward_margin,
        )
        config = GoldenConfig(cfg_denoise, cfg_invert, reward_margin)
        directory = collector.dataset_directory(dataset)
        counts, note = collector.collect_dataset(
            model,
            clip,
            prompts,
            negative,
            latent_image,
            seeds_per_prompt,
            first_seed,
            scheduler,
            steps,
            config,
            dataset,
            directory,
            text_tokens,
            batch_size,
            shard_size,
            model_name,
            reward,
        )
        summary = (
            f"{directory}: wrote {counts['written']}, skipped {counts['skipped']} already "
            f"present, rejected {counts['rejected']} by the reward filter" + (f". NOTE: {note}" if note else "")
        )
        return {"ui": {"text": (summary,)}, "result": (summary,)}


class NoiseARTextEncodeNode:
    DESCRIPTION = (
        "One prompt for both the sampler and the NoiseAR prior. conditioning is exactly CLIPTextEncode's; "
        "prior_text is exactly what the prior reads: for SDXL and Hunyuan-DiT CLIPs the embedding the published "
        "priors were trained on (diffusers' tokenization: at most 75 tokens, no weight syntax); for SD3 and Flux "
        "CLIPs the prompt with its true length (T5 padding marked, no weight syntax)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("conditioning", "prior_text")
    OUTPUT_TOOLTIPS = (
        "For the sampler (CFGGuider, KSampler positive): exactly what CLIPTextEncode gives for this text, weight "
        "syntax honoured, the whole prompt.",
        "For the NoiseAR node's positive input: the prompt as the prior was trained on it (CLIP's own tokenizer, "
        "weight syntax read as plain text, ComfyUI's own encoder at the model's default layer; SDXL / Hunyuan-DiT cut "
        "to 77 tokens, SD3 / Flux with the T5 padding marked).",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "clip": (
                    "CLIP",
                    {"tooltip": "The text encoder of the checkpoint (SDXL / DreamShaper-XL, Hunyuan-DiT, SD3 or Flux)."},
                ),
                "text": (
                    "STRING",
                    {
                        "multiline": True,
                        "dynamicPrompts": True,
                        "tooltip": (
                            "The prompt. Weight syntax such as (word:1.2) applies to the sampler's conditioning only; the "
                            "prior reads the first 75 tokens of the plain text, as it was trained."
                        ),
                    },
                ),
            }
        }

    def encode(self, clip: Any, text: str) -> tuple[list, list]:
        conditioning, prior_text, note = text_encode.encode(clip, text)
        log.info("NoiseAR Text Encode: %s", note.replace("\n", " "))
        host.show_on_node(note)
        return conditioning, prior_text


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
        required = ksampler_inputs("seed")
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
        required.update(prior_inputs())
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
        inputs = ksampler_inputs("noise_seed")
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
        required.update(prior_inputs())
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


class NoiseARCompareGridNode:
    DESCRIPTION = (
        "One labelled picture of a batch of images, a row per noise and a column per image, to judge noises by "
        "eye: e.g. the same seed's batch sampled with KSampler and with NoiseAR KSampler, joined by LatentBatch "
        "and decoded once."
    )
    CATEGORY = CATEGORY
    FUNCTION = "grid"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("grid",)
    OUTPUT_TOOLTIPS = ("One image: the rows with their labels on the left, the column labels on top (for SaveImage).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "Every row's images, row after row (rows x columns images)."}),
                "row_labels": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "KSampler\nNoiseAR KSampler",
                        "tooltip": "One label per line, one line per row.",
                    },
                ),
                "column_labels": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "image 1\nimage 2\nimage 3\nimage 4",
                        "tooltip": "One label per line, one line per column (images per row), or empty for none.",
                    },
                ),
            }
        }

    def grid(self, images: Any, row_labels: str, column_labels: str) -> tuple[Any]:
        return (compare_grid(images, row_labels, column_labels),)


# class_type (saved in workflows: never rename), display name, class
NODES = (
    ("NoiseARLoader", "NoiseAR Loader", NoiseARLoader),
    ("NoiseARNoise", "NoiseAR Noise", NoiseARNoiseNode),
    ("NoiseARLatent", "NoiseAR Latent", NoiseARLatentNode),
    ("NoiseARBlend", "NoiseAR Blend", NoiseARBlendNode),
    ("NoiseARPreview", "NoiseAR Preview", NoiseARPreviewNode),
    ("NoiseARGoldenNoise", GOLDEN_NODE, GoldenNoiseNode),
    ("NoiseARDatasetCollector", COLLECTOR_NODE, DatasetCollectorNode),
    ("NoiseARTextEncode", "NoiseAR Text Encode", NoiseARTextEncodeNode),
    ("NoiseARKSampler", "NoiseAR KSampler", NoiseARKSamplerNode),
    ("NoiseARKSamplerAdvanced", "NoiseAR KSampler (Advanced)", NoiseARKSamplerAdvancedNode),
    ("NoiseARCompareGrid", "NoiseAR Compare Grid", NoiseARCompareGridNode),
)
NODE_CLASS_MAPPINGS = {class_type: cls for class_type, _, cls in NODES}
NODE_DISPLAY_NAME_MAPPINGS = {class_type: name for class_type, name, _ in NODES}
