"""The nodes' inputs: shared input specs, widget choices and ranges, their run-time checks, and the error for bad input.

ComfyUI's own min/max check lets NaN through (every comparison with NaN is False), and API-format
workflows can carry NaN, inf or strings: nodes check their numbers themselves (number_in_range,
check_numbers). Sizes are said the same way in every message (size_text).
"""

from __future__ import annotations

from typing import Any, Sequence

from noisear.config import quoted
from noisear.families import Family

from . import host

CATEGORY = "sampling/noise/NoiseAR"  # where every NoiseAR node appears in ComfyUI's menu
PIXELS_PER_CELL = 8  # pixels per latent cell when the family is unknown (SDXL-era VAEs); only used to say sizes
SIZE_MODES = ("any size", "native only")
RETIRED_SIZE_MODE = "centre + Gaussian border"  # read from old workflows as "any size", with a note
TEMPERATURE_RANGE = (0.0, 2.0)  # the temperature widget's min and max, checked again at run time
CFG_RANGE = (0.0, 100.0)  # the golden guidance widgets' min and max, checked again at run time
SEED_MAX = 0xFFFFFFFFFFFFFFFF  # ComfyUI's seed widgets


class NoiseARNodeError(ValueError):
    """Wrong input to a NoiseAR node; the message says what was expected and what to do."""


def size_text(size: Sequence[int], family: Family | None = None) -> str:
    """A latent size (H, W) or (T, H, W) in cells as every NoiseAR message gives it, in the family's pixels per cell
    (8 when unknown) and, for a video, frames: '832 x 1216 px (W x H), latent 152 x 104 cells (H x W)',
    '64 x 64 px x 5 frames (W x H x frames), latent 2 x 8 x 8 cells (T x H x W)'."""
    *frames, height, width = size
    pixels = family.cell_pixels if family is not None else PIXELS_PER_CELL
    picture = f"{width * pixels} x {height * pixels} px"
    if not frames:
        return f"{picture} (W x H), latent {height} x {width} cells (H x W)"
    video_frames = (frames[0] - 1) * (family.frame_stride if family is not None and family.video else 1) + 1
    return f"{picture} x {video_frames} frames (W x H x frames), latent {frames[0]} x {height} x {width} cells (T x H x W)"


def _bound(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def number_in_range(node: str, name: str, value: Any, low: float, high: float) -> float:
    """``value`` of an INT/FLOAT widget as a float in [low, high], else NoiseARNodeError naming ``node``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
    if not ok:
        raise NoiseARNodeError(
            f"{node}: {name} must be a number from {_bound(low)} to {_bound(high)}, got {quoted(value)}; "
            f"set a number in the widget (a shared or API workflow may carry NaN or inf)"
        )
    return float(value)


def check_numbers(node: str, input_types: dict[str, Any], **values: Any) -> None:
    """number_in_range for each named INT/FLOAT value against the min and max of its spec in ``input_types``."""
    spec = {**input_types["required"], **input_types.get("optional", {})}
    for name, value in values.items():
        number_in_range(node, name, value, spec[name][1]["min"], spec[name][1]["max"])


def size_mode_problem(size_mode: str) -> str | None:
    """Why ``size_mode`` is not a value the nodes take (the retired centre mode is still read), or None."""
    if size_mode in SIZE_MODES or size_mode == RETIRED_SIZE_MODE:
        return None
    return f"size_mode must be one of {', '.join(repr(m) for m in SIZE_MODES)}, got {size_mode!r}"


def size_mode_note(size_mode: str) -> str | None:
    """The note for a workflow saved with the retired centre mode."""
    if size_mode != RETIRED_SIZE_MODE:
        return None
    return (
        f"NoiseAR note: size_mode '{RETIRED_SIZE_MODE}' was retired; the prior now fills the whole latent "
        f"at every size, so this node runs as '{SIZE_MODES[0]}'. Choose '{SIZE_MODES[0]}' in the widget "
        f"to keep this behaviour and drop this note."
    )


# Input specs shared by several nodes ----------------------------------------------------------------------------
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
        "max": SEED_MAX,
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


def noise_inputs() -> dict[str, Any]:
    """The prior and its draw: NoiseAR Noise's and NoiseAR Latent's required inputs."""
    return {
        "noisear_model": PRIOR_INPUT,
        "positive": POSITIVE_INPUT,
        "noise_seed": SEED_INPUT,
        "temperature": TEMPERATURE_INPUT,
        "size_mode": SIZE_MODE_INPUT,
    }


def prior_inputs() -> dict[str, Any]:
    """The NoiseAR Noise node's own prior inputs (its size behaviour included), as the KSamplers take them."""
    return {"noisear_model": PRIOR_INPUT, "temperature": TEMPERATURE_INPUT, "size_mode": SIZE_MODE_INPUT}


def ksampler_inputs(seed_name: str) -> dict[str, Any]:
    """ComfyUI's KSampler / KSamplerAdvanced sampling inputs, in their order, with KSampler's defaults; the seed
    input is named ``seed_name``."""
    return {
        "model": ("MODEL", {"tooltip": "The model used for denoising the input latent."}),
        seed_name: (
            "INT",
            {
                "default": 0,
                "min": 0,
                "max": SEED_MAX,
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


def schedule_inputs() -> dict[str, Any]:
    """scheduler + steps of the sampler golden noise is meant for (the golden step is its first step), and the
    two guidances: NoiseAR Golden Noise's and the Dataset Collector's."""
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
