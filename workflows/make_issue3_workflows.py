"""Writes the golden-noise and dataset-collector example workflows with make_workflows.py's helpers.

python workflows/make_issue3_workflows.py               # the .json files
python workflows/make_issue3_workflows.py --pictures SHOTS  # also <name>.jpg thumbnails (see make_workflows.py)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_workflows as base  # noqa: E402

base.SOCKETS.update(
    {
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
    }
)
base.WIDGET_NAMES.update(
    {
        "NoiseARGoldenNoise": [*base.SEED_NAMES, "scheduler", "steps", "cfg_denoise", "cfg_invert"],
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
    }
)
PROMPTS = "\n".join(
    [
        "a lighthouse on a cliff at sunset, dramatic clouds, detailed photo",
        "a red panda reading a book under a tree, watercolor",
        "a bowl of ramen on a wooden table, studio lighting",
        "an astronaut riding a horse on the moon, digital art",
    ]
)


def graphs() -> list:
    Node, Graph = base.Node, base.Graph
    golden = Node("golden", "NoiseARGoldenNoise", 1, 2.4, [base.SEED, "fixed", "normal", 50, 5.5, 1.0], height=210)
    custom, custom_links = base.custom_sampling_nodes("golden")
    golden_graph = Graph(
        "noisear_sdxl_golden_noise",
        "Any SDXL-family, SD3 or Flux model, no prior needed: NoiseAR Golden Noise (one denoising + one inversion "
        "step with the model, about 3 evaluations) -> SamplerCustomAdvanced. Keep scheduler and steps equal to "
        "BasicScheduler's.",
        base.sdxl_base(golden, prior_reads_prompt=False) + custom,
        base.PROMPT_LINKS
        + [("ckpt", 0, "golden", "model"), ("pos", 0, "golden", "positive"), ("neg", 0, "golden", "negative")]
        + custom_links,
    )

    collect = Graph(
        "noisear_collect_dataset",
        "Collect a NoiseAR training set for your model: golden noise for every prompt line and j < seeds_per_prompt, "
        "each pair from its own seed (a hash of first_seed, the prompt and j: no noise repeats across prompts), "
        "written as shards under output/noisear_dataset/<size>. Use many prompts, a few seeds each. Run once per "
        "size (aspect-ratio bucket), check with `python -m noisear data inspect output/noisear_dataset`, then "
        "train with `python -m noisear train output/noisear_dataset --positions 2d ...`; judge it by the held-out "
        "figures it prints (see docs/train-your-prior.md).",
        [
            Node("ckpt", "CheckpointLoaderSimple", 0, 0, ["sd_xl_base_1.0.safetensors"], height=100),
            Node("neg", "CLIPTextEncode", 1, 0, [base.NEGATIVE], "Negative prompt", 140),
            Node("latent", "EmptyLatentImage", 0, 1.1, [1024, 1024, 1], "Bucket size", 110),
            Node(
                "collect",
                "NoiseARDatasetCollector",
                2,
                0,
                [PROMPTS, 4, 0, "normal", 50, 5.5, 1.0, "noisear_dataset/1024x1024", 77, 4, 256, "sd_xl_base_1.0", 0.0],
                height=520,
            ),
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
    return [golden_graph, collect]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pictures",
        metavar="SHOTS",
        type=Path,
        help="also make thumbnails from the browser test's screenshots in SHOTS (see make_workflows.py)",
    )
    args = parser.parse_args()
    for graph in graphs():
        (HERE / f"{graph.name}.json").write_text(json.dumps(base.to_ui(graph), indent=1) + "\n")
        print(f"wrote {graph.name}")
    if args.pictures:
        base.pictures(args.pictures, [graph.name for graph in graphs()])


if __name__ == "__main__":
    main()
