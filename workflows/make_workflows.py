"""Writes every example workflow in workflows/ (ComfyUI UI format 0.4) and, with --pictures, their pictures.

    python workflows/make_workflows.py                   # the .json files (standard library only)
    python workflows/make_workflows.py --pictures SHOTS  # also <name>.jpg thumbnails, docs/comfyui-wiring.png and
                                                         # docs/comfyui-ksampler.png

The pictures are screenshots of the real ComfyUI frontend, taken by the host suite's browser test:
`NOISEAR_SCREENSHOTS=SHOTS python -m pytest tests/host/test_browser.py` (see its docstring) writes
SHOTS/<name>.png for every workflow file; --pictures turns them into thumbnails (Pillow).

`graphs()` is the one list of workflows: each graph is nodes with their widget values in ComfyUI's order,
then links by input name. WIDGET_NAMES names those values (`intended_widgets`): the host suite (tests/host)
checks every file against a live ComfyUI's /object_info and, in a real browser, that the UI shows each value
against the intended input name.
"""

from __future__ import annotations

import argparse
import json
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOCS_PICTURES = {
    "noisear_sdxl_custom_sampler": HERE.parent / "docs" / "comfyui-wiring.png",
    "noisear_sdxl_ksampler": HERE.parent / "docs" / "comfyui-ksampler.png",
}  # the README's
SEED = 20250601
NEGATIVE = "blurry, low quality, distorted"

# Socket inputs (name, type) and outputs (name, type) of the nodes used, as in ComfyUI's /object_info.
SOCKETS: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]]]] = {
    "CheckpointLoaderSimple": ([], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "UNETLoader": ([], [("MODEL", "MODEL")]),
    "CLIPLoader": ([], [("CLIP", "CLIP")]),
    "DualCLIPLoader": ([], [("CLIP", "CLIP")]),
    "VAELoader": ([], [("VAE", "VAE")]),
    "ModelSamplingSD3": ([("model", "MODEL")], [("MODEL", "MODEL")]),
    "ModelSamplingAuraFlow": ([("model", "MODEL")], [("MODEL", "MODEL")]),
    "FluxGuidance": ([("conditioning", "CONDITIONING")], [("CONDITIONING", "CONDITIONING")]),
    "EmptySD3LatentImage": ([], [("LATENT", "LATENT")]),
    "EmptyChromaRadianceLatentImage": ([], [("LATENT", "LATENT")]),
    "EmptyHunyuanImageLatent": ([], [("LATENT", "LATENT")]),
    "EmptyHunyuanLatentVideo": ([], [("LATENT", "LATENT")]),
    "Wan22ImageToVideoLatent": ([("vae", "VAE"), ("start_image", "IMAGE")], [("LATENT", "LATENT")]),
    "CreateVideo": ([("images", "IMAGE"), ("audio", "AUDIO")], [("VIDEO", "VIDEO")]),
    "SaveVideo": ([("video", "VIDEO")], []),
    "CLIPTextEncode": ([("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")]),
    "CLIPTextEncodeHunyuanDiT": ([("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")]),
    "EmptyLatentImage": ([], [("LATENT", "LATENT")]),
    "KSamplerSelect": ([], [("SAMPLER", "SAMPLER")]),
    "BasicScheduler": ([("model", "MODEL")], [("SIGMAS", "SIGMAS")]),
    "CFGGuider": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING")], [("GUIDER", "GUIDER")]),
    "SamplerCustomAdvanced": (
        [("noise", "NOISE"), ("guider", "GUIDER"), ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"), ("latent_image", "LATENT")],
        [("output", "LATENT"), ("denoised_output", "LATENT")],
    ),
    "KSamplerAdvanced": (
        [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
        [("LATENT", "LATENT")],
    ),
    "KSampler": (
        [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
        [("LATENT", "LATENT")],
    ),
    "LatentBatch": ([("samples1", "LATENT"), ("samples2", "LATENT")], [("LATENT", "LATENT")]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")]),
    "SaveImage": ([("images", "IMAGE")], []),
    "RandomNoise": ([], [("NOISE", "NOISE")]),
    "PreviewAny": ([("source", "*")], []),
    "NoiseARLoader": ([], [("noisear_model", "NOISEAR_MODEL"), ("info", "STRING")]),
    "NoiseARNoise": (
        [("noisear_model", "NOISEAR_MODEL"), ("positive", "CONDITIONING"), ("noise", "NOISE")],
        [("noise", "NOISE")],
    ),
    "NoiseARLatent": (
        [
            ("model", "MODEL"),
            ("noisear_model", "NOISEAR_MODEL"),
            ("positive", "CONDITIONING"),
            ("latent_image", "LATENT"),
            ("noise", "NOISE"),
        ],
        [("latent", "LATENT"), ("info", "STRING")],
    ),
    "NoiseARBlend": ([("noisear_noise", "NOISE"), ("gaussian_noise", "NOISE")], [("noise", "NOISE")]),
    "NoiseARPreview": ([("noise", "NOISE"), ("latent_image", "LATENT")], [("image", "IMAGE"), ("stats", "STRING")]),
    "NoiseARKSampler": (
        [
            ("model", "MODEL"),
            ("positive", "CONDITIONING"),
            ("negative", "CONDITIONING"),
            ("latent_image", "LATENT"),
            ("noisear_model", "NOISEAR_MODEL"),
            ("prior_text", "CONDITIONING"),
        ],
        [("LATENT", "LATENT")],
    ),
    "NoiseARKSamplerAdvanced": (
        [
            ("model", "MODEL"),
            ("positive", "CONDITIONING"),
            ("negative", "CONDITIONING"),
            ("latent_image", "LATENT"),
            ("noisear_model", "NOISEAR_MODEL"),
            ("prior_text", "CONDITIONING"),
        ],
        [("LATENT", "LATENT")],
    ),
    "NoiseARTextEncode": ([("clip", "CLIP")], [("conditioning", "CONDITIONING"), ("prior_text", "CONDITIONING")]),
    "NoiseARGoldenNoise": (
        [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("noise", "NOISE")],
        [("noise", "NOISE")],
    ),
    "NoiseARDatasetCollector": (
        [
            ("model", "MODEL"),
            ("clip", "CLIP"),
            ("negative", "CONDITIONING"),
            ("latent_image", "LATENT"),
            ("reward", "NOISEAR_REWARD"),
        ],
        [("summary", "STRING")],
    ),
    "NoiseARCompareGrid": ([("images", "IMAGE")], [("grid", "IMAGE")]),
    "Note": ([], []),  # the UI's own note node (not in /object_info)
}

# Widget input names of each node type in ComfyUI's order, as /object_info lists them; a seed with
# control_after_generate is followed by the UI's "control_after_generate" widget.
SEED_NAMES = ["noise_seed", "control_after_generate"]
KSAMPLER_ADVANCED_NAMES = [
    "add_noise",
    *SEED_NAMES,
    "steps",
    "cfg",
    "sampler_name",
    "scheduler",
    "start_at_step",
    "end_at_step",
    "return_with_leftover_noise",
]
WIDGET_NAMES: dict[str, list[str]] = {
    "CheckpointLoaderSimple": ["ckpt_name"],
    "UNETLoader": ["unet_name", "weight_dtype"],
    "CLIPLoader": ["clip_name", "type", "device"],
    "DualCLIPLoader": ["clip_name1", "clip_name2", "type", "device"],
    "VAELoader": ["vae_name"],
    "ModelSamplingSD3": ["shift"],
    "ModelSamplingAuraFlow": ["shift"],
    "FluxGuidance": ["guidance"],
    "EmptySD3LatentImage": ["width", "height", "batch_size"],
    "EmptyChromaRadianceLatentImage": ["width", "height", "batch_size"],
    "EmptyHunyuanImageLatent": ["width", "height", "batch_size"],
    "EmptyHunyuanLatentVideo": ["width", "height", "length", "batch_size"],
    "Wan22ImageToVideoLatent": ["width", "height", "length", "batch_size"],
    "CreateVideo": ["fps"],
    "SaveVideo": ["filename_prefix", "format", "codec"],
    "CLIPTextEncode": ["text"],
    "CLIPTextEncodeHunyuanDiT": ["bert", "mt5xl"],
    "EmptyLatentImage": ["width", "height", "batch_size"],
    "KSamplerSelect": ["sampler_name"],
    "BasicScheduler": ["scheduler", "steps", "denoise"],
    "CFGGuider": ["cfg"],
    "SamplerCustomAdvanced": [],
    "KSamplerAdvanced": KSAMPLER_ADVANCED_NAMES,
    "KSampler": ["seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"],
    "LatentBatch": [],
    "VAEDecode": [],
    "SaveImage": ["filename_prefix"],
    "RandomNoise": SEED_NAMES,
    "PreviewAny": [],
    "NoiseARLoader": ["ckpt_name", "device", "dtype"],
    "NoiseARNoise": [*SEED_NAMES, "temperature", "size_mode"],
    "NoiseARLatent": [*SEED_NAMES, "temperature", "size_mode"],
    "NoiseARBlend": ["strength", "mode", "renormalize"],
    "NoiseARPreview": [],
    "NoiseARTextEncode": ["text"],
    "NoiseARKSampler": [
        "seed",
        "control_after_generate",
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
        "denoise",
        "temperature",
        "size_mode",
    ],
    "NoiseARKSamplerAdvanced": [*KSAMPLER_ADVANCED_NAMES, "temperature", "size_mode"],
    "NoiseARGoldenNoise": [*SEED_NAMES, "scheduler", "steps", "cfg_denoise", "cfg_invert"],
    "NoiseARDatasetCollector": [
        "prompts",
        "seeds_per_prompt",
        "first_seed",
        "scheduler",
        "steps",
        "cfg_denoise",
        "cfg_invert",
        "dataset",
        "text_tokens",
        "batch_size",
        "shard_size",
        "model_name",
        "reward_margin",
    ],
    "NoiseARCompareGrid": ["row_labels", "column_labels"],
    "Note": ["text"],
}


@dataclass
class Node:
    key: str
    type: str
    column: float
    row: float
    widgets: list
    title: str | None = None
    height: int = 110


@dataclass
class Graph:
    name: str
    description: str
    nodes: list[Node]
    links: list[tuple[str, int, str, str]]  # (source key, output slot, target key, input name)


# The positive prompt is NoiseAR Text Encode: `conditioning` (slot 0, exactly CLIPTextEncode's) goes to the
# sampler, `prior_text` (slot 1) to the NoiseAR node.
CONDITIONING, PRIOR_TEXT = 0, 1
PRIOR_TEXT_NOTE = (
    "Positive prompt: NoiseAR Text Encode feeds one text to both. 'conditioning' (exactly what CLIPTextEncode "
    "gives, weight syntax included) goes to the sampler; 'prior_text' goes to the NoiseAR node: exactly the "
    "embedding the prior was trained on (diffusers: first 75 tokens, no weight syntax).\n\n"
    "A CLIPTextEncode into the NoiseAR node also works and equals prior_text for plain prompts up to 75 tokens, "
    "but (word:1.2) weights and longer prompts change what the prior sees (docs/comfyui.md, Conditioning rules)."
)


def positive_prompt(text: str) -> Node:
    return Node("pos", "NoiseARTextEncode", 1, 0, [text], "Positive prompt (sampler + prior)", 140)


def prompt_note(column: float, row: float) -> Node:
    return Node("note", "Note", column, row, [PRIOR_TEXT_NOTE], "Why NoiseAR Text Encode", 200)


def sdxl_base(
    prior_node: Node,
    *,
    size: tuple[int, int] = (1024, 1024),
    batch: int = 1,
    prior_reads_prompt: bool = True,
) -> list[Node]:
    """Checkpoint, prompts, empty latent of ``size`` (width, height px) and ``batch`` and ``prior_node``: what every
    SDXL graph starts with. With a prior reading the prompt, the positive prompt is NoiseAR Text Encode with its note;
    otherwise (golden noise, no prior) a CLIPTextEncode."""
    text = "a lighthouse on a cliff at sunset, dramatic clouds, detailed photo"
    return [
        Node("ckpt", "CheckpointLoaderSimple", 0, 0, ["sd_xl_base_1.0.safetensors"], height=100),
        positive_prompt(text) if prior_reads_prompt else Node("pos", "CLIPTextEncode", 1, 0, [text], "Positive prompt", 140),
        Node("neg", "CLIPTextEncode", 1, 1.1, [NEGATIVE], "Negative prompt", 140),
        Node("latent", "EmptyLatentImage", 0, 1.1, [*size, batch], height=110),
        prior_node,
    ] + ([prompt_note(0, 3.3)] if prior_reads_prompt else [])


LOADER_SDXL = Node("loader", "NoiseARLoader", 0, 2.2, ["sdxl_and_dreamshaper.safetensors", "auto", "fp32"], height=110)
LOADER_DIT = Node("loader", "NoiseARLoader", 0, 2.2, ["dit.safetensors", "auto", "fp32"], height=110)
NOISE_WIDGETS = [SEED, "fixed", 0.5, "any size"]


def custom_sampling_nodes(noise_key: str) -> tuple[list[Node], list[tuple[str, int, str, str]]]:
    """Sampler, scheduler, guider, SamplerCustomAdvanced, decode and save, fed by ``noise_key``."""
    nodes = [
        Node("select", "KSamplerSelect", 2, 1.1, ["dpmpp_2m"], height=60),
        Node("sched", "BasicScheduler", 2, 1.7, ["normal", 50, 1.0], height=110),
        Node("guider", "CFGGuider", 2, 0, [5.5], height=100),
        Node("sample", "SamplerCustomAdvanced", 3, 0.8, [], height=130),
        Node("decode", "VAEDecode", 4, 0, [], height=50),
        Node("save", "SaveImage", 4, 0.5, ["NoiseAR"], height=270),
    ]
    links = [
        ("ckpt", 0, "guider", "model"),
        ("pos", CONDITIONING, "guider", "positive"),
        ("neg", 0, "guider", "negative"),
        ("ckpt", 0, "sched", "model"),
        (noise_key, 0, "sample", "noise"),
        ("guider", 0, "sample", "guider"),
        ("select", 0, "sample", "sampler"),
        ("sched", 0, "sample", "sigmas"),
        ("latent", 0, "sample", "latent_image"),
        ("sample", 0, "decode", "samples"),
        ("ckpt", 2, "decode", "vae"),
        ("decode", 0, "save", "images"),
    ]
    return nodes, links


PROMPT_LINKS = [("ckpt", 1, "pos", "clip"), ("ckpt", 1, "neg", "clip")]


def prior_noise() -> Node:
    """NoiseAR Noise below the prompts, fed by the loader and the prompt's prior_text."""
    return Node("noise", "NoiseARNoise", 1, 2.4, NOISE_WIDGETS, height=150)


# The workflows ------------------------------------------------------------------------------------
# ComfyUI's default graph (comfyui-workflow-templates default.json, ComfyUI v0.3.64) and its widget values,
# with the checkpoint of the model family at 1024x1024 (its and the published priors' native size).
DEFAULT_PROMPT = "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,"
DEFAULT_NEGATIVE = "text, watermark"
DEFAULT_KSAMPLER = [156680208700286, "randomize", 20, 8, "euler", "normal", 1]
SWAP_NOTE = (
    "One node swapped: KSampler -> NoiseAR KSampler (+ NoiseAR Loader). Same widgets; the seed's "
    "noise is drawn by the prior, which reads the positive prompt.\n\n"
    "The prior reads the first 77 tokens of this CLIPTextEncode: right for plain prompts. For long "
    "or weighted prompts, the prompt-exact route is NoiseAR Text Encode -> prior_text.\n\n"
    "denoise must stay 1 (text-to-image)."
)


def one_node_swap(name: str, checkpoint: str, loader: Node) -> Graph:
    """ComfyUI's default graph with KSampler swapped for NoiseAR KSampler and the NoiseAR Loader added."""
    return Graph(
        name,
        f"ComfyUI's default graph ({checkpoint}) with one node swapped: KSampler -> NoiseAR KSampler, plus the "
        "NoiseAR Loader. Same widgets and defaults; the seed's noise comes from the prior.",
        [
            Node("ckpt", "CheckpointLoaderSimple", 0, 0, [checkpoint], height=100),
            Node("pos", "CLIPTextEncode", 1, 0, [DEFAULT_PROMPT], height=140),
            Node("neg", "CLIPTextEncode", 1, 0.65, [DEFAULT_NEGATIVE], height=140),
            Node("latent", "EmptyLatentImage", 1, 1.3, [1024, 1024, 1], height=110),
            Node("ksampler", "NoiseARKSampler", 2, 0, DEFAULT_KSAMPLER + [0.5, "any size"], height=360),
            Node("decode", "VAEDecode", 3, 0, [], height=50),
            Node("save", "SaveImage", 4, 0, ["ComfyUI"], height=270),
            replace(loader, column=0, row=0.6),
            Node("note", "Note", 0, 1.35, [SWAP_NOTE], "About this graph", 220),
        ],
        PROMPT_LINKS
        + [
            ("ckpt", 0, "ksampler", "model"),
            ("pos", 0, "ksampler", "positive"),
            ("neg", 0, "ksampler", "negative"),
            ("latent", 0, "ksampler", "latent_image"),
            ("loader", 0, "ksampler", "noisear_model"),
            ("ksampler", 0, "decode", "samples"),
            ("ckpt", 2, "decode", "vae"),
            ("decode", 0, "save", "images"),
        ],
    )


def sdxl_custom_graph(name: str, description: str, size: tuple[int, int]) -> Graph:
    """NoiseAR Noise -> SamplerCustomAdvanced at ``size`` (width, height px), with a preview of the start noise."""
    noise = prior_noise()
    custom, custom_links = custom_sampling_nodes("noise")
    return Graph(
        name,
        description,
        sdxl_base(LOADER_SDXL, size=size)
        + [noise]
        + custom
        + [
            Node("preview", "NoiseARPreview", 3, 2.0, [], height=300),
            Node("info", "PreviewAny", 1, 3.6, [], "Detected prior", 90),
        ],
        PROMPT_LINKS
        + [
            ("loader", 0, "noise", "noisear_model"),
            ("pos", PRIOR_TEXT, "noise", "positive"),
            ("noise", 0, "preview", "noise"),
            ("latent", 0, "preview", "latent_image"),
            ("loader", 1, "info", "source"),
        ]
        + custom_links,
    )


def sdxl_ksampler_advanced_graph() -> Graph:
    """NoiseAR Latent as the start latent of KSamplerAdvanced (add_noise disable, start_at_step 0)."""
    start = Node("start", "NoiseARLatent", 1.0, 2.4, NOISE_WIDGETS, height=170)
    ksampler = Node(
        "ksampler",
        "KSamplerAdvanced",
        2,
        0,
        ["disable", SEED, "fixed", 50, 5.5, "dpmpp_2m", "normal", 0, 10000, "disable"],
        height=330,
    )
    return Graph(
        "noisear_sdxl_ksampler_advanced",
        "SDXL: NoiseAR Latent -> KSamplerAdvanced with add_noise = disable and start_at_step = 0.",
        sdxl_base(LOADER_SDXL)
        + [
            start,
            ksampler,
            Node("decode", "VAEDecode", 3, 0, [], height=50),
            Node("save", "SaveImage", 3, 0.5, ["NoiseAR"], height=270),
        ],
        PROMPT_LINKS
        + [
            ("ckpt", 0, "start", "model"),
            ("loader", 0, "start", "noisear_model"),
            ("pos", PRIOR_TEXT, "start", "positive"),
            ("latent", 0, "start", "latent_image"),
            ("ckpt", 0, "ksampler", "model"),
            ("pos", CONDITIONING, "ksampler", "positive"),
            ("neg", 0, "ksampler", "negative"),
            ("start", 0, "ksampler", "latent_image"),
            ("ksampler", 0, "decode", "samples"),
            ("ckpt", 2, "decode", "vae"),
            ("decode", 0, "save", "images"),
        ],
    )


def sdxl_blend_graph() -> Graph:
    """NoiseAR noise mixed with RandomNoise by NoiseAR Blend, then SamplerCustomAdvanced."""
    blend_nodes, blend_links = custom_sampling_nodes("blend")
    return Graph(
        "noisear_sdxl_blend",
        "SDXL: NoiseAR noise mixed with RandomNoise by NoiseAR Blend (training-free), then SamplerCustomAdvanced.",
        sdxl_base(LOADER_SDXL)
        + [
            prior_noise(),
            Node("gauss", "RandomNoise", 1, 3.8, [SEED + 1, "fixed"], height=80),
            Node("blend", "NoiseARBlend", 2, 2.8, [0.5, "linear", False], height=130),
        ]
        + blend_nodes,
        PROMPT_LINKS
        + [
            ("loader", 0, "noise", "noisear_model"),
            ("pos", PRIOR_TEXT, "noise", "positive"),
            ("noise", 0, "blend", "noisear_noise"),
            ("gauss", 0, "blend", "gaussian_noise"),
        ]
        + blend_links,
    )


def hunyuan_dit_graph() -> Graph:
    """Hunyuan-DiT v1.2 at 1280 x 768 px: NoiseAR Noise (dit prior) -> SamplerCustomAdvanced."""
    dit_nodes, dit_links = custom_sampling_nodes("noise")
    return Graph(
        "noisear_hunyuan_dit",
        "Hunyuan-DiT v1.2 at 1280 x 768 px: NoiseAR Text Encode (one text for BERT and mT5, as "
        "CLIPTextEncodeHunyuanDiT with both texts equal) -> NoiseAR Noise (dit prior, sliding-window decoding at "
        "this size) -> SamplerCustomAdvanced.",
        [
            Node("ckpt", "CheckpointLoaderSimple", 0, 0, ["hunyuan_dit_1.2.safetensors"], height=100),
            positive_prompt("a red panda reading a book under a tree, watercolor"),
            Node("neg", "CLIPTextEncodeHunyuanDiT", 1, 1.2, [NEGATIVE] * 2, "Negative prompt", 160),
            Node("latent", "EmptyLatentImage", 0, 1.1, [1280, 768, 1], height=110),
            LOADER_DIT,
            prior_noise(),
            prompt_note(0, 3.3),
        ]
        + dit_nodes,
        PROMPT_LINKS + [("loader", 0, "noise", "noisear_model"), ("pos", PRIOR_TEXT, "noise", "positive")] + dit_links,
    )


def golden_noise_graph() -> Graph:
    """NoiseAR Golden Noise (no prior) -> SamplerCustomAdvanced."""
    golden = Node("golden", "NoiseARGoldenNoise", 1, 2.4, [SEED, "fixed", "normal", 50, 5.5, 1.0], height=210)
    custom, custom_links = custom_sampling_nodes("golden")
    return Graph(
        "noisear_sdxl_golden_noise",
        "Any SDXL-family, SD3 or Flux model, no prior needed: NoiseAR Golden Noise (one denoising + one inversion "
        "step with the model, about 3 evaluations) -> SamplerCustomAdvanced. Keep scheduler and steps equal to "
        "BasicScheduler's.",
        sdxl_base(golden, prior_reads_prompt=False) + custom,
        PROMPT_LINKS
        + [("ckpt", 0, "golden", "model"), ("pos", 0, "golden", "positive"), ("neg", 0, "golden", "negative")]
        + custom_links,
    )


COLLECT_PROMPTS = "\n".join(
    [
        "a lighthouse on a cliff at sunset, dramatic clouds, detailed photo",
        "a red panda reading a book under a tree, watercolor",
        "a bowl of ramen on a wooden table, studio lighting",
        "an astronaut riding a horse on the moon, digital art",
    ]
)


def collect_dataset_graph() -> Graph:
    """NoiseAR Dataset Collector for one bucket size, with its summary."""
    collector_widgets = [
        COLLECT_PROMPTS,
        4,
        0,
        "normal",
        50,
        5.5,
        1.0,
        "noisear_dataset/1024x1024",
        77,
        4,
        256,
        "sd_xl_base_1.0",
        0.0,
    ]
    return Graph(
        "noisear_collect_dataset",
        "Collect a NoiseAR training set for your model: golden noise for every prompt line and j < seeds_per_prompt, "
        "each pair from its own seed (a hash of first_seed, the prompt and j: no noise repeats across prompts), "
        "written as shards under output/noisear_dataset/<size>. Use many prompts, a few seeds each. Run once per "
        "size (aspect-ratio bucket), check with `python -m noisear data inspect output/noisear_dataset`, then "
        "train with `python -m noisear train output/noisear_dataset --positions 2d ...`; judge it by the held-out "
        "figures it prints (see docs/train-your-prior.md).",
        [
            Node("ckpt", "CheckpointLoaderSimple", 0, 0, ["sd_xl_base_1.0.safetensors"], height=100),
            Node("neg", "CLIPTextEncode", 1, 0, [NEGATIVE], "Negative prompt", 140),
            Node("latent", "EmptyLatentImage", 0, 1.1, [1024, 1024, 1], "Bucket size", 110),
            Node("collect", "NoiseARDatasetCollector", 2, 0, collector_widgets, height=520),
            Node("summary", "PreviewAny", 3, 0, [], "Summary", 120),
        ],
        [
            ("ckpt", 1, "neg", "clip"),
            ("ckpt", 0, "collect", "model"),
            ("ckpt", 1, "collect", "clip"),
            ("neg", 0, "collect", "negative"),
            ("latent", 0, "collect", "latent_image"),
            ("collect", 0, "summary", "source"),
        ],
    )


# A/B: one seed's batch under several noises, in one labelled picture (NoiseAR Compare Grid) ---------------------
COMPARE_BATCH = 4
COMPARE_SAMPLING = ["dpmpp_2m", "normal"]
COMPARE_STEPS, COMPARE_CFG = 50, 5.5
COMPARE_COLUMNS = "\n".join(f"image {i + 1}" for i in range(COMPARE_BATCH))
COMPARE_NOTE = (
    "A/B by eye: the same prompt and seed, a batch of {batch} images (ComfyUI draws a batch's Gaussian noise from "
    "one seed: four draws, one per column), sampled once per row. LatentBatch joins the rows' latents in order, "
    "one VAEDecode decodes them and NoiseAR Compare Grid writes one picture: a row per noise (labels on the left), "
    "a column per image. {rows}\n\nChange the seed, prompt or model freely; keep one line of row_labels per row."
)


def compare_graph(name: str, description: str, rows: list[tuple[str, Node]], note: str, extra: list[Node], links: list) -> Graph:
    """SDXL base graph with ``rows`` (label, sampler node whose output 0 is a LATENT) joined by LatentBatch in order,
    decoded once and laid out by NoiseAR Compare Grid; ``extra`` nodes and ``links`` wire the samplers' inputs."""
    join = max(node.column for _, node in rows) + 1  # the column right of the samplers
    base = sdxl_base(LOADER_SDXL, batch=COMPARE_BATCH)
    base.append(Node("compare_note", "Note", join + 1, 1.7, [note], "How to read the grid", 260))
    joins, join_links, previous = [], [], rows[0][1].key
    for i, (_, node) in enumerate(rows[1:], start=1):
        joins.append(Node(f"join{i}", "LatentBatch", join, 0.35 * (i - 1), [], height=70))
        join_links += [(previous, 0, f"join{i}", "samples1"), (node.key, 0, f"join{i}", "samples2")]
        previous = f"join{i}"
    labels = "\n".join(label for label, _ in rows)
    tail = [
        Node("decode", "VAEDecode", join, 0.35 * len(joins), [], height=50),
        Node("grid", "NoiseARCompareGrid", join, 0.35 * len(joins) + 0.4, [labels, COMPARE_COLUMNS], height=200),
        Node("save", "SaveImage", join + 1, 0, ["NoiseAR_compare"], height=400),
    ]
    tail_links = [(previous, 0, "decode", "samples"), ("ckpt", 2, "decode", "vae"), ("decode", 0, "grid", "images")]
    tail_links.append(("grid", 0, "save", "images"))
    return Graph(
        name,
        description,
        base + extra + [node for _, node in rows] + joins + tail,
        PROMPT_LINKS + links + join_links + tail_links,
    )


def ksampler_row(
    key: str, column: float, row: float, temperature: float | None
) -> tuple[list[Node], list[tuple[str, int, str, str]]]:
    """KSampler (temperature None) or NoiseAR KSampler at ``temperature``, same seed and settings, fed the prompts,
    the batch latent and (NoiseAR) the prior and the prompt's prior_text."""
    widgets = [SEED, "fixed", COMPARE_STEPS, COMPARE_CFG, *COMPARE_SAMPLING, 1.0]
    links = [
        ("ckpt", 0, key, "model"),
        ("pos", CONDITIONING, key, "positive"),
        ("neg", 0, key, "negative"),
        ("latent", 0, key, "latent_image"),
    ]
    if temperature is None:
        return [Node(key, "KSampler", column, row, widgets, "KSampler (Gaussian noise)", 270)], links
    node = Node(
        key, "NoiseARKSampler", column, row, widgets + [temperature, "any size"], f"NoiseAR KSampler, T {temperature:g}", 400
    )
    return [node], links + [("loader", 0, key, "noisear_model"), ("pos", PRIOR_TEXT, key, "prior_text")]


def compare_ksamplers_graph(name: str, description: str, temperatures: list[float], rows_note: str) -> Graph:
    """Core KSampler, then NoiseAR KSampler at each temperature: one row each."""
    rows, links = [], []
    for i, temperature in enumerate([None, *temperatures]):
        nodes, node_links = ksampler_row(f"sampler{i}", 2 + i // 2, 1.75 * (i % 2), temperature)  # two per column
        label = "KSampler (Gaussian)" if temperature is None else f"NoiseAR KSampler, temperature {temperature:g}"
        rows.append((label, nodes[0]))
        links += node_links
    return compare_graph(name, description, rows, COMPARE_NOTE.format(batch=COMPARE_BATCH, rows=rows_note), [], links)


BLEND_STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def compare_blend_graph() -> Graph:
    """NoiseAR Noise and RandomNoise mixed by NoiseAR Blend at each of BLEND_STRENGTHS, one SamplerCustomAdvanced
    per strength sharing sampler, schedule and guider."""
    shared = [
        prior_noise(),
        Node("gauss", "RandomNoise", 1, 3.4, [SEED + 1, "fixed"], height=80),
        Node("guider", "CFGGuider", 3, 3.45, [COMPARE_CFG], height=100),
        Node("select", "KSamplerSelect", 3, 3.95, [COMPARE_SAMPLING[0]], height=60),
        Node("sched", "BasicScheduler", 3, 4.3, [COMPARE_SAMPLING[1], COMPARE_STEPS, 1.0], height=110),
    ]
    links = [
        ("loader", 0, "noise", "noisear_model"),
        ("pos", PRIOR_TEXT, "noise", "positive"),
        ("ckpt", 0, "sched", "model"),
        ("ckpt", 0, "guider", "model"),
        ("pos", CONDITIONING, "guider", "positive"),
        ("neg", 0, "guider", "negative"),
    ]
    rows = []
    for i, strength in enumerate(BLEND_STRENGTHS):
        blend, sample = f"blend{i}", f"sample{i}"
        shared.append(Node(blend, "NoiseARBlend", 2, 0.68 * i, [strength, "linear", False], f"Blend {strength:g}", 130))
        rows.append((f"NoiseAR Blend, strength {strength:g}", Node(sample, "SamplerCustomAdvanced", 3, 0.68 * i, [], height=130)))
        links += [
            ("noise", 0, blend, "noisear_noise"),
            ("gauss", 0, blend, "gaussian_noise"),
            (blend, 0, sample, "noise"),
            ("guider", 0, sample, "guider"),
            ("select", 0, sample, "sampler"),
            ("sched", 0, sample, "sigmas"),
            ("latent", 0, sample, "latent_image"),
        ]
    note = COMPARE_NOTE.format(
        batch=COMPARE_BATCH,
        rows="Rows: NoiseAR Noise (the prior, temperature 0.5) mixed with RandomNoise by NoiseAR Blend (linear): "
        "strength 0 is RandomNoise's Gaussian noise exactly, 1 the NoiseAR noise exactly.",
    )
    return compare_graph(
        "noisear_sdxl_compare_blend",
        "A/B by strength: NoiseAR Noise mixed with RandomNoise by NoiseAR Blend at strengths "
        f"{', '.join(f'{s:g}' for s in BLEND_STRENGTHS)}, each through SamplerCustomAdvanced: one labelled "
        "grid, a row per strength, a column per image of the batch.",
        rows,
        note,
        shared,
        links,
    )


# Every newer model family: its standard graph with NoiseAR KSampler, and its Dataset Collector graph -------------
# The standard text-to-image graph (text-to-video for Wan) of each family as ComfyUI 0.3.64's workflow templates
# (comfyui-workflow-templates 0.1.95) build it: the same loaders, sampling patch, empty latent and sampler settings
# (Chroma's SamplerCustomAdvanced as KSampler), with KSampler swapped for NoiseAR KSampler. Where they differ: SD3.5
# gets ModelSamplingSD3 at its own shift 3 and Flux dev CLIPTextEncode + FluxGuidance (the template's
# CLIPTextEncodeFlux sets the same guidance value); HunyuanImage 2.1 and Lumina 2 have no template there, so their
# settings are this project's choice (the model's own sampling shift, common steps and cfg). Wan 2.2 14B follows its
# template's fp8_scaled group (two experts in series, 20 steps), not the 4-step LoRA group. Prompts are our own.
FAMILY_PROMPT = "a red fox in fresh snow at dawn, soft light, detailed photo"
VIDEO_PROMPT = "a red fox trotting through fresh snow at dawn, the camera tracking beside it, soft light"
LUMINA_SYSTEM = (  # Lumina 2's system prompt ("superior"), which its prompts start with
    "You are an assistant designed to generate superior images with the superior degree of image-text alignment "
    "based on textual prompts or user prompts. <Prompt Start> "
)
COLLECT_TEXT_TOKENS = 256  # prompt tokens stored per pair (padding left out); a longer prompt is refused


@dataclass(frozen=True)
class Standard:
    """One family's standard graph: ``loaders`` give MODEL, CLIP and VAE at ``model``, ``clip``, ``vae`` (node key,
    output slot); ``sampling`` patches the MODEL's shift (ModelSamplingSD3 / ModelSamplingAuraFlow) or is None;
    ``latent`` is the empty-latent node (Wan 2.2 5B's takes the VAE); ``ksampler`` KSampler's widgets;
    ``guidance`` FluxGuidance's value on the positive (Flux dev, cfg 1) or None; ``exact_text``: the prompt is
    NoiseAR Text Encode, whose prior_text marks the T5 padding (SD3, Flux); ``fps`` > 0: a video, saved by
    CreateVideo and SaveVideo; the collector's golden recipe follows from KSampler's widgets (:attr:`golden`);
    ``second_expert``: the loader of a second MODEL that takes over at half the steps (Wan 2.2 14B's low-noise
    expert; see ``samplers``) or None. The collector runs on the first MODEL, whose steps the golden step is in."""

    key: str  # workflows/noisear_<key>_ksampler.json and noisear_<key>_collect_dataset.json
    family: str  # noisear.families key
    title: str
    loaders: tuple[Node, ...]
    model: tuple[str, int]
    clip: tuple[str, int]
    vae: tuple[str, int]
    latent: Node
    ksampler: tuple
    prompt: str = FAMILY_PROMPT
    negative: str = NEGATIVE
    sampling: Node | None = None
    guidance: float | None = None
    exact_text: bool = False
    fps: int = 0
    note: str = ""
    second_expert: Node | None = None

    @property
    def golden(self) -> tuple[str, int, float, float]:
        """The collector's (scheduler, steps, cfg_denoise, cfg_invert): KSampler's scheduler and steps, its cfg for the
        denoising step (Flux dev: the FluxGuidance value, its embedded guidance) and 1 for the inversion."""
        _, _, steps, cfg, _, scheduler, _ = self.ksampler
        return scheduler, steps, self.guidance or cfg, 1.0


def unet(name: str) -> Node:
    return Node("unet", "UNETLoader", 0, 0, [name, "default"], height=90)


def clip_loader(name: str, kind: str) -> Node:
    return Node("clip", "CLIPLoader", 0, 0.45, [name, kind, "default"], height=130)


def vae_loader(name: str) -> Node:
    return Node("vae", "VAELoader", 0, 1.2, [name], height=60)


def ksampler_settings(steps: int, cfg: float, sampler: str, scheduler: str) -> tuple:
    return (SEED, "randomize", steps, cfg, sampler, scheduler, 1.0)


SPLIT = (("unet", 0), ("clip", 0), ("vae", 0))  # MODEL, CLIP and VAE from three loaders
T5_ENCODERS = ("clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", "default")
FLUX_NOTE = (
    "Flux dev is guidance-distilled: FluxGuidance sets the guidance value (3.5) and KSampler runs at cfg 1, so the "
    "negative prompt is not evaluated. The Dataset Collector's golden step uses the same recipe: cfg 1, the guidance "
    "value set to cfg_denoise for the step down and to cfg_invert for the step back."
)
STANDARDS = (
    Standard(
        "sd35",
        "sd3",
        "SD3.5 Large",
        (Node("ckpt", "CheckpointLoaderSimple", 0, 0, ["sd3.5_large.safetensors"], height=100),),
        ("ckpt", 0),
        ("ckpt", 1),
        ("ckpt", 2),
        Node("latent", "EmptySD3LatentImage", 1, 1.3, [1024, 1024, 1]),
        ksampler_settings(20, 4.0, "euler", "sgm_uniform"),
        sampling=Node("sampling", "ModelSamplingSD3", 0, 2.2, [3.0], height=60),
        exact_text=True,
    ),
    Standard(
        "flux_dev",
        "flux",
        "Flux.1 dev",
        (
            unet("flux1-dev.safetensors"),
            Node("clip", "DualCLIPLoader", 0, 0.45, list(T5_ENCODERS), height=150),
            vae_loader("ae.safetensors"),
        ),
        *SPLIT,
        Node("latent", "EmptySD3LatentImage", 1, 1.3, [1024, 1024, 1]),
        ksampler_settings(20, 1.0, "euler", "simple"),
        guidance=3.5,
        exact_text=True,
        note=FLUX_NOTE,
    ),
    Standard(
        "flux_schnell",
        "flux",
        "Flux.1 schnell",
        (
            unet("flux1-schnell.safetensors"),
            Node("clip", "DualCLIPLoader", 0, 0.45, list(T5_ENCODERS), height=150),
            vae_loader("ae.safetensors"),
        ),
        *SPLIT,
        Node("latent", "EmptySD3LatentImage", 1, 1.3, [1024, 1024, 1]),
        ksampler_settings(4, 1.0, "euler", "simple"),
        exact_text=True,
        note="Flux schnell is timestep-distilled: 4 steps at cfg 1 and no guidance input. Its golden noise is one "
        "step down and back with the same model, which moves the noise little: collect with a reward (the Dataset "
        "Collector's reward input) and keep only the pairs it says improve.",
    ),
    Standard(
        "chroma",
        "chroma",
        "Chroma",
        (
            unet("Chroma1-HD.safetensors"),
            clip_loader("t5xxl_fp16.safetensors", "chroma"),
            vae_loader("ae.safetensors"),
        ),
        *SPLIT,
        Node("latent", "EmptySD3LatentImage", 1, 1.3, [1024, 1024, 1]),
        ksampler_settings(26, 3.5, "euler", "beta"),
        sampling=Node("sampling", "ModelSamplingAuraFlow", 0, 2.2, [1.0], height=60),
    ),
    Standard(
        "chroma_radiance",
        "chroma-radiance",
        "Chroma Radiance (pixel space)",
        (
            unet("Chroma1-Radiance.safetensors"),
            clip_loader("t5xxl_fp16.safetensors", "chroma"),
            vae_loader("pixel_space"),
        ),
        *SPLIT,
        Node("latent", "EmptyChromaRadianceLatentImage", 1, 1.3, [1024, 1024, 1]),
        ksampler_settings(30, 3.5, "euler", "beta"),
        sampling=Node("sampling", "ModelSamplingAuraFlow", 0, 2.2, [1.0], height=60),
        note="Chroma Radiance samples pixels: its 'latent' is the image itself (3 channels, 1 px a cell), made by "
        "EmptyChromaRadianceLatentImage and decoded by the pixel_space VAE. Other empty-latent nodes are accepted "
        "without an error at 1/8 of the size.",
    ),
    Standard(
        "lumina2",
        "lumina2",
        "Lumina Image 2.0",
        (Node("ckpt", "CheckpointLoaderSimple", 0, 0, ["lumina_2.safetensors"], height=100),),
        ("ckpt", 0),
        ("ckpt", 1),
        ("ckpt", 2),
        Node("latent", "EmptySD3LatentImage", 1, 1.3, [1024, 1024, 1]),
        ksampler_settings(25, 4.0, "res_multistep", "simple"),
        prompt=LUMINA_SYSTEM + FAMILY_PROMPT,
        negative=LUMINA_SYSTEM + NEGATIVE,
        sampling=Node("sampling", "ModelSamplingAuraFlow", 0, 2.2, [6.0], height=60),
        note="Lumina 2's prompts start with its system prompt (up to '<Prompt Start>'). The prior reads the whole "
        "conditioning, system prompt included: collect its dataset with the same system prompt on every line.",
    ),
    Standard(
        "qwen_image",
        "qwen-image",
        "Qwen-Image",
        (
            unet("qwen_image_fp8_e4m3fn.safetensors"),
            clip_loader("qwen_2.5_vl_7b_fp8_scaled.safetensors", "qwen_image"),
            vae_loader("qwen_image_vae.safetensors"),
        ),
        *SPLIT,
        Node("latent", "EmptySD3LatentImage", 1, 1.3, [1328, 1328, 1]),
        ksampler_settings(20, 2.5, "euler", "simple"),
        sampling=Node("sampling", "ModelSamplingAuraFlow", 0, 2.2, [3.1], height=60),
    ),
    Standard(
        "hunyuan_image_2_1",
        "hunyuan-image-2.1",
        "HunyuanImage 2.1",
        (
            unet("hunyuanimage2.1_bf16.safetensors"),
            Node(
                "clip",
                "DualCLIPLoader",
                0,
                0.45,
                ["qwen_2.5_vl_7b.safetensors", "byt5_small_glyphxl_fp16.safetensors", "hunyuan_image", "default"],
                height=150,
            ),
            vae_loader("hunyuan_image_2.1_vae_fp16.safetensors"),
        ),
        *SPLIT,
        Node("latent", "EmptyHunyuanImageLatent", 1, 1.3, [2048, 2048, 1]),
        ksampler_settings(20, 3.5, "euler", "simple"),
        note="HunyuanImage 2.1's latent is 64 channels at 1/32 of the size: EmptyHunyuanImageLatent. Other "
        "empty-latent nodes are accepted without an error at 4x the resolution per side.",
    ),
    Standard(
        "wan2_1_t2v",
        "wan",
        "Wan 2.1 text-to-video 1.3B",
        (
            unet("wan2.1_t2v_1.3B_fp16.safetensors"),
            clip_loader("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan"),
            vae_loader("wan_2.1_vae.safetensors"),
        ),
        *SPLIT,
        Node("latent", "EmptyHunyuanLatentVideo", 1, 1.3, [832, 480, 33, 1], height=130),
        ksampler_settings(30, 6.0, "uni_pc", "simple"),
        prompt=VIDEO_PROMPT,
        negative="static, blurry, low quality, distorted, flicker",
        sampling=Node("sampling", "ModelSamplingSD3", 0, 2.2, [8.0], height=60),
        fps=16,
        note="33 frames make 9 latent frames (1 + (33 - 1) / 4); the prior draws the noise of all of them at once. "
        "A Wan prior is trained at one frame count: collect its dataset with this empty latent.",
    ),
    Standard(
        "wan2_2_14b",
        "wan",
        "Wan 2.2 T2V 14B (two experts)",
        (
            replace(unet("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"), title="High-noise expert"),
            clip_loader("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan"),
            vae_loader("wan_2.1_vae.safetensors"),
        ),
        *SPLIT,
        Node("latent", "EmptyHunyuanLatentVideo", 1, 1.3, [640, 640, 81, 1], height=130),
        ksampler_settings(20, 3.5, "euler", "simple"),
        prompt=VIDEO_PROMPT,
        negative="static, blurry, low quality, distorted, flicker",
        sampling=Node("sampling", "ModelSamplingSD3", 0, 2.2, [8.0], height=60),
        fps=16,
        note="Wan 2.2 14B samples with two experts of Wan 2.1 14B's shape (the prior's family is wan): the high-noise "
        "expert runs steps 0-10 of 20 from the prior's start noise and hands its leftover noise to the low-noise "
        "expert (KSamplerAdvanced, add_noise disable), which runs the rest. 81 frames make 21 latent frames. Collect "
        "the prior's dataset with the high-noise expert at this size (its collector graph).",
        second_expert=Node(
            "unet2", "UNETLoader", 1, 1.95, ["wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", "default"], "Low-noise expert", 90
        ),
    ),
    Standard(
        "wan2_2_5b",
        "wan2.2-5b",
        "Wan 2.2 TI2V 5B (text-to-video)",
        (
            unet("wan2.2_ti2v_5B_fp16.safetensors"),
            clip_loader("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan"),
            vae_loader("wan2.2_vae.safetensors"),
        ),
        *SPLIT,
        Node("latent", "Wan22ImageToVideoLatent", 1, 1.3, [1280, 704, 121, 1], height=150),
        ksampler_settings(20, 5.0, "uni_pc", "simple"),
        prompt=VIDEO_PROMPT,
        negative="static, blurry, low quality, distorted, flicker",
        sampling=Node("sampling", "ModelSamplingSD3", 0, 2.2, [8.0], height=60),
        fps=24,
        note="Wan 2.2 5B's latent is 48 channels at 1/16 of the size, 121 frames make 31 latent frames. Without a "
        "start image Wan22ImageToVideoLatent gives the empty latent of text-to-video.",
    ),
)


def standard_base(standard: Standard) -> tuple[list[Node], list[tuple[str, int, str, str]], tuple[str, int]]:
    """The family's loaders, sampling patch and empty latent -> (nodes, links, the MODEL the sampler takes)."""
    nodes, links, model = list(standard.loaders), [], standard.model
    if standard.sampling is not None:
        nodes.append(standard.sampling)
        links.append((*model, standard.sampling.key, "model"))
        model = (standard.sampling.key, 0)
    nodes.append(standard.latent)
    if standard.latent.type == "Wan22ImageToVideoLatent":
        links.append((*standard.vae, "latent", "vae"))
    return nodes, links, model


def family_prior(standard: Standard) -> Node:
    return Node("loader", "NoiseARLoader", 0, 1.6, [f"noisear_{standard.family}.safetensors", "auto", "fp32"])


def standard_ksampler_graph(standard: Standard) -> Graph:
    """The family's standard graph with KSampler swapped for NoiseAR KSampler (with a second expert: the first
    expert's sampler, see ``samplers``), fed the family's own prior."""
    nodes, links, model = standard_base(standard)
    prompt = (
        positive_prompt(standard.prompt)
        if standard.exact_text
        else Node("pos", "CLIPTextEncode", 1, 0, [standard.prompt], "Positive prompt (sampler + prior)", 140)
    )
    positive: tuple[str, int] = ("pos", CONDITIONING)
    nodes += [
        family_prior(standard),
        prompt,
        Node("neg", "CLIPTextEncode", 1, 0.65, [standard.negative], "Negative prompt", 140),
    ]
    sampler_nodes, sampler_links, keys = samplers(standard, model)
    first, last = keys[0], keys[-1]
    nodes += sampler_nodes + [Node("decode", "VAEDecode", 3, 0, [], height=50)]
    links += [(*standard.clip, "pos", "clip"), (*standard.clip, "neg", "clip"), *sampler_links]
    links += [("neg", 0, key, "negative") for key in keys] + [
        ("latent", 0, first, "latent_image"),
        ("loader", 0, first, "noisear_model"),
        (last, 0, "decode", "samples"),
        (*standard.vae, "decode", "vae"),
    ]
    if standard.guidance is not None:
        nodes.append(Node("guidance", "FluxGuidance", 2, 1.55, [standard.guidance], height=60))
        links.append(("pos", CONDITIONING, "guidance", "conditioning"))
        positive = ("guidance", 0)
    links += [(*positive, key, "positive") for key in keys]
    if standard.exact_text:
        links.append(("pos", PRIOR_TEXT, first, "prior_text"))
    if standard.fps:
        nodes += [
            Node("video", "CreateVideo", 3, 0.35, [float(standard.fps)], height=80),
            Node("save", "SaveVideo", 4, 0, ["video/ComfyUI", "auto", "auto"], height=300),
        ]
        links += [("decode", 0, "video", "images"), ("video", 0, "save", "video")]
    else:
        nodes.append(Node("save", "SaveImage", 4, 0, ["ComfyUI"], height=300))
        links.append(("decode", 0, "save", "images"))
    text = (
        "The prompt is NoiseAR Text Encode: its prior_text gives the prior the prompt without T5's padding."
        if standard.exact_text
        else "The prior reads the positive prompt's conditioning: this family's encoder says where the prompt ends."
    )
    swap = (
        "the first expert's KSamplerAdvanced swapped for NoiseAR KSampler (Advanced)"
        if standard.second_expert
        else "KSampler swapped for NoiseAR KSampler"
    )
    about = f"{standard.title}: the standard graph with {swap} (+ NoiseAR Loader with a prior trained for this family). "
    about += text
    nodes.append(Node("note", "Note", 0, 2.6, ["\n\n".join(filter(None, [about, standard.note]))], "About this graph", 240))
    kind = "text-to-video" if standard.fps else "text-to-image"
    return Graph(
        f"noisear_{standard.key}_ksampler",
        f"{standard.title}: its standard {kind} graph with {swap} and the NoiseAR Loader added (a prior trained for "
        "this family: see docs/train-your-prior.md).",
        nodes,
        links,
    )


def samplers(standard: Standard, model: tuple[str, int]) -> tuple[list[Node], list[tuple[str, int, str, str]], list[str]]:
    """The sampler nodes on ``model`` -> (nodes, links, the samplers' keys in order). One NoiseAR KSampler, or with a
    second expert the family template's two stages: NoiseAR KSampler (Advanced) draws the prior's start noise for the
    seed and runs steps 0 to half on ``model``, returning the leftover noise; KSamplerAdvanced (add_noise disable,
    the template's seed 0) runs the rest on the second expert's MODEL, patched as the first. The caller links the
    prompts to every sampler, the start latent and the prior to the first, the last one's LATENT to the decoder."""
    if standard.second_expert is None:
        node = Node("ksampler", "NoiseARKSampler", 2, 0, [*standard.ksampler, 0.5, "any size"], height=380)
        return [node], [(*model, "ksampler", "model")], ["ksampler"]
    seed, control, steps, cfg, sampler, scheduler, _ = standard.ksampler  # KSampler's widgets; denoise is 1
    half, expert = steps // 2, standard.second_expert
    nodes = [
        expert,
        Node(
            "ksampler",
            "NoiseARKSamplerAdvanced",
            2,
            0,
            ["enable", seed, control, steps, cfg, sampler, scheduler, 0, half, "enable", 0.5, "any size"],
            f"First expert, steps 0-{half}",
            450,
        ),
        Node(
            "ksampler2",
            "KSamplerAdvanced",
            2,
            1.85,
            ["disable", 0, "fixed", steps, cfg, sampler, scheduler, half, 10000, "disable"],
            f"Second expert, steps {half}-{steps}",
            330,
        ),
    ]
    links = [(*model, "ksampler", "model"), ("ksampler", 0, "ksampler2", "latent_image")]
    expert_model = (expert.key, 0)
    if standard.sampling is not None:
        nodes.append(replace(standard.sampling, key="sampling2", column=expert.column, row=expert.row + 0.45))
        links.append((*expert_model, "sampling2", "model"))
        expert_model = ("sampling2", 0)
    links.append((*expert_model, "ksampler2", "model"))
    return nodes, links, ["ksampler", "ksampler2"]


def standard_collect_graph(standard: Standard) -> Graph:
    """NoiseAR Dataset Collector on the family's MODEL (sampling patch included) at its standard size."""
    nodes, links, model = standard_base(standard)
    prefix = LUMINA_SYSTEM if standard.family == "lumina2" else ""
    prompts = "\n".join(prefix + line for line in COLLECT_PROMPTS.splitlines())
    size = "x".join(str(value) for value in standard.latent.widgets[:-1])  # width x height (x frames)
    scheduler, steps, cfg_denoise, cfg_invert = standard.golden
    widgets = [prompts, 4, 0, scheduler, steps, cfg_denoise, cfg_invert, f"noisear_dataset/{standard.key}/{size}"]
    widgets += [COLLECT_TEXT_TOKENS, 1 if standard.fps else 2, 256, standard.key, 0.0]
    nodes += [
        Node("neg", "CLIPTextEncode", 1, 0, [standard.negative], "Negative prompt", 140),
        Node("collect", "NoiseARDatasetCollector", 2, 0, widgets, height=520),
        Node("summary", "PreviewAny", 3, 0, [], "Summary", 120),
    ]
    links += [
        (*standard.clip, "neg", "clip"),
        (*model, "collect", "model"),
        (*standard.clip, "collect", "clip"),
        ("neg", 0, "collect", "negative"),
        ("latent", 0, "collect", "latent_image"),
        ("collect", 0, "summary", "source"),
    ]
    return Graph(
        f"noisear_{standard.key}_collect_dataset",
        f"{standard.title}: collect a NoiseAR training set with NoiseAR Dataset Collector on the family's MODEL at "
        f"its standard size ({size.replace('x', ' x ')}): golden noise by the family's recipe (scheduler and steps "
        "of its standard graph; see docs/train-your-prior.md for the recipe, the pairs to collect and their cost), "
        f"then `python -m noisear train output/noisear_dataset/{standard.key}/{size}`."
        + (
            " Of the two experts, the golden step (at the top of the schedule) is the first's: the collector runs on it."
            if standard.second_expert
            else ""
        ),
        nodes,
        links,
    )


def graphs() -> list[Graph]:
    """Every example workflow: one graph per file workflows/<name>.json."""
    return [
        one_node_swap("noisear_sdxl_ksampler", "sd_xl_base_1.0.safetensors", LOADER_SDXL),
        one_node_swap("noisear_hunyuan_dit_ksampler", "hunyuan_dit_1.2.safetensors", LOADER_DIT),
        sdxl_custom_graph(
            "noisear_sdxl_custom_sampler",
            "SDXL / DreamShaper-XL: NoiseAR Noise -> SamplerCustomAdvanced, with a preview of the start noise.",
            (1024, 1024),
        ),
        sdxl_custom_graph(
            "noisear_sdxl_832x1216",
            "SDXL at 832 x 1216 px (portrait bucket): the published prior decodes the latent with a sliding window "
            "(NoiseAR Preview says so); otherwise as the 1024 x 1024 custom-sampler workflow.",
            (832, 1216),
        ),
        sdxl_ksampler_advanced_graph(),
        sdxl_blend_graph(),
        hunyuan_dit_graph(),
        golden_noise_graph(),
        collect_dataset_graph(),
        compare_ksamplers_graph(
            "noisear_sdxl_compare",
            "A/B, see for yourself: the same prompt and seed's batch of 4 sampled with core KSampler and with "
            "NoiseAR KSampler, in one labelled grid (a row per noise, a column per image).",
            [0.5],
            "Rows: core KSampler (Gaussian noise) and NoiseAR KSampler (the prior's noise for the same Gaussian "
            "draws, temperature 0.5 as published).",
        ),
        compare_ksamplers_graph(
            "noisear_sdxl_compare_temperature",
            "A/B by temperature: core KSampler, then NoiseAR KSampler at temperature 0, 0.5 and 1 on the same seed's "
            "batch of 4, in one labelled grid (a row per noise, a column per image).",
            [0.0, 0.5, 1.0],
            "Rows: core KSampler (Gaussian noise), then NoiseAR KSampler at temperature 0 (the prior's mean: every "
            "column the same), 0.5 (as published) and 1.",
        ),
        compare_blend_graph(),
    ] + [graph for standard in STANDARDS for graph in (standard_ksampler_graph(standard), standard_collect_graph(standard))]


# UI format ----------------------------------------------------------------------------------------


def widget_values(node: Node) -> dict[str, object]:
    """The node's widget values by input name."""
    names = WIDGET_NAMES.get(node.type)
    if names is None or len(names) != len(node.widgets):
        raise ValueError(
            f"{node.key} ({node.type}): {len(node.widgets)} widget values, but WIDGET_NAMES lists "
            f"{names}; name them in WIDGET_NAMES in ComfyUI's order"
        )
    return dict(zip(names, node.widgets))


def node_ids(graph: Graph) -> dict[str, int]:
    """The UI node id of each node key (1, 2, ... in listing order)."""
    return {node.key: i + 1 for i, node in enumerate(graph.nodes)}


def intended_widgets(graph: Graph) -> dict[int, dict[str, object]]:
    """{UI node id: {input name: value}}: what the UI must show once the workflow is loaded."""
    ids = node_ids(graph)
    return {ids[node.key]: widget_values(node) for node in graph.nodes}


COLUMN_WIDTH, ROW_HEIGHT, NODE_WIDTH = 380, 260, 320


def to_ui(graph: Graph) -> dict:
    """UI-format (version 0.4) workflow: nodes with sockets and widget values, numbered links."""
    ids = node_ids(graph)
    ui_nodes = {}
    for node in graph.nodes:
        inputs, outputs = SOCKETS[node.type]
        ui_nodes[node.key] = {
            "id": ids[node.key],
            "type": node.type,
            "pos": [round(node.column * COLUMN_WIDTH), round(node.row * ROW_HEIGHT)],
            "size": [NODE_WIDTH, node.height],
            "flags": {},
            "order": ids[node.key] - 1,
            "mode": 0,
            "inputs": [{"name": name, "type": kind, "link": None} for name, kind in inputs],
            "outputs": [
                {"name": name, "type": kind, "links": [], "slot_index": slot} for slot, (name, kind) in enumerate(outputs)
            ],
            "properties": {"Node name for S&R": node.type} if node.type != "Note" else {"text": ""},
            "widgets_values": list(widget_values(node).values()),
        }
        if node.title:
            ui_nodes[node.key]["title"] = node.title
    links = []
    for link_id, (source, slot, target, input_name) in enumerate(graph.links, start=1):
        kind = ui_nodes[source]["outputs"][slot]["type"]
        target_slot = [i["name"] for i in ui_nodes[target]["inputs"]].index(input_name)
        ui_nodes[target]["inputs"][target_slot]["link"] = link_id
        ui_nodes[source]["outputs"][slot]["links"].append(link_id)
        links.append([link_id, ids[source], slot, ids[target], target_slot, kind])
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "noisear/" + graph.name)),
        "revision": 0,
        "last_node_id": len(graph.nodes),
        "last_link_id": len(links),
        "nodes": list(ui_nodes.values()),
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.8, "offset": [40, 40]}, "info": {"description": graph.description}},
        "version": 0.4,
    }


# Pictures -----------------------------------------------------------------------------------------
THUMBNAIL_WIDTH = 640


def pictures(screenshots: Path, names: list[str]) -> None:
    """<name>.jpg thumbnails (ComfyUI's template browser shows them) and the docs pictures, from the browser
    test's screenshots <name>.png in ``screenshots``."""
    from PIL import Image

    for name in names:
        with Image.open(screenshots / f"{name}.png") as shot:
            shot = shot.convert("RGB")
            if name in DOCS_PICTURES:
                shot.save(DOCS_PICTURES[name])
            shot.thumbnail((THUMBNAIL_WIDTH, THUMBNAIL_WIDTH))
            shot.save(HERE / f"{name}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pictures",
        metavar="SHOTS",
        type=Path,
        help="also make thumbnails and docs pictures from the browser test's screenshots in SHOTS",
    )
    args = parser.parse_args()
    for graph in graphs():
        (HERE / f"{graph.name}.json").write_text(json.dumps(to_ui(graph), indent=1) + "\n")
        print(f"wrote {graph.name}")
    if args.pictures:
        pictures(args.pictures, [graph.name for graph in graphs()])


if __name__ == "__main__":
    main()
