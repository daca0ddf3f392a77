"""NoiseAR Text Encode in the real ComfyUI: prior_text is exactly the embedding the priors are trained on.

HEAVY: one subprocess (tests/host/text_parity.py, ComfyUI's Python) builds ComfyUI's full-size SDXL
CLIP-L + CLIP-bigG and Hunyuan-DiT's 24-layer BERT with shared random weights, one model at a time
(gigabytes of memory and minutes of CPU: docs/comfyui.md, "Tests", has the figures).
Skipped without COMFYUI_PATH, or with ``-m "not heavy"``.

On the 77 tokens a NoiseAR node hands the prior, for every prompt class: NoiseAR Text Encode's
prior_text equals diffusers' encode_prompt rule (transformers) and noisear.train.text_encoders (text
and mask) to 1e-4 (the measured differences: docs/comfyui.md); CLIPTextEncode's conditioning equals them for plain
prompts of up to 75 tokens and differs, as docs/comfyui.md says, for weight syntax and long prompts.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import comfy_python

pytestmark = pytest.mark.heavy
SCRIPT = Path(__file__).resolve().parent / "text_parity.py"
FAMILIES = ("sdxl", "hunyuan")
PLAIN = ("empty", "short", "exactly 75 tokens", "non-ASCII")
EXACT = 1e-4  # fp32 encoders through different attention kernels
DIFFERENT = 1e-2  # what "differs" means: far above float noise


@pytest.fixture(scope="module")
def figures(tmp_path_factory) -> dict:
    checkout = os.environ.get("COMFYUI_PATH")
    python = comfy_python(Path(checkout)) if checkout else None
    if python is None or not python.exists():
        pytest.skip("host suite: set COMFYUI_PATH to a ComfyUI checkout (and COMFYUI_PYTHON to its Python)")
    out = tmp_path_factory.mktemp("parity") / "figures.json"
    run = subprocess.run(
        [str(python), str(SCRIPT), str(out), *FAMILIES], cwd=checkout, capture_output=True, text=True, timeout=3600
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    print(run.stdout)
    return json.loads(out.read_text())


@pytest.mark.parametrize("family", FAMILIES)
def test_prior_text_is_the_training_embedding_for_every_prompt_class(figures, family):
    for name, row in figures[family]["prompts"].items():
        assert row["exact_vs_reference"]["max"] < EXACT, (name, row)
        assert row["exact_vs_train"]["max"] < EXACT, (name, row)
        assert row["reference_vs_train"]["max"] < EXACT, (name, row)  # diffusers' rule = noisear train's encoders
        assert row["mask_equals_train"] and row["mask_equals_reference"], (name, row)
        assert row["prior_text_shape"][1] == 77 and row["exact_marker"] and row["exact_warning"] is None, name
        assert row["conditioning_equals_clip_text_encode"], name  # the sampler output is CLIPTextEncode's


@pytest.mark.parametrize("family", FAMILIES)
def test_clip_text_encode_equals_it_for_plain_prompts_of_up_to_75_tokens(figures, family):
    for name in PLAIN:
        row = figures[family]["prompts"][name]
        assert row["route_vs_reference"]["max"] < EXACT and row["route_warning"] is None, (name, row)


@pytest.mark.parametrize("family", FAMILIES)
def test_clip_text_encode_differs_for_weight_syntax_without_a_warning(figures, family):
    row = figures[family]["prompts"]["weighted"]
    assert row["route_vs_reference"]["max"] > DIFFERENT and row["route_warning"] is None  # invisible in the tensor


def test_a_long_sdxl_prompt_reaches_the_prior_as_its_first_chunk_with_a_warning(figures):
    row = figures["sdxl"]["prompts"]["longer than 75"]
    assert row["route_tokens"] == 154 and "154 tokens" in row["route_warning"]
    assert row["route_vs_reference"]["max"] < EXACT  # ComfyUI's first 77-token chunk is diffusers' truncation


def test_a_long_hunyuan_prompt_differs_even_in_its_first_77_tokens_with_a_warning(figures):
    row = figures["hunyuan"]["prompts"]["longer than 75"]
    assert row["route_tokens"] > 77 and "one pass" in row["route_warning"]
    assert row["route_vs_reference"]["max"] > DIFFERENT  # BERT attends past token 77


@pytest.mark.parametrize("family", FAMILIES)
def test_comfyuis_default_fp16_text_encoders_are_close_but_not_exact(figures, family):
    assert EXACT / 100 < figures[family]["fp16_short"]["max"] < 0.1
