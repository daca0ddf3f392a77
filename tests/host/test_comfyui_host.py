"""The pack inside a real ComfyUI (see conftest.py for how it is started; skipped without COMFYUI_PATH).

Graphs run over a tiny random SDXL-family MODEL (tests/host/comfy_test_nodes) and a tiny random
NoiseAR prior for 16x16 latents (128x128 px) in 4x4 patches, taking 2048-d SDXL-width conditioning.
"""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import comfy_checkout
from PIL import Image
from safetensors.torch import load_file

from noisear import NoiseAR, NoiseARConfig, save

WORKFLOW_DIR = Path(__file__).resolve().parents[2] / "workflows"
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.json"))
NOISEAR_NODES = {
    "NoiseARLoader",
    "NoiseARNoise",
    "NoiseARLatent",
    "NoiseARBlend",
    "NoiseARPreview",
    "NoiseARKSampler",
    "NoiseARKSamplerAdvanced",
    "NoiseARTextEncode",
}
FRONTEND_ONLY = {"Note", "MarkdownNote"}  # the UI's own note nodes: not in /object_info, no links
PRIOR = NoiseARConfig(patch_size=4, channels=4, latent_height=16, latent_width=16, d_model=32, d_ff=64, text_dim=2048)
PRIOR_FILE = "tiny16.safetensors"
SIGMA_MAX, SDXL_SCALE = 14.6146, 0.13025
SEED = 42


@pytest.fixture(scope="module")
def prior_name(comfy) -> str:
    torch.manual_seed(0)
    save(NoiseAR(PRIOR), comfy.extra_priors / PRIOR_FILE)
    return PRIOR_FILE


def graph(
    prior: str,
    *,
    cond_width: int = 2048,
    size: int = 128,
    batch: int = 2,
    dtype: str = "fp32",
    blend_strengths: tuple[float, ...] = (0.0, 1.0),
    size_mode: str = "any size",
) -> dict:
    """API-format prompt: both NoiseAR paths over one tiny SDXL, their starts and results saved."""

    def node(class_type: str, **inputs) -> dict:
        return {"class_type": class_type, "inputs": inputs}

    prompt = {
        "model": node("NoiseARTestTinySDXL", seed=0),
        "positive": node("NoiseARTestConditioning", width=cond_width, tokens=154, seed=1),
        "negative": node("NoiseARTestConditioning", width=2048, tokens=77, seed=2),
        "empty": node("EmptyLatentImage", width=size, height=size, batch_size=batch),
        "prior": node("NoiseARLoader", ckpt_name=prior, device="auto", dtype=dtype),
        "noise": node(
            "NoiseARNoise",
            noisear_model=["prior", 0],
            positive=["positive", 0],
            noise_seed=SEED,
            temperature=0.5,
            size_mode=size_mode,
        ),
        "start": node(
            "NoiseARLatent",
            model=["model", 0],
            noisear_model=["prior", 0],
            positive=["positive", 0],
            noise_seed=SEED,
            temperature=0.5,
            size_mode=size_mode,
            latent_image=["empty", 0],
        ),
        "sampler": node("KSamplerSelect", sampler_name="euler"),
        "sigmas": node("BasicScheduler", model=["model", 0], scheduler="normal", steps=2, denoise=1.0),
        "guider": node("CFGGuider", model=["model", 0], positive=["positive", 0], negative=["negative", 0], cfg=2.0),
        "custom": node(
            "SamplerCustomAdvanced",
            noise=["noise", 0],
            guider=["guider", 0],
            sampler=["sampler", 0],
            sigmas=["sigmas", 0],
            latent_image=["empty", 0],
        ),
        "ksampler": node(
            "KSamplerAdvanced",
            model=["model", 0],
            add_noise="disable",
            noise_seed=SEED,
            steps=2,
            cfg=2.0,
            sampler_name="euler",
            scheduler="normal",
            positive=["positive", 0],
            negative=["negative", 0],
            latent_image=["start", 0],
            start_at_step=0,
            end_at_step=10000,
            return_with_leftover_noise="disable",
        ),
        "gaussian": node("RandomNoise", noise_seed=SEED),
        # eps from an upstream RandomNoise(SEED) instead of its own (different) seed widget
        "noise_upstream": node(
            "NoiseARNoise",
            noisear_model=["prior", 0],
            positive=["positive", 0],
            noise_seed=7,
            temperature=0.5,
            size_mode=size_mode,
            noise=["gaussian", 0],
        ),
        "preview": node("NoiseARPreview", noise=["noise", 0], latent_image=["empty", 0]),
    }
    saves = {"custom": ["custom", 0], "ksampler": ["ksampler", 0], "start": ["start", 0]}
    for name, source in (("drawn", "noise"), ("eps", "gaussian"), ("upstream", "noise_upstream")):
        prompt[f"draw_{name}"] = node("NoiseARTestDrawNoise", noise=[source, 0], latent_image=["empty", 0])
        saves[name] = [f"draw_{name}", 0]
    for i, strength in enumerate(blend_strengths):
        prompt[f"blend{i}"] = node(
            "NoiseARBlend",
            noisear_noise=["noise", 0],
            gaussian_noise=["gaussian", 0],
            strength=strength,
            mode="variance-preserving",
            renormalize=False,
        )
        prompt[f"draw_blend{i}"] = node("NoiseARTestDrawNoise", noise=[f"blend{i}", 0], latent_image=["empty", 0])
        saves[f"blend{i}"] = [f"draw_blend{i}", 0]
    for name, source in saves.items():
        prompt[f"save_{name}"] = node("SaveLatent", samples=source, filename_prefix=f"host/{name}")
    return prompt


def saved_latents(comfy, entry: dict) -> dict[str, torch.Tensor]:
    latents = {}
    for node_id, output in entry["outputs"].items():
        for record in output.get("latents", []):
            path = comfy.base / "output" / record["subfolder"] / record["filename"]
            latents[node_id.removeprefix("save_")] = load_file(str(path))["latent_tensor"]
    return latents


def execution_error(entry: dict) -> dict:
    assert entry["status"]["status_str"] == "error"
    return next(data for kind, data in entry["status"]["messages"] if kind == "execution_error")


# The pack loads ---------------------------------------------------------------------------------------
def test_the_pack_loads_without_import_failures(comfy, prior_name):
    log = comfy.log.read_text()
    failures = [line for line in log.splitlines() if "IMPORT FAILED" in line or "Cannot import" in line]
    ours = [line for line in failures if "custom_nodes" in line or "(IMPORT FAILED)" in line]
    assert not ours, "\n".join(ours)
    info = comfy.get("/object_info")
    assert NOISEAR_NODES <= set(info)
    assert prior_name in info["NoiseARLoader"]["input"]["required"]["ckpt_name"][0]  # from extra_model_paths.yaml


# Workflows --------------------------------------------------------------------------------------------
def widget_inputs(definition: dict) -> list[tuple[str, object]]:
    """(name, spec) of the inputs the UI shows as widgets, in order: combos and primitive types."""
    inputs = []
    for group in ("required", "optional"):
        for name, spec in definition["input"].get(group, {}).items():
            kind = spec[0]
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                inputs.append((name, spec))
    return inputs


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_matches_object_info(comfy, path):
    info = comfy.get("/object_info")
    workflow = json.loads(path.read_text())
    assert workflow["version"] == 0.4
    nodes = {node["id"]: node for node in workflow["nodes"] if node["type"] not in FRONTEND_ONLY}
    for node in nodes.values():
        assert node["type"] in info, f"{path.name}: unknown node type {node['type']}"
        definition = info[node["type"]]
        widgets = widget_inputs(definition)
        linked_widgets = {i["name"] for i in node.get("inputs", []) if i.get("widget") and i.get("link") is not None}
        expected = sum(
            1 + bool(spec[1].get("control_after_generate")) if len(spec) > 1 else 1
            for name, spec in widgets
            if name not in linked_widgets
        )
        assert len(node.get("widgets_values", [])) == expected, f"{path.name}: {node['type']} widget values"
    for link_id, origin, origin_slot, target, target_slot, kind in workflow["links"]:
        out_type = info[nodes[origin]["type"]]["output"][origin_slot]
        target_input = nodes[target]["inputs"][target_slot]
        all_inputs = {
            **info[nodes[target]["type"]]["input"]["required"],
            **info[nodes[target]["type"]]["input"].get("optional", {}),
        }
        in_type = all_inputs[target_input["name"]][0]
        assert out_type == kind and target_input["type"] in (kind, "*"), f"{path.name}: link {link_id} carries {kind}"
        assert in_type in (out_type, "*"), f"{path.name}: link {link_id} {out_type} -> {in_type}"
        assert target_input["link"] == link_id and link_id in nodes[origin]["outputs"][origin_slot]["links"]


# Graphs run ------------------------------------------------------------------------------------------
def test_noise_and_latent_paths_start_from_the_same_state(comfy, prior_name):
    entry = comfy.run(graph(prior_name))
    assert entry["status"]["status_str"] == "success", entry["status"]
    latents = saved_latents(comfy, entry)
    drawn, eps, start = latents["drawn"], latents["eps"], latents["start"]
    assert drawn.shape == eps.shape == (2, 4, 16, 16)
    assert not torch.equal(drawn, eps) and drawn.std() < 0.8 * eps.std()  # temperature 0.5 prior, not plain noise
    torch.testing.assert_close(start, drawn * math.sqrt(1 + SIGMA_MAX**2) / SDXL_SCALE, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(latents["custom"], latents["ksampler"], rtol=1e-4, atol=1e-4)
    assert torch.equal(latents["blend0"], eps) and torch.equal(latents["blend1"], drawn)
    assert torch.equal(latents["upstream"], drawn)  # the seed widget's eps is RandomNoise's eps
    assert entry["outputs"]["preview"]["images"], "NoiseAR Preview showed no image"


def test_wrong_conditioning_width_is_a_clear_node_error(comfy, prior_name):
    error = execution_error(comfy.run(graph(prior_name, cond_width=768)))
    assert error["node_type"] in ("NoiseARNoise", "NoiseARLatent")
    assert "768-d" in error["exception_message"] and "SDXL" in error["exception_message"]


def test_any_size_runs_at_a_size_that_is_not_native_nor_whole_patches(comfy, prior_name):
    """200 x 200 px: latent 25 x 25 cells, a sliding window over 7 x 7 patches of the 16 x 16-cell prior."""
    entry = comfy.run(graph(prior_name, size=200))
    assert entry["status"]["status_str"] == "success", entry["status"]
    latents = saved_latents(comfy, entry)
    assert latents["drawn"].shape == (2, 4, 25, 25) and torch.isfinite(latents["drawn"]).all()
    assert latents["drawn"].std() < 0.8 * latents["eps"].std()  # the prior's noise everywhere, no Gaussian border
    torch.testing.assert_close(latents["custom"], latents["ksampler"], rtol=1e-4, atol=1e-4)
    assert "sliding window over 7 x 7 patches" in entry["outputs"]["preview"]["text"][0]


def test_native_only_refuses_another_size_naming_both_sizes(comfy, prior_name):
    error = execution_error(comfy.run(graph(prior_name, size=192, size_mode="native only")))
    # whichever node draws the NOISE first reports it (ComfyUI's execution order): the Latent, the Preview,
    # or the sampler a NOISE's error is attributed to
    assert error["node_type"] in ("NoiseARLatent", "NoiseARPreview", "SamplerCustomAdvanced")
    assert "native to 128 x 128 px (W x H), latent 16 x 16 cells (H x W)" in error["exception_message"]
    assert "this latent is 192 x 192 px (W x H), latent 24 x 24 cells (H x W)" in error["exception_message"]


def test_the_retired_centre_mode_passes_validation_and_runs_as_any_size(comfy, prior_name):
    entry = comfy.run(graph(prior_name, size=192, size_mode="centre + Gaussian border"))
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert "was retired" in entry["outputs"]["preview"]["text"][0]


def test_fp16_on_the_cpu_is_refused_when_the_loader_runs(comfy, prior_name):
    error = execution_error(comfy.run(graph(prior_name, dtype="fp16")))
    assert error["node_type"] == "NoiseARLoader" and "fp16 runs on a GPU only" in error["exception_message"]


def test_a_missing_checkpoint_says_where_files_go_and_which_fits_which_model(comfy, prior_name):
    status, body = comfy.post_prompt(graph("sdxl_and_dreamshaper.safetensors"))
    assert status in (200, 400) and "prior" in body["node_errors"], body
    details = " ".join(e["details"] for e in body["node_errors"]["prior"]["errors"])
    assert str(comfy.extra_priors) in details and str(comfy.base / "models" / "noisear") in details
    assert "found: " + prior_name in details and "dit for Hunyuan-DiT v1.2" in details
    assert "-m noisear convert" in details


# NoiseAR Text Encode (the numbers of the full-size encoders: test_text_parity.py) ----------------------------
SHORT_PROMPT = "a lighthouse on a cliff at sunset"
LONG_PROMPT = ", ".join([SHORT_PROMPT] * 12)  # over 75 CLIP tokens: two 77-token chunks


def text_routes_graph(prior: str, text: str) -> dict:
    """NoiseAR Latent fed by NoiseAR Text Encode's prior_text ("exact") and by CLIPTextEncode ("route")."""

    def node(class_type: str, **inputs) -> dict:
        return {"class_type": class_type, "inputs": inputs}

    prompt = {
        "clip": node("NoiseARTestTinySDXLClip", seed=0),
        "encode": node("NoiseARTextEncode", clip=["clip", 0], text=text),
        "plain": node("CLIPTextEncode", clip=["clip", 0], text=text),
        "model": node("NoiseARTestTinySDXL", seed=0),
        "empty": node("EmptyLatentImage", width=128, height=128, batch_size=1),
        "prior": node("NoiseARLoader", ckpt_name=prior, device="auto", dtype="fp32"),
    }
    for route, source in (("exact", ["encode", 1]), ("route", ["plain", 0])):
        prompt[f"start_{route}"] = node(
            "NoiseARLatent",
            model=["model", 0],
            noisear_model=["prior", 0],
            positive=source,
            noise_seed=SEED,
            temperature=0.5,
            size_mode="native only",
            latent_image=["empty", 0],
        )
        prompt[f"save_{route}"] = node("SaveLatent", samples=[f"start_{route}", 0], filename_prefix=f"text/{route}")
    return prompt


def text_routes(comfy, prior: str, text: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(start latents, NoiseAR Latent info texts shown in the UI) of both routes."""
    entry = comfy.run(text_routes_graph(prior, text))
    assert entry["status"]["status_str"] == "success", entry["status"]
    infos = {route: "".join(entry["outputs"][f"start_{route}"]["text"]) for route in ("exact", "route")}
    return saved_latents(comfy, entry), infos


def test_text_encode_prior_text_equals_clip_text_encode_for_a_plain_short_prompt(comfy, prior_name):
    latents, infos = text_routes(comfy, prior_name, SHORT_PROMPT)
    assert torch.equal(latents["exact"], latents["route"])
    assert "WARNING" not in infos["exact"] + infos["route"]


def test_text_encode_long_prompt_the_clip_text_encode_route_warns_in_the_ui(comfy, prior_name):
    latents, infos = text_routes(comfy, prior_name, LONG_PROMPT)
    assert "154 tokens" in infos["route"] and "prior_text" in infos["route"]  # this own prior reads all 154
    assert "WARNING" not in infos["exact"]
    assert not torch.equal(latents["exact"], latents["route"])


def test_text_encode_weight_syntax_reaches_only_the_clip_text_encode_route(comfy, prior_name):
    latents, infos = text_routes(comfy, prior_name, "(red:1.2) car")
    assert not torch.equal(latents["exact"], latents["route"])
    assert "WARNING" not in infos["exact"] + infos["route"]  # weights cannot be seen in a conditioning


# The A/B workflows (NoiseAR Compare Grid) -------------------------------------------------------------------------
COMPARE = ["noisear_sdxl_compare", "noisear_sdxl_compare_temperature", "noisear_sdxl_compare_blend"]
CELL = 128  # px: the tiny prior's native 16 x 16 latent
TAESD_SCRIPT = """
import sys, torch
from safetensors.torch import save_file
from comfy.cli_args import args
args.cpu = True  # as the suite's ComfyUI runs (--cpu)
import comfy.taesd.taesd as taesd
generator = torch.Generator().manual_seed(0)
for part, build in (("encoder", taesd.Encoder), ("decoder", taesd.Decoder)):
    state = {}
    for key, value in build(4).state_dict().items():  # ComfyUI's layers skip initialisation
        fan_in = value[0].numel() if value.ndim > 1 else 1
        state[key] = torch.randn(value.shape, generator=generator) / fan_in**0.5 if value.ndim > 1 else torch.zeros(value.shape)
    save_file(state, sys.argv[1] + "/taesdxl_" + part + ".safetensors")
"""


@pytest.fixture(scope="module")
def tiny_vae(comfy) -> str:
    """A TAESD-XL encoder/decoder pair with random weights, built with ComfyUI's own classes, in the base's
    models/vae_approx: VAELoader offers it as "taesdxl" (a real VAE that decodes any latent size, 8 px per cell)."""
    checkout, python = comfy_checkout()
    folder = comfy.base / "models" / "vae_approx"
    folder.mkdir(parents=True, exist_ok=True)
    made = subprocess.run([str(python), "-c", TAESD_SCRIPT, str(folder)], cwd=checkout, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr[-3000:]
    return "taesdxl"


def generator_module():
    """workflows/make_workflows.py as a module (workflows/ is not a package)."""
    sys.path.insert(0, str(WORKFLOW_DIR))
    try:
        return importlib.import_module("make_workflows")
    finally:
        sys.path.remove(str(WORKFLOW_DIR))


def api_prompt(name: str, prior: str, vae: str) -> dict:
    """workflows/<name>.json as an API prompt over the test stand-ins, widget values by input name from the
    generator: the checkpoint's MODEL, CLIP and VAE become NoiseARTestTinySDXL, NoiseARTestTinySDXLClip and
    VAELoader(``vae``), the NoiseAR Loader reads ``prior``, latents are CELL px square and sampling takes 2 steps.
    A SaveImage "cells" is added on the grid's images input."""
    generator = generator_module()
    graph = next(graph for graph in generator.graphs() if graph.name == name)
    widgets = generator.intended_widgets(graph)
    workflow = json.loads((WORKFLOW_DIR / f"{name}.json").read_text())
    links = {link[0]: link for link in workflow["links"]}
    checkpoint = next(str(node["id"]) for node in workflow["nodes"] if node["type"] == "CheckpointLoaderSimple")
    prompt = {
        f"{checkpoint}_0": {"class_type": "NoiseARTestTinySDXL", "inputs": {"seed": 0}},
        f"{checkpoint}_1": {"class_type": "NoiseARTestTinySDXLClip", "inputs": {"seed": 0}},
        f"{checkpoint}_2": {"class_type": "VAELoader", "inputs": {"vae_name": vae}},
    }
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node["type"] == "CheckpointLoaderSimple":
            continue
        inputs = {key: value for key, value in widgets[node["id"]].items() if key != "control_after_generate"}
        for socket in node["inputs"]:
            if socket["link"] is not None:
                _, origin, slot, *_ = links[socket["link"]]
                inputs[socket["name"]] = [f"{origin}_{slot}", 0] if str(origin) == checkpoint else [str(origin), slot]
        if "steps" in inputs:
            inputs["steps"] = 2
        if node["type"] == "EmptyLatentImage":
            inputs.update(width=CELL, height=CELL)
        if node["type"] == "NoiseARLoader":
            inputs.update(ckpt_name=prior)
        if node["type"] == "SaveImage":
            inputs.update(filename_prefix=f"compare/{name}")
        if node["type"] == "NoiseARCompareGrid":
            prompt["cells"] = {
                "class_type": "SaveImage",
                "inputs": {"images": inputs["images"], "filename_prefix": f"compare/{name}_cells"},
            }
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def saved_images(comfy, output: dict) -> list[np.ndarray]:
    """The 8-bit RGB pixels [H, W, 3] of a SaveImage's files, in batch order."""
    return [
        np.asarray(Image.open(comfy.base / "output" / record["subfolder"] / record["filename"]).convert("RGB"), dtype=np.int16)
        for record in output["images"]
    ]


@pytest.mark.parametrize("name", COMPARE)
def test_compare_workflow_renders_one_grid_a_row_per_noise_a_column_per_image(comfy, prior_name, tiny_vae, name):
    from nodes.compare_grid import grid_spacing, labels

    prompt = api_prompt(name, prior_name, tiny_vae)
    grid_node = next(node for node in prompt.values() if node["class_type"] == "NoiseARCompareGrid")
    rows, columns = labels(grid_node["inputs"]["row_labels"]), labels(grid_node["inputs"]["column_labels"])
    entry = comfy.run(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    save = next(key for key, node in prompt.items() if node["class_type"] == "SaveImage" and key != "cells")
    (grid,) = saved_images(comfy, entry["outputs"][save])
    cells = saved_images(comfy, entry["outputs"]["cells"])
    assert len(cells) == len(rows) * len(columns) == len(rows) * 4 and all(c.shape == (CELL, CELL, 3) for c in cells)

    font_size, padding = grid_spacing(CELL)
    assert grid.shape[0] == padding + font_size + padding + len(rows) * (CELL + padding)  # column labels, then the rows
    label_margin = grid.shape[1] - len(columns) * (CELL + padding)
    assert label_margin > 0 and (grid[-len(rows) * (CELL + padding) :, :label_margin] < 128).any()  # row labels' ink
    for r in range(len(rows)):
        for c in range(len(columns)):
            top = grid.shape[0] - (len(rows) - r) * (CELL + padding)
            left = grid.shape[1] - (len(columns) - c) * (CELL + padding)
            cell = grid[top : top + CELL, left : left + CELL]
            assert np.abs(cell - cells[r * len(columns) + c]).max() <= 1, (name, r, c)  # rounding vs truncation to 8 bits
    first_row, second_row = np.stack(cells[: len(columns)]), np.stack(cells[len(columns) : 2 * len(columns)])
    assert np.abs(first_row - second_row).max() > 8, "two noises gave the same images"
    if name == "noisear_sdxl_compare_temperature":  # temperature 0: the prior's mean, whatever the Gaussian draw
        zero = cells[len(columns) : 2 * len(columns)]
        assert rows[1].endswith("temperature 0") and all(np.abs(image - zero[0]).max() <= 1 for image in zero)
        assert max(np.abs(image - cells[0]).max() for image in cells[1 : len(columns)]) > 8  # the Gaussian row varies
