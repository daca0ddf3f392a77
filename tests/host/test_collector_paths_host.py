"""The Dataset Collector in a real ComfyUI refuses dataset names that lead out of the output folder
(a shared workflow cannot make it write elsewhere) or hide their real name, writes a nested relative name inside
it, and on a re-run skips exactly what is written while refusing another size or MODEL."""

from __future__ import annotations

import os

import torch
from safetensors.torch import save_file
from test_comfyui_host import execution_error
from test_own_prior_e2e import conds, model_nodes, node

LORA_FILE = "noisear_test_lora.safetensors"
LORA_TARGET = "diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q"  # a [64, 64] weight of the tiny SDXL


def collector(
    dataset: str,
    width: int = 64,
    model_seed: int = 0,
    seeds: int = 1,
    lora: float | None = None,
    clip_seed: int | None = None,
    kind: str = "epsilon",
) -> dict:
    nodes = model_nodes(kind)
    nodes["base"]["inputs"]["seed"] = model_seed  # another seed: another tiny SDXL's weights
    if lora is not None:
        nodes["lora"] = node("LoraLoaderModelOnly", model=["base", 0], lora_name=LORA_FILE, strength_model=lora)
        nodes["model"]["inputs"]["model"] = ["lora", 0]
    clip = node("NoiseARTestCLIP") if clip_seed is None else node("NoiseARTestTinySDXLClip", seed=clip_seed)
    return {
        **nodes,
        "negative": conds()["negative"],
        "clip": clip,
        "empty": node("EmptyLatentImage", width=width, height=64, batch_size=1),
        "collect": node(
            "NoiseARDatasetCollector",
            model=["model", 0],
            clip=["clip", 0],
            prompts="a cube",
            negative=["negative", 0],
            latent_image=["empty", 0],
            seeds_per_prompt=seeds,
            first_seed=0,
            scheduler="normal",
            steps=2,
            cfg_denoise=5.5,
            cfg_invert=1.0,
            dataset=dataset,
            text_tokens=77,  # the 77 tokens SDXL-width CLIPs give: a prompt is stored whole, never cut
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


def test_names_with_control_or_bidirectional_characters_are_refused(comfy):
    names = ["hidden\u202etxt", "two\nlines", "esc\x1b[31m"]
    for name in names:
        error = execution_error(comfy.run(collector(name)))
        assert "must not hold control or bidirectional-formatting characters" in error["exception_message"], error
    assert not set(names) & set(os.listdir(comfy.base / "output"))


def test_a_rerun_skips_exactly_what_is_written_and_another_size_or_model_is_refused(comfy):
    folder = comfy.base / "output" / "runs_host" / "64x64"

    def shards() -> dict[str, bytes]:
        return {path.name: path.read_bytes() for path in sorted(folder.glob("*.safetensors"))}

    first = comfy.run(collector("runs_host/64x64", seeds=2))
    assert "wrote 2, skipped 0" in first["outputs"]["collect"]["text"][0], first
    written = shards()
    again = comfy.run(collector("runs_host/64x64", seeds=3))  # the MODEL is loaded now: the same identity
    assert "wrote 1, skipped 2" in again["outputs"]["collect"]["text"][0], again
    written = shards() | written
    refusals = {
        "another size": (collector("runs_host/64x64", width=128, seeds=3), "set dataset to runs_host/128x64"),
        "another MODEL": (collector("runs_host/64x64", model_seed=1, seeds=3), "was collected with another MODEL"),
    }
    for change, (prompt, message) in refusals.items():
        error = execution_error(comfy.run(prompt))
        assert error["node_type"] == "NoiseARDatasetCollector" and message in error["exception_message"], (change, error)
        assert shards() == written, change


def test_a_lora_is_part_of_the_model_and_a_loaded_patched_model_is_the_same_model(comfy):
    """ComfyUI patches a LoRA into the weights while the model is loaded: the identity must not see that."""
    loras = comfy.base / "models" / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    save_file(
        {
            f"{LORA_TARGET}.lora_up.weight": torch.randn(64, 2, generator=generator),
            f"{LORA_TARGET}.lora_down.weight": torch.randn(2, 64, generator=generator),
        },
        str(loras / LORA_FILE),
    )
    name = "lora_host/64x64"
    assert "wrote 2, skipped 0" in comfy.run(collector(name, seeds=2, lora=1.0))["outputs"]["collect"]["text"][0]
    assert "wrote 1, skipped 2" in comfy.run(collector(name, seeds=3, lora=1.0))["outputs"]["collect"]["text"][0]
    for strength in (None, 0.5):
        error = execution_error(comfy.run(collector(name, seeds=4, lora=strength)))
        assert "another MODEL (what differs: the weight patches (LoRAs))" in error["exception_message"], (strength, error)


def test_another_text_encoder_is_refused(comfy):
    """ComfyUI's own SDXL text encoders with other (random) weights: another encoder for the same prompts."""
    name = "clip_host/64x64"
    assert "wrote 2" in comfy.run(collector(name, seeds=2, clip_seed=0))["outputs"]["collect"]["text"][0]
    assert "wrote 0, skipped 2" in comfy.run(collector(name, seeds=2, clip_seed=0))["outputs"]["collect"]["text"][0]
    error = execution_error(comfy.run(collector(name, seeds=2, clip_seed=1)))
    assert "differs from what the text encoder gives now" in error["exception_message"], error


def test_the_sampling_another_graph_left_on_the_model_does_not_change_its_identity(comfy):
    """ComfyUI leaves a ModelSampling* object patch on the shared model after a run; the next graph's MODEL,
    before it is loaded, still has it. The sampling is recorded in the dataset info, not in the identity."""
    name = "sampling_host/64x64"
    assert "wrote 1" in comfy.run(collector(name, seeds=1))["outputs"]["collect"]["text"][0]
    assert "wrote 1" in comfy.run(collector("sampling_host_flow/64x64", seeds=1, kind="flow"))["outputs"]["collect"]["text"][0]
    assert "wrote 1, skipped 1" in comfy.run(collector(name, seeds=2))["outputs"]["collect"]["text"][0]
