"""Hostile values inside a real ComfyUI: API workflows carrying NaN and hostile checkpoints are clear node errors.

ComfyUI's own min/max check lets NaN through (every comparison with NaN is False), so the nodes check.
"""

from __future__ import annotations

import json
import os
import time

import torch
from safetensors.torch import save_file
from test_comfyui_host import PRIOR, execution_error, graph, prior_name, saved_latents  # noqa: F401  (a fixture)

from noisear import NoiseAR, save


def test_nan_temperature_from_an_api_workflow_is_a_clear_node_error(comfy, prior_name):  # noqa: F811
    prompt = graph(prior_name)
    prompt["noise"]["inputs"]["temperature"] = float("nan")  # json.dumps writes NaN, ComfyUI's server reads it
    error = execution_error(comfy.run(prompt))
    assert error["node_type"] == "NoiseARNoise"
    assert "NoiseAR Noise: temperature must be a number from 0 to 2, got nan" in error["exception_message"]


def test_nan_blend_strength_from_an_api_workflow_is_a_clear_node_error(comfy, prior_name):  # noqa: F811
    """(inf is caught by ComfyUI's own max check; NaN is not.)"""
    error = execution_error(comfy.run(graph(prior_name, blend_strengths=(float("nan"),))))
    assert error["node_type"] == "NoiseARBlend"
    assert "NoiseAR Blend: strength must be a number from 0 to 1, got nan" in error["exception_message"]


def test_a_hostile_checkpoint_is_refused_at_once_with_one_line(comfy, prior_name):  # noqa: F811
    """A 25 KB file whose metadata claims 100,000 layers: refused before anything is built."""
    config = {
        "patch_size": 4,
        "channels": 4,
        "latent_height": 16,
        "latent_width": 16,
        "d_model": 32,
        "d_ff": 64,
        "n_layers": 100000,
        "n_heads": 1,
        "text_dim": 2048,
        "dropout": 0.0,
        "positions": "table",
    }
    path = comfy.extra_priors / "hostile.safetensors"
    save_file({"learnable_start_token_emb": torch.zeros(32)}, str(path), metadata={"noisear_config": json.dumps(config)})
    start = time.monotonic()
    try:
        error = execution_error(comfy.run(graph("hostile.safetensors")))
    finally:
        path.unlink()  # the folder is shared by the session's tests
    assert time.monotonic() - start < 60  # the whole prompt round trip; the refusal itself is milliseconds
    assert error["node_type"] == "NoiseARLoader"
    assert error["exception_message"].strip() == "hostile.safetensors: n_layers must be between 1 and 64, got 100000"


def test_the_missing_checkpoint_message_appears_once_in_the_prompt_errors(comfy, prior_name):  # noqa: F811
    """ComfyUI attaches a VALIDATE_INPUTS message to each input the function takes; the dialog lists them all."""
    status, body = comfy.post_prompt(graph("sdxl_and_dreamshaper.safetensors"))
    assert status in (200, 400) and "prior" in body["node_errors"], body
    messages = [e for e in body["node_errors"]["prior"]["errors"] if "NoiseAR checkpoints go in" in e["details"]]
    assert len(messages) == 1 and messages[0]["extra_info"]["input_name"] == "ckpt_name", messages


def noise_graph(prior: str) -> dict:
    """Loader -> NoiseAR Noise -> its draw for one 128 x 128 px latent, saved."""

    def node(class_type: str, **inputs) -> dict:
        return {"class_type": class_type, "inputs": inputs}

    return {
        "positive": node("NoiseARTestConditioning", width=2048, tokens=77, seed=1),
        "empty": node("EmptyLatentImage", width=128, height=128, batch_size=1),
        "prior": node("NoiseARLoader", ckpt_name=prior, device="auto", dtype="fp32"),
        "noise": node(
            "NoiseARNoise",
            noisear_model=["prior", 0],
            positive=["positive", 0],
            noise_seed=5,
            temperature=0.5,
            size_mode="any size",
        ),
        "draw": node("NoiseARTestDrawNoise", noise=["noise", 0], latent_image=["empty", 0]),
        "save_drawn": node("SaveLatent", samples=["draw", 0], filename_prefix="hardening/replaced"),
    }


def test_a_checkpoint_replaced_with_the_same_mtime_and_size_draws_with_the_new_file(comfy, tmp_path):
    """cp -p / rsync -a keep the mtime; ComfyUI must not reuse the Loader's cached output for the old file."""
    path, name = comfy.extra_priors / "replaced.safetensors", "replaced.safetensors"
    files = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        save(NoiseAR(PRIOR), tmp_path / f"prior{seed}.safetensors")
        files[seed] = (tmp_path / f"prior{seed}.safetensors").read_bytes()
    assert len(files[0]) == len(files[1])
    path.write_bytes(files[0])
    try:
        first = saved_latents(comfy, comfy.run(noise_graph(name)))["drawn"]
        stat = path.stat()
        with open(path, "r+b") as handle:  # cp -p onto the file: same inode, same size, mtime set back
            handle.write(files[1])
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        second = saved_latents(comfy, comfy.run(noise_graph(name)))["drawn"]
        (tmp_path / "incoming").write_bytes(files[0])  # rsync -a: a new file renamed over it, mtime kept
        os.utime(tmp_path / "incoming", ns=(stat.st_atime_ns, stat.st_mtime_ns))
        os.replace(tmp_path / "incoming", path)
        third = saved_latents(comfy, comfy.run(noise_graph(name)))["drawn"]
    finally:
        path.unlink(missing_ok=True)  # the folder is shared by the session's tests
    assert not torch.equal(second, first) and torch.equal(third, first)
