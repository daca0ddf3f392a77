"""Hostile values inside a real ComfyUI: API workflows carrying NaN and hostile checkpoints are clear node errors.

ComfyUI's own min/max check lets NaN through (every comparison with NaN is False), so the nodes check.
"""

from __future__ import annotations

import json
import time

import torch
from safetensors.torch import save_file
from test_comfyui_host import execution_error, graph, prior_name  # noqa: F401  (prior_name is a fixture)


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
