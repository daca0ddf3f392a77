"""The only door to ComfyUI. Every other node module calls the host through these functions.

Imports are guarded: outside ComfyUI `AVAILABLE` is False and each function raises HostUnavailable,
so the node logic stays importable and testable (tests replace these functions with fakes that
follow ComfyUI's documented shapes, see tests/fake_comfy.py). Grouped by ComfyUI subsystem: folders and
files; devices, progress and interrupts; models (family, latent); sampling (noise, model sampling, guiders,
KSampler); CLIP and text.
"""

from __future__ import annotations

import hashlib
import os
import sys
import uuid
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from noisear.families import Family, family_of_comfy_model

try:
    import comfy.model_management
    import comfy.model_sampling
    import comfy.sample
    import comfy.samplers
    import comfy.utils
    import comfy_execution.utils
    import folder_paths
    import latent_preview  # ComfyUI's top-level module: KSampler's progress bar with latent previews

    AVAILABLE = True
except ImportError:
    AVAILABLE = False

MODEL_FOLDER = "noisear"  # models/noisear, plus any "noisear:" entry of extra_model_paths.yaml
MODEL_EXTENSIONS = {".safetensors", ".pth", ".pt"}


class HostUnavailable(RuntimeError):
    """A host function was called outside ComfyUI."""


def _require() -> None:
    if not AVAILABLE:
        raise HostUnavailable("this needs ComfyUI (folder_paths, comfy.*), which could not be imported")


# Folders and files --------------------------------------------------------------------------------
def register_model_folder() -> None:
    """Merge models/noisear and our extensions into folder_paths' "noisear" entry.

    extra_model_paths.yaml is applied before custom nodes load and may already have created the
    entry (with an empty extension set): its directories are kept.
    """
    if not AVAILABLE:
        return
    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    paths, extensions = folder_paths.folder_names_and_paths.get(MODEL_FOLDER, ([], set()))
    paths = list(paths) + ([default] if default not in paths else [])
    folder_paths.folder_names_and_paths[MODEL_FOLDER] = (paths, set(extensions) | MODEL_EXTENSIONS)


def checkpoint_names() -> list[str]:
    """File names (relative to their model folder) offered by the loader."""
    _require()
    return folder_paths.get_filename_list(MODEL_FOLDER)


def model_folders() -> list[str]:
    """The folders the loader lists (models/noisear and any extra_model_paths.yaml "noisear" entry)."""
    _require()
    return list(folder_paths.get_folder_paths(MODEL_FOLDER))


def checkpoint_path(name: str) -> str:
    """Full path of a listed checkpoint; FileNotFoundError when it is gone."""
    _require()
    return folder_paths.get_full_path_or_raise(MODEL_FOLDER, name)


def output_directory() -> str:
    """ComfyUI's output folder (relative dataset paths are resolved against it)."""
    _require()
    return folder_paths.get_output_directory()


def temp_directory() -> str:
    _require()
    return folder_paths.get_temp_directory()


def save_temp_images(images: torch.Tensor, prefix: str) -> list[dict[str, str]]:
    """Write IMAGE [B,H,W,3] in [0,1] as PNGs to the temp folder; returns the UI's image records."""
    _require()
    os.makedirs(temp_directory(), exist_ok=True)
    records = []
    for i, image in enumerate(images):
        filename = f"{prefix}_{uuid.uuid4().hex[:12]}_{i:03d}.png"
        pixels = (image.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(temp_directory(), filename))
        records.append({"filename": filename, "subfolder": "", "type": "temp"})
    return records


# Devices, progress, interrupts --------------------------------------------------------------------
def torch_device() -> torch.device:
    """Where ComfyUI computes (cpu with --cpu)."""
    _require()
    return comfy.model_management.get_torch_device()


def intermediate_device() -> torch.device:
    """Where node outputs live between nodes."""
    _require()
    return comfy.model_management.intermediate_device()


def soft_empty_cache() -> None:
    _require()
    comfy.model_management.soft_empty_cache()


def throw_if_interrupted() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user pressed Cancel."""
    _require()
    comfy.model_management.throw_exception_if_processing_interrupted()


def progress_bar(total: int) -> Any:
    """A bar in the node's UI; use ``.update_absolute(done)``."""
    _require()
    return comfy.utils.ProgressBar(total)


def show_on_node(text: str) -> None:
    """Show ``text`` on the node now executing, under its title (as core GetImageSize does); no-op without a UI."""
    _require()
    # ComfyUI's main.py has imported its "server" module; where comfy runs as a library there is none to import
    server = getattr(getattr(sys.modules.get("server"), "PromptServer", None), "instance", None)
    context = comfy_execution.utils.get_executing_context()
    if context is not None and server is not None:
        server.send_progress_text(text, context.node_id)


# Models: family and latent -------------------------------------------------------------------------
def model_config_name(model: Any) -> str | None:
    """The name of the MODEL's ComfyUI ``supported_models`` class (``model.model.model_config``: "SDXL", "Flux",
    "FluxSchnell", "QwenImage", "WAN21_T2V", ...), or None for an object without one."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    return None if config is None else type(config).__name__


def model_family(model: Any) -> Family | None:
    """The NoiseAR family of the MODEL (noisear.families), or None when its class is in no family."""
    name = model_config_name(model)
    return None if name is None else family_of_comfy_model(name)


def fix_empty_latent(model: Any, samples: torch.Tensor) -> torch.Tensor:
    """The latent as ComfyUI's samplers hand it to a NOISE (comfy.sample.fix_empty_latent_channels): an all-zero
    latent gets the MODEL's channels, and a 4-D latent of a 3-D latent format (Qwen-Image) its time axis."""
    _require()
    return comfy.sample.fix_empty_latent_channels(model, samples)


# Sampling: noise, model sampling, guiders, KSampler -----------------------------------------------
# denoised(x [B,C,...] k-diffusion space, sigma, cfg, guidance=None) -> the guider's CFG-combined denoised
# estimate x0; ``guidance`` (run_guided with embedded_guidance) replaces the conditioning's guidance value
Denoised = Callable[..., torch.Tensor]
GuidedWork = Callable[[Denoised, torch.Tensor, float], Any]  # (denoised, x_start, start_scale) -> result


def prepare_noise(latent: torch.Tensor, seed: int, batch_index: list[int] | None) -> torch.Tensor:
    """ComfyUI's own seeded Gaussian noise for a latent (what RandomNoise gives)."""
    _require()
    return comfy.sample.prepare_noise(latent, seed, batch_index)


def model_sampling(model: Any) -> Any:
    """The MODEL's sampling object (sigma_max, noise scaling)."""
    return model.get_model_object("model_sampling")


def latent_format(model: Any) -> Any:
    """The MODEL's latent format (latent_channels, process_in, process_out)."""
    return model.get_model_object("latent_format")


def is_flow(sampling: Any) -> bool:
    """True for flow-matching models (SD3, Flux, ...): they start from sigma*noise + (1-sigma)*latent."""
    _require()
    return isinstance(sampling, comfy.model_sampling.CONST)


def prediction_kind(model: Any) -> str:
    """'epsilon', 'v' or 'flow' for the MODEL's sampling (after any ModelSampling* patch); ValueError otherwise."""
    _require()
    ms, kinds = model_sampling(model), comfy.model_sampling
    name = type(ms).__name__
    if isinstance(ms, kinds.CONST):
        return "flow"
    if isinstance(ms, (kinds.EDM, kinds.X0)) or float(getattr(ms, "sigma_data", 1.0)) != 1.0:
        raise ValueError(f"the MODEL's sampling ({name}) is not epsilon, v-prediction or flow with sigma_data 1")
    if isinstance(ms, kinds.V_PREDICTION):
        return "v"
    if isinstance(ms, kinds.EPS):
        return "epsilon"
    raise ValueError(f"the MODEL's sampling ({name}) is not epsilon, v-prediction or flow")


IDENTITY_SAMPLES = 8  # values read from each weight tensor for model_identity
SAMPLING_PREFIX = "model_sampling."  # the model's noise schedule buffers, left out of model_identity


def model_identity(model: Any) -> dict[str, str]:
    """What tells this MODEL's golden noise from another's, cheaply: ComfyUI's model class, and the first 16 hex
    digits of a sha256 of its weights and of its weight patches (LoRAs and the like).

    The weights are ModelPatcher.get_key_patches()'s originals (unpatched even while ComfyUI has a patch applied,
    so the identity does not depend on whether the model is loaded), each hashed as its name, shape, dtype and
    IDENTITY_SAMPLES values at evenly spaced positions (a few thousand values in all, read in place); the patches
    as their keys, strengths and tensors sampled the same way. The model's sampling (its ``model_sampling.*``
    buffers, which a ModelSampling* object patch replaces and ComfyUI leaves in place on the shared model after a
    run) is left out: the dataset records it as the prediction kind and sigmas. Two checkpoints that differ only
    between the sampled positions (a hand-edited weight) look the same.
    """
    _require()
    if not callable(getattr(model, "get_key_patches", None)):
        raise ValueError(f"the MODEL input ({type(model).__name__}) is not a ComfyUI model; connect a model loader's MODEL")
    weights, patches, patched = hashlib.sha256(), hashlib.sha256(), False
    for key, (original, *added) in sorted(model.get_key_patches().items()):
        if key.startswith(SAMPLING_PREFIX):
            continue
        _hash_value(weights, key, original[0])
        if added:
            patched = True
            _hash_value(patches, key, added)
    return {
        "class": type(getattr(model, "model", None)).__name__,
        "weights": weights.hexdigest()[:16],
        "patches": patches.hexdigest()[:16] if patched else "none",
    }


def _hash_value(digest: Any, key: str, value: Any, depth: int = 0) -> None:
    """Feed ``value`` (a tensor, a patch tuple, a weight adapter with .weights, a number...) to ``digest``."""
    digest.update(key.encode())
    if isinstance(value, torch.Tensor):
        digest.update(f"{list(value.shape)}:{value.dtype}".encode() + _tensor_sample(value))
    elif isinstance(value, (list, tuple)) and depth < 8:
        for item in value:
            _hash_value(digest, key, item, depth + 1)
    elif isinstance(value, (bool, int, float, str, type(None))):
        digest.update(repr(value).encode())
    elif hasattr(value, "weights") and depth < 8:  # ComfyUI's weight adapters (LoRA, LoHa, ...)
        digest.update(type(value).__name__.encode())
        _hash_value(digest, key, value.weights, depth + 1)
    else:  # functions and other objects: their kind
        digest.update(getattr(value, "__qualname__", type(value).__qualname__).encode())


def _tensor_sample(tensor: torch.Tensor) -> bytes:
    """IDENTITY_SAMPLES values of ``tensor`` at evenly spaced positions, as float32 bytes (b"" where unreadable)."""
    count = tensor.numel()
    if count == 0:
        return b""
    positions = torch.linspace(0, count - 1, min(count, IDENTITY_SAMPLES)).round().long()
    try:
        index = torch.unravel_index(positions.to(tensor.device), tuple(tensor.shape)) if tensor.ndim else ()
        return tensor.detach()[index].float().cpu().numpy().tobytes()
    except Exception:  # meta tensors, quantized or custom tensor types: the name, shape and dtype stand for it
        return b"unsampled"


def scheduler_names() -> list[str]:
    """ComfyUI's scheduler names (BasicScheduler's list)."""
    _require()
    return list(comfy.samplers.SCHEDULER_NAMES)


def sampler_names() -> list[str]:
    """ComfyUI's sampler names (KSampler's list)."""
    _require()
    return list(comfy.samplers.KSampler.SAMPLERS)


def schedule_sigmas(model: Any, scheduler: str, steps: int) -> torch.Tensor:
    """The sigmas [steps+1] (k-diffusion units) that BasicScheduler gives for this MODEL at denoise 1, fp32 CPU."""
    _require()
    return comfy.samplers.calculate_sigmas(model_sampling(model), scheduler, steps).float().cpu()


def run_guided(
    model: Any,
    positive: list,
    negative: list,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    seed: int,
    work: GuidedWork,
    embedded_guidance: bool = False,
) -> Any:
    """Run ``work`` inside ComfyUI's own sampling set-up (model loaded, conds prepared, model patches on).

    A CFGGuider samples ``noise`` [B,C,...] (unit variance, the latent's rank) from an empty latent over
    ``sigmas`` with a one-off sampler whose function calls ``work(denoised, x_start, start_scale)``:
    x_start = model_sampling.noise_scaling(sigmas[0], noise, 0) is where any ComfyUI sampler starts,
    start_scale = x_start / noise, and ``denoised(x, sigma, cfg)`` is the guider's CFG-combined
    denoised estimate (what every ComfyUI sampler steps with). Returns what ``work`` returned.

    ``embedded_guidance`` (guidance-distilled models such as Flux dev): ``denoised(x, sigma, cfg, guidance)``
    runs the model with its ``guidance`` input (the conditioning's "guidance" value, or the model's default) set
    to ``guidance``, through a model_function_wrapper on a clone of the MODEL (an existing wrapper still runs).
    """
    _require()
    override: dict[str, float | None] = {"guidance": None}
    if embedded_guidance:
        model = model.clone()
        inner = model.model_options.get("model_function_wrapper")

        def with_guidance(apply_model: Callable, args: dict) -> torch.Tensor:
            c = args["c"]
            if override["guidance"] is not None and "guidance" in c:
                args = {**args, "c": {**c, "guidance": torch.full_like(c["guidance"], override["guidance"])}}
            if inner is not None:
                return inner(apply_model, args)
            return apply_model(args["input"], args["timestep"], **args["c"])

        model.set_model_unet_function_wrapper(with_guidance)
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    results = []

    def function(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = extra_args or {}
        ones = x.new_ones([x.shape[0]])

        def denoised(x_k: torch.Tensor, sigma: float, cfg: float, guidance: float | None = None) -> torch.Tensor:
            guider.set_cfg(cfg)
            override["guidance"] = guidance
            return model_k(x_k, ones * sigma, **extra_args)

        unit = torch.ones((1,) * x.ndim, dtype=x.dtype, device=x.device)
        scale = model_sampling(model).noise_scaling(
            sigmas[0], unit, torch.zeros_like(unit), sampler.max_denoise(model_k.inner_model, sigmas)
        )
        results.append(work(denoised, x, float(scale.flatten()[0])))
        return x

    sampler = comfy.samplers.KSAMPLER(function)
    guider.sample(noise, torch.zeros_like(noise), sampler, sigmas, disable_pbar=True, seed=seed)
    return results[0]


def common_ksampler(
    model: Any,
    noise: Any,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: list,
    negative: list,
    latent: dict[str, Any],
    denoise: float = 1.0,
    start_step: int | None = None,
    last_step: int | None = None,
    force_full_denoise: bool = False,
) -> dict[str, Any]:
    """ComfyUI's nodes.common_ksampler with the noise drawn by a NOISE instead of prepare_noise.

    ``noise`` is a NOISE (``.generate_noise(latent)``; it gets the latent after
    fix_empty_latent_channels, as SamplerCustomAdvanced gives it), or None for no noise (KSamplerAdvanced's
    add_noise disable). ``seed`` seeds ancestral/SDE steps. Same sigmas, progress bar, latent previews,
    noise_mask and output LATENT (the input's keys, new samples) as KSampler / KSamplerAdvanced.
    """
    _require()
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    if noise is None:
        drawn = torch.zeros(samples.size(), dtype=samples.dtype, layout=samples.layout, device="cpu")
    else:
        drawn = noise.generate_noise({**latent, "samples": samples})
    callback = latent_preview.prepare_callback(model, steps)
    disable_pbar = not comfy.utils.PROGRESS_BAR_ENABLED
    out = comfy.sample.sample(
        model,
        drawn,
        steps,
        cfg,
        sampler_name,
        scheduler,
        positive,
        negative,
        samples,
        denoise=denoise,
        disable_noise=noise is None,
        start_step=start_step,
        last_step=last_step,
        force_full_denoise=force_full_denoise,
        noise_mask=latent.get("noise_mask"),
        callback=callback,
        disable_pbar=disable_pbar,
        seed=seed,
    )
    return {**latent, "samples": out}


# CLIP and text ------------------------------------------------------------------------------------
Tokens = dict[str, list[list[tuple]]]  # {stream: chunks of (token, weight)}, as CLIP.tokenize gives them


def tokenize(clip: Any, text: str, weights: bool = True) -> Tokens:
    """The CLIP's own tokens of ``text``; ``weights=False`` reads ComfyUI's weight syntax as plain text."""
    _require()
    return clip.tokenize(text) if weights else clip.tokenize(text, disable_weights=True)


def encode_tokens(clip: Any, tokens: Tokens) -> list:
    """CONDITIONING of ``tokens`` encoded as CLIPTextEncode encodes (encode_from_tokens_scheduled)."""
    _require()
    return clip.encode_from_tokens_scheduled(tokens)


def encode_text(clip: Any, text: str) -> list:
    """CONDITIONING of ``text`` exactly as CLIPTextEncode makes it."""
    return encode_tokens(clip, tokenize(clip, text))


def default_clip(clip: Any) -> Any:
    """``clip`` with its model's default layer and no tokenizer options: itself if it has none set, else a
    clone without them (CLIPSetLastLayer sets layer_idx; the tokenizer options change padding)."""
    _require()
    if clip.layer_idx is None and not clip.tokenizer_options:
        return clip
    plain = clip.clone()
    plain.layer_idx, plain.tokenizer_options = None, {}
    return plain
