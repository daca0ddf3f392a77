"""The Dataset Collector in a real ComfyUI refuses dataset names that lead out of the output folder
(a shared workflow cannot make it write elsewhere), and writes a nested relative name inside it."""

from __future__ import annotations

import os

from test_comfyui_host import execution_error
from test_own_prior_e2e import conds, model_nodes, node


def collector(dataset: str) -> dict:
    return {
        **model_nodes("epsilon"),
        "negative": conds()["negative"],
        "clip": node("NoiseARTestCLIP"),
        "empty": node("EmptyLatentImage", width=64, height=64, batch_size=1),
        "collect": node(
            "NoiseARDatasetCollector",
            model=["model", 0],
            clip=["clip", 0],
            prompts="a cube",
            negative=["negative", 0],
            latent_image=["empty", 0],
            seeds_per_prompt=1,
            first_seed=0,
            scheduler="normal",
            steps=2,
            cfg_denoise=5.5,
            cfg_invert=1.0,
            dataset=dataset,
            text_tokens=8,
            batch_size=1,
            shard_size=4,
            model_name="tiny-sdxl",
        ),
    }


def test_names_leading_out_of_the_output_folder_are_refused_and_nothing_is_written(comfy, tmp_path):
    output = comfy.base / "output"
    output.mkdir(exist_ok=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (output / "escape_link").symlink_to(outside, target_is_directory=True)
    hostile = {
        "../../../../" + str(outside / "up").lstrip("/"): "saving outside the output folder is not allowed",
        "../escape_up": "saving outside the output folder is not allowed",
        str(outside / "absolute"): "relative to ComfyUI's output folder",
        "escape_link/set": "saving outside the output folder is not allowed",
    }
    for name, message in hostile.items():
        error = execution_error(comfy.run(collector(name)))
        assert error["node_type"] == "NoiseARDatasetCollector" and message in error["exception_message"], error
    assert os.listdir(outside) == [] and not (comfy.base / "escape_up").exists()


def test_a_nested_relative_name_is_written_inside_the_output_folder(comfy):
    entry = comfy.run(collector("paths_host/sdxl/64x64"))
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert "wrote 1" in entry["outputs"]["collect"]["text"][0]
    assert (comfy.base / "output" / "paths_host" / "sdxl" / "64x64" / "shard-00000.safetensors").exists()
