"""Golden noise and the own-prior loop in a real headless ComfyUI (see conftest.py; skipped without COMFYUI_PATH).

Golden noise on epsilon, v-prediction and flow versions of the tiny SDXL-family MODEL, and the
"train a prior for your model" loop: collect golden noise in two aspect-ratio buckets with the
Dataset Collector, train a 2-D prior with `python -m noisear train`, load it with the Loader and
sample at both sizes (and a third, untrained one) through SamplerCustomAdvanced.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch
from test_comfyui_host import saved_latents

from noisear.train.data import ShardDataset

SEED = 42
# (width, height) in pixels -> latent (height/8, width/8); both multiples of the prior's 4x4 patch
BUCKETS = {"96x128": (96, 128), "128x96": (128, 96)}
PROMPTS = [f"a photo of object number {i} on a table" for i in range(16)]


def node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def model_nodes(kind: str) -> dict:
    """The tiny SDXL as an epsilon model, or patched to v-prediction / flow (SD3-style shift) by core nodes."""
    nodes = {"base": node("NoiseARTestTinySDXL", seed=0)}
    if kind == "v":
        nodes["model"] = node("ModelSamplingDiscrete", model=["base", 0], sampling="v_prediction", zsnr=False)
    elif kind == "flow":
        nodes["model"] = node("ModelSamplingSD3", model=["base", 0], shift=3.0)
    else:
        nodes["model"] = node("ModelSamplingDiscrete", model=["base", 0], sampling="eps", zsnr=False)
    return nodes


def conds() -> dict:
    return {
        "positive": node("NoiseARTestConditioning", width=2048, tokens=77, seed=1),
        "negative": node("NoiseARTestConditioning", width=2048, tokens=77, seed=2),
    }


def sampler_nodes(noise: str, latent: str, tag: str, steps: int = 4) -> dict:
    return {
        f"sampler_{tag}": node("KSamplerSelect", sampler_name="euler"),
        f"sigmas_{tag}": node("BasicScheduler", model=["model", 0], scheduler="normal", steps=steps, denoise=1.0),
        f"guider_{tag}": node("CFGGuider", model=["model", 0], positive=["positive", 0], negative=["negative", 0], cfg=3.0),
        f"custom_{tag}": node(
            "SamplerCustomAdvanced",
            noise=[noise, 0],
            guider=[f"guider_{tag}", 0],
            sampler=[f"sampler_{tag}", 0],
            sigmas=[f"sigmas_{tag}", 0],
            latent_image=[latent, 0],
        ),
        f"save_sampled_{tag}": node("SaveLatent", samples=[f"custom_{tag}", 0], filename_prefix=f"e2e/sampled_{tag}"),
    }


@pytest.mark.parametrize("kind", ["epsilon", "v", "flow"])
def test_golden_noise_keeps_unit_std_and_samples(comfy, kind):
    prompt = {
        **model_nodes(kind),
        **conds(),
        "empty": node("EmptyLatentImage", width=128, height=96, batch_size=4),
        "eps": node("RandomNoise", noise_seed=SEED),
    }
    for tag, (w_l, w_w) in {"default": (5.5, 1.0), "equal": (3.0, 3.0)}.items():
        prompt[f"golden_{tag}"] = node(
            "NoiseARGoldenNoise",
            model=["model", 0],
            positive=["positive", 0],
            negative=["negative", 0],
            noise_seed=SEED,
            scheduler="normal",
            steps=20,
            cfg_denoise=w_l,
            cfg_invert=w_w,
        )
    for source in ("eps", "golden_default", "golden_equal"):
        prompt[f"draw_{source}"] = node("NoiseARTestDrawNoise", noise=[source, 0], latent_image=["empty", 0])
        prompt[f"save_{source}"] = node("SaveLatent", samples=[f"draw_{source}", 0], filename_prefix=f"e2e/{source}")
    prompt.update(sampler_nodes("golden_default", "empty", "golden"))
    entry = comfy.run(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    latents = saved_latents(comfy, entry)
    eps, golden, equal = latents["eps"], latents["golden_default"], latents["golden_equal"]
    assert golden.shape == eps.shape == (4, 4, 12, 16) and torch.isfinite(golden).all()
    change = float((golden - eps).norm() / eps.norm())
    round_trip = float((equal - eps).norm() / eps.norm())
    print(
        f"\n{kind}: std eps {eps.std():.4f} golden {golden.std():.4f}; |golden-eps|/|eps| {change:.2e}; "
        f"equal guidances |x'-eps|/|eps| {round_trip:.2e}"
    )
    assert abs(float(golden.std()) / float(eps.std()) - 1) < 0.05  # unit variance kept
    assert 0 < change < 0.5 and round_trip < 0.05
    assert torch.isfinite(latents["sampled_golden"]).all()


def collect_bucket(comfy, name: str, width: int, height: int, prompts: list[str], seeds: int) -> str:
    prompt = {
        **model_nodes("epsilon"),
        "negative": conds()["negative"],
        "clip": node("NoiseARTestCLIP"),
        "empty": node("EmptyLatentImage", width=width, height=height, batch_size=1),
        "collect": node(
            "NoiseARDatasetCollector",
            model=["model", 0],
            clip=["clip", 0],
            prompts="\n".join(prompts),
            negative=["negative", 0],
            latent_image=["empty", 0],
            seeds_per_prompt=seeds,
            first_seed=0,
            scheduler="normal",
            steps=20,
            cfg_denoise=5.5,
            cfg_invert=1.0,
            dataset=f"e2e_dataset/{name}",
            text_tokens=77,
            batch_size=8,
            shard_size=24,
            model_name="tiny-sdxl",
        ),
    }
    entry = comfy.run(prompt, timeout=900)
    assert entry["status"]["status_str"] == "success", entry["status"]
    return entry["outputs"]["collect"]["text"][0]


@pytest.fixture(scope="module")
def own_prior(comfy, tmp_path_factory) -> str:
    """Collect 64 pairs at 96x128 px and 32 at 128x96 px, train a 2-D prior on both, put it in the Loader's folder."""
    summaries = [collect_bucket(comfy, "96x128", 96, 128, PROMPTS, 4), collect_bucket(comfy, "128x96", 128, 96, PROMPTS[:8], 4)]
    print("\n" + "\n".join(summaries))
    assert "wrote 64" in summaries[0] and "wrote 32" in summaries[1]
    root = comfy.base / "output" / "e2e_dataset"
    assert "skipped 32" in collect_bucket(comfy, "128x96", 128, 96, PROMPTS[:8], 4)  # resumable: nothing redone
    data = ShardDataset(root)
    assert len(data) == 96 and data.noise_shapes == [(4, 12, 16), (4, 16, 12)]
    assert data.seed_counts()["shared_seeds"] == 0 and data.seed_counts()["distinct_seeds"] == 64  # none across prompts
    out = tmp_path_factory.mktemp("train")
    command = [
        sys.executable,
        "-m",
        "noisear",
        "train",
        str(root),
        "--out",
        str(out),
        "--positions",
        "2d",
        "--patch-size",
        "4",
        "--d-model",
        "32",
        "--d-ff",
        "64",
        "--steps",
        "6",
        "--batch-size",
        "8",
        "--warmup-steps",
        "2",
        "--validation-fraction",
        "0.2",
        "--no-progress",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "held-out pairs" in result.stdout and "NLL nats/dim: prior" in result.stdout  # judged on unseen pairs
    print(result.stdout + result.stderr[-600:])
    shutil.copy(out / "prior.safetensors", comfy.extra_priors / "own_2d.safetensors")
    return "own_2d.safetensors"


def test_a_prior_trained_on_two_aspect_ratios_samples_both_and_another_size(comfy, own_prior):
    prompt = {
        **model_nodes("epsilon"),
        **conds(),
        "prior": node("NoiseARLoader", ckpt_name=own_prior, device="auto", dtype="fp32"),
        "noise": node(
            "NoiseARNoise",
            noisear_model=["prior", 0],
            positive=["positive", 0],
            noise_seed=SEED,
            temperature=0.5,
            size_mode="native only",
        ),
    }
    sizes = {**BUCKETS, "160x64": (160, 64)}  # the third size was never trained on
    for tag, (width, height) in sizes.items():
        prompt[f"empty_{tag}"] = node("EmptyLatentImage", width=width, height=height, batch_size=2)
        prompt[f"draw_{tag}"] = node("NoiseARTestDrawNoise", noise=["noise", 0], latent_image=[f"empty_{tag}", 0])
        prompt[f"save_{tag}"] = node("SaveLatent", samples=[f"draw_{tag}", 0], filename_prefix=f"e2e/prior_{tag}")
        prompt.update(sampler_nodes("noise", f"empty_{tag}", tag))
    entry = comfy.run(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    latents = saved_latents(comfy, entry)
    for tag, (width, height) in sizes.items():
        drawn, sampled = latents[tag], latents[f"sampled_{tag}"]
        assert drawn.shape == sampled.shape == (2, 4, height // 8, width // 8)
        assert torch.isfinite(drawn).all() and torch.isfinite(sampled).all()
        print(f"{tag}: prior noise std {drawn.std():.3f} mean {drawn.mean():+.3f}")
