"""Every model family's workflow files (workflows/noisear_<family>_ksampler.json and _collect_dataset.json) queued in
a real ComfyUI over the tiny stand-ins (see conftest.py; skipped without COMFYUI_PATH).

Each file becomes an API prompt with the generator's widget values by input name; what needs model files is
swapped for the test stand-ins of test_family_nodes_host.py: the loaders' MODEL for the family's tiny random model,
their CLIP for its tiny text encoder (SD3, Flux, Chroma) or its CLIP stand-in, their VAE for the pixel_space VAE,
the NoiseAR Loader's file for a random own prior of the family (both of Wan 2.2 14B's experts become the one tiny
model). Sizes shrink to SIZE px (Wan: FRAMES frames), steps to STEPS (a two-stage graph's switch step with them), the
collector to one seed per prompt; the image or video at the end (VAEDecode and what saves it) is replaced by a
SaveLatent "save" of the LATENT VAEDecode decodes. Everything else (sampling patches, FluxGuidance, NoiseAR Text
Encode, the KSampler and golden settings, the empty-latent node) runs as the file says.
"""

from __future__ import annotations

import importlib
import json
import sys

import pytest
import torch
from test_comfyui_host import FRONTEND_ONLY, WORKFLOW_DIR, saved_latents
from test_families_host import FAMILIES as STANDARD
from test_families_host import FRAMES, SIZE
from test_family_nodes_host import KEYS, priors  # noqa: F401  (priors: the module's fixture)

from noisear.families import family_of_comfy_model
from noisear.train.data import ShardDataset

# workflow family key (make_workflows.STANDARDS) -> ComfyUI supported_models class of its tiny stand-in
COMFY_MODEL = {
    "sd35": "SD3",
    "flux_dev": "Flux",
    "flux_schnell": "FluxSchnell",
    "chroma": "Chroma",
    "chroma_radiance": "ChromaRadiance",
    "lumina2": "Lumina2",
    "qwen_image": "QwenImage",
    "hunyuan_image_2_1": "HunyuanImage21",
    "wan2_1_t2v": "WAN21_T2V",
    "wan2_2_14b": "WAN21_T2V",  # Wan 2.2 14B's experts have Wan 2.1 14B's shape
    "wan2_2_5b": "WAN22_T2V",
}
LOADERS = ("CheckpointLoaderSimple", "UNETLoader", "CLIPLoader", "DualCLIPLoader", "VAELoader")
PICTURES = ("VAEDecode", "SaveImage", "CreateVideo", "SaveVideo")  # replaced by a SaveLatent
STEPS = 2


def generator():
    sys.path.insert(0, str(WORKFLOW_DIR))
    try:
        return importlib.import_module("make_workflows")
    finally:
        sys.path.remove(str(WORKFLOW_DIR))


def test_every_family_has_its_two_workflows():
    assert {standard.key for standard in generator().STANDARDS} == set(COMFY_MODEL)
    for key in COMFY_MODEL:
        assert (WORKFLOW_DIR / f"noisear_{key}_ksampler.json").is_file()
        assert (WORKFLOW_DIR / f"noisear_{key}_collect_dataset.json").is_file()


def api_prompt(name: str, comfy_model: str, prior: str) -> dict:
    """workflows/<name>.json as an API prompt over the stand-ins (see the module doc)."""
    graph = next(graph for graph in generator().graphs() if graph.name == name)
    widgets = generator().intended_widgets(graph)
    workflow = json.loads((WORKFLOW_DIR / f"{name}.json").read_text())
    links = {link[0]: link for link in workflow["links"]}
    loader_ids = {node["id"] for node in workflow["nodes"] if node["type"] in LOADERS}
    encoder = STANDARD[comfy_model].real_encoder
    prompt = {
        "tiny_MODEL": {"class_type": "NoiseARTestTinyModel", "inputs": {"family": comfy_model, "seed": 0}},
        "tiny_CLIP": {"class_type": "NoiseARTestTinyTextEncoder", "inputs": {"family": encoder, "seed": 0}}
        if encoder
        else {"class_type": "NoiseARTestFamilyCLIP", "inputs": {"family": comfy_model}},
        "tiny_VAE": {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}},
    }
    for node in workflow["nodes"]:
        if node["type"] in (*LOADERS, *FRONTEND_ONLY):
            continue
        inputs = {key: value for key, value in widgets[node["id"]].items() if key != "control_after_generate"}
        for socket in node["inputs"]:
            if socket["link"] is not None:
                _, origin, slot, _, _, kind = links[socket["link"]]
                inputs[socket["name"]] = [f"tiny_{kind}", 0] if origin in loader_ids else [str(origin), slot]
        if "steps" in inputs:
            for key in ("start_at_step", "end_at_step"):
                if key in inputs and inputs[key] <= inputs["steps"]:  # a step of the schedule, not "to the end"
                    inputs[key] = inputs[key] * STEPS // inputs["steps"]
            inputs["steps"] = STEPS
        if "width" in inputs:
            inputs.update(width=SIZE, height=SIZE)
        if "length" in inputs:
            inputs["length"] = FRAMES
        if node["type"] == "NoiseARLoader":
            inputs["ckpt_name"] = prior
        if node["type"] == "NoiseARDatasetCollector":
            inputs.update(seeds_per_prompt=1, dataset=f"family_workflows/{name}")
        if node["type"] == "VAEDecode":
            prompt["save"] = save_latent(inputs["samples"], name)
        if node["type"] not in PICTURES:
            prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def save_latent(samples: list, name: str) -> dict:
    return {"class_type": "SaveLatent", "inputs": {"samples": samples, "filename_prefix": f"family_workflows/{name}"}}


@pytest.mark.parametrize("key", COMFY_MODEL)
def test_the_familys_noisear_ksampler_workflow_samples_the_familys_latent(comfy, priors, key):  # noqa: F811
    comfy_model = COMFY_MODEL[key]
    prompt = api_prompt(f"noisear_{key}_ksampler", comfy_model, priors[KEYS[comfy_model]])
    entry = comfy.run(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    latent = saved_latents(comfy, entry)["save"]
    assert tuple(latent.shape) == STANDARD[comfy_model].latent and torch.isfinite(latent).all()


@pytest.mark.parametrize("key", COMFY_MODEL)
def test_the_familys_collect_dataset_workflow_writes_the_familys_pairs(comfy, key):
    comfy_model, name = COMFY_MODEL[key], f"noisear_{key}_collect_dataset"
    prompt = api_prompt(name, comfy_model, prior="")
    entry = comfy.run(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    prompts = next(node for node in prompt.values() if node["class_type"] == "NoiseARDatasetCollector")["inputs"]["prompts"]
    data = ShardDataset(comfy.base / "output" / "family_workflows" / name)
    family = family_of_comfy_model(comfy_model)
    assert len(data) == len(prompts.splitlines()) and data.info.family == family.key
    shape = STANDARD[comfy_model].latent[1:]
    assert data.item_shapes["noise"] == (shape if family.video else (shape[0], *shape[-2:]))


def test_the_two_expert_workflow_equals_noisear_noise_into_the_first_expert_then_the_second(comfy, priors):  # noqa: F811
    """Wan 2.2 14B: NoiseAR KSampler (Advanced) to the switch step, then KSamplerAdvanced to the end, gives what the
    same graph gives with its first stage as NoiseAR Noise -> SamplerCustomAdvanced over the sigmas up to the switch
    step (SplitSigmas); the second stage moves the latent on."""
    name = "noisear_wan2_2_14b_ksampler"
    prompt = api_prompt(name, "WAN21_T2V", priors[KEYS["WAN21_T2V"]])
    first_id, first = next((key, node) for key, node in prompt.items() if node["class_type"] == "NoiseARKSamplerAdvanced")
    second_id, second = next((key, node) for key, node in prompt.items() if node["class_type"] == "KSamplerAdvanced")
    stage = first["inputs"]
    assert second["inputs"]["latent_image"] == [first_id, 0] and prompt["save"]["inputs"]["samples"] == [second_id, 0]
    assert (stage["add_noise"], stage["start_at_step"], stage["return_with_leftover_noise"]) == ("enable", 0, "enable")
    assert (second["inputs"]["add_noise"], second["inputs"]["start_at_step"]) == ("disable", stage["end_at_step"])
    prior = {key: stage[key] for key in ("noisear_model", "positive", "noise_seed", "temperature", "size_mode")}
    prompt |= {
        "noise": {"class_type": "NoiseARNoise", "inputs": prior},
        "sigmas": {
            "class_type": "BasicScheduler",
            "inputs": {"model": stage["model"], "scheduler": stage["scheduler"], "steps": stage["steps"], "denoise": 1.0},
        },
        "split": {"class_type": "SplitSigmas", "inputs": {"sigmas": ["sigmas", 0], "step": stage["end_at_step"]}},
        "guider": {
            "class_type": "CFGGuider",
            "inputs": {key: stage[key] for key in ("model", "positive", "negative", "cfg")},
        },
        "select": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": stage["sampler_name"]}},
        "custom": {
            "class_type": "SamplerCustomAdvanced",
            "inputs": {
                "noise": ["noise", 0],
                "guider": ["guider", 0],
                "sampler": ["select", 0],
                "sigmas": ["split", 0],
                "latent_image": stage["latent_image"],
            },
        },
        "second_after_custom": {"class_type": "KSamplerAdvanced", "inputs": {**second["inputs"], "latent_image": ["custom", 0]}},
        "save_custom": save_latent(["second_after_custom", 0], f"{name}_custom"),
        "save_first": save_latent([first_id, 0], f"{name}_first"),
    }
    entry = comfy.run(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    latents = saved_latents(comfy, entry)
    result = latents["save"]
    assert tuple(result.shape) == STANDARD["WAN21_T2V"].latent and torch.isfinite(result).all()
    assert torch.equal(result, latents["custom"])
    assert (result - latents["first"]).abs().max() > 0.01 * result.abs().max()  # the second stage ran
