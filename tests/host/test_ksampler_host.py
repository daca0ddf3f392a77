"""NoiseAR KSampler (Advanced) in a real ComfyUI: the three routes to a NoiseAR start agree.

On the tiny SDXL-family MODEL and tiny prior of test_comfyui_host, a batch-2 sub-batch (batch_index
[1, 2] of a batch of 3, from LatentFromBatch) is sampled for one seed by
  ksampler   NoiseAR KSampler
  custom     NoiseAR Noise -> SamplerCustomAdvanced (CFGGuider, KSamplerSelect, BasicScheduler)
  latent     NoiseAR Latent -> KSamplerAdvanced (add_noise disable, start_at_step 0)
  advanced   NoiseAR KSampler (Advanced), add_noise enable
for a deterministic (euler) and an ancestral (euler_ancestral) sampler; and in two stages (NoiseAR
KSampler (Advanced) to step 2 with leftover noise, then add_noise disable, or KSamplerAdvanced).
Run with -s to see the agreement figures.
"""

from __future__ import annotations

import pytest
import torch
from test_comfyui_host import PRIOR_FILE, SEED, execution_error, prior_name, saved_latents  # noqa: F401 (prior_name: fixture)

STEPS, CFG = 3, 2.0
PRIOR = {"noisear_model": ["prior", 0], "temperature": 0.5, "size_mode": "native only"}
SAMPLING = {
    "model": ["model", 0],
    "positive": ["positive", 0],
    "negative": ["negative", 0],
    "cfg": CFG,
    "scheduler": "normal",
    "latent_image": ["sub", 0],
}


def node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def routes_graph(sampler: str) -> dict:
    """API-format prompt: the four one-stage routes and the two-stage graphs, each saved."""
    prompt = {
        "model": node("NoiseARTestTinySDXL", seed=0),
        "positive": node("NoiseARTestConditioning", width=2048, tokens=77, seed=1),
        "negative": node("NoiseARTestConditioning", width=2048, tokens=77, seed=2),
        "empty": node("EmptyLatentImage", width=128, height=128, batch_size=3),
        "sub": node("LatentFromBatch", samples=["empty", 0], batch_index=1, length=2),
        "prior": node("NoiseARLoader", ckpt_name=PRIOR_FILE, device="auto", dtype="fp32"),
        "ksampler": node("NoiseARKSampler", seed=SEED, steps=STEPS, sampler_name=sampler, denoise=1.0, **SAMPLING, **PRIOR),
        "noise": node("NoiseARNoise", positive=["positive", 0], noise_seed=SEED, **PRIOR),
        "select": node("KSamplerSelect", sampler_name=sampler),
        "sigmas": node("BasicScheduler", model=["model", 0], scheduler="normal", steps=STEPS, denoise=1.0),
        "guider": node("CFGGuider", model=["model", 0], positive=["positive", 0], negative=["negative", 0], cfg=CFG),
        "custom": node(
            "SamplerCustomAdvanced",
            noise=["noise", 0],
            guider=["guider", 0],
            sampler=["select", 0],
            sigmas=["sigmas", 0],
            latent_image=["sub", 0],
        ),
        "start": node(
            "NoiseARLatent", model=["model", 0], positive=["positive", 0], noise_seed=SEED, latent_image=["sub", 0], **PRIOR
        ),
        "latent": node(
            "KSamplerAdvanced",
            add_noise="disable",
            noise_seed=SEED,
            steps=STEPS,
            sampler_name=sampler,
            start_at_step=0,
            end_at_step=10000,
            return_with_leftover_noise="disable",
            **{**SAMPLING, "latent_image": ["start", 0]},
        ),
        "advanced": node(
            "NoiseARKSamplerAdvanced",
            add_noise="enable",
            noise_seed=SEED,
            steps=STEPS,
            sampler_name=sampler,
            start_at_step=0,
            end_at_step=10000,
            return_with_leftover_noise="disable",
            **SAMPLING,
            **PRIOR,
        ),
        # two stages: NoiseAR noise and steps 0-2 of 4, then the rest without new noise
        "one_stage": node("NoiseARKSampler", seed=SEED, steps=4, sampler_name=sampler, denoise=1.0, **SAMPLING, **PRIOR),
        "base": node(
            "NoiseARKSamplerAdvanced",
            add_noise="enable",
            noise_seed=SEED,
            steps=4,
            sampler_name=sampler,
            start_at_step=0,
            end_at_step=2,
            return_with_leftover_noise="enable",
            **SAMPLING,
            **PRIOR,
        ),
        "refine_noisear": node(
            "NoiseARKSamplerAdvanced",
            add_noise="disable",
            noise_seed=SEED,
            steps=4,
            sampler_name=sampler,
            start_at_step=2,
            end_at_step=10000,
            return_with_leftover_noise="disable",
            **{**SAMPLING, "latent_image": ["base", 0]},
            **PRIOR,
        ),
        "refine_core": node(
            "KSamplerAdvanced",
            add_noise="disable",
            noise_seed=SEED,
            steps=4,
            sampler_name=sampler,
            start_at_step=2,
            end_at_step=10000,
            return_with_leftover_noise="disable",
            **{**SAMPLING, "latent_image": ["base", 0]},
        ),
        "plain": node("KSampler", seed=SEED, steps=STEPS, sampler_name=sampler, denoise=1.0, **SAMPLING),
    }
    for name in ("ksampler", "custom", "latent", "advanced", "one_stage", "refine_noisear", "refine_core", "plain"):
        prompt[f"save_{name}"] = node("SaveLatent", samples=[name, 0], filename_prefix=f"ksampler_{sampler}/{name}")
    return prompt


def agreement(name: str, got: torch.Tensor, want: torch.Tensor) -> float:
    """Max abs difference, printed with the value range it is measured against."""
    diff = (got - want).abs().max().item()
    print(f"{name}: max abs diff {diff:.3g} over values in [{want.min().item():.4g}, {want.max().item():.4g}]")
    return diff


@pytest.mark.usefixtures("prior_name")
@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral"])
def test_noisear_ksampler_equals_the_custom_sampler_and_latent_routes(comfy, sampler):
    entry = comfy.run(routes_graph(sampler))
    assert entry["status"]["status_str"] == "success", entry["status"]
    latents = saved_latents(comfy, entry)
    ksampler = latents["ksampler"]
    scale = ksampler.abs().max().item()
    assert ksampler.shape == (2, 4, 16, 16) and torch.isfinite(ksampler).all()
    assert agreement(f"{sampler} ksampler vs custom sampler", ksampler, latents["custom"]) <= 1e-6 * scale
    assert (
        agreement(f"{sampler} ksampler vs NoiseAR Latent + KSamplerAdvanced", ksampler, latents["latent"]) <= 1e-5 * scale
    )  # the start latent's scaling rounds in fp32
    assert agreement(f"{sampler} ksampler vs NoiseAR KSampler (Advanced)", ksampler, latents["advanced"]) == 0
    assert (ksampler - latents["plain"]).abs().max() > 0.1 * scale  # the prior's noise, not KSampler's
    # two stages: the second adds no noise; NoiseAR's disable is KSamplerAdvanced's
    assert (
        agreement(
            f"{sampler} refine: NoiseAR Advanced disable vs KSamplerAdvanced", latents["refine_noisear"], latents["refine_core"]
        )
        == 0
    )
    if sampler == "euler":  # a memoryless deterministic sampler split in two = one run of all steps
        assert (
            agreement("euler two stages vs one NoiseAR KSampler run", latents["refine_noisear"], latents["one_stage"])
            <= 1e-5 * scale
        )


@pytest.mark.usefixtures("prior_name")
def test_img2img_denoise_is_a_clear_error_on_the_noisear_ksampler(comfy):
    prompt = routes_graph("euler")
    prompt = {key: prompt[key] for key in ("model", "positive", "negative", "empty", "sub", "prior", "ksampler", "save_ksampler")}
    prompt["ksampler"]["inputs"]["denoise"] = 0.5
    error = execution_error(comfy.run(prompt))
    assert error["node_type"] == "NoiseARKSampler"
    assert "denoise 1.0, got 0.5" in error["exception_message"] and "KSampler" in error["exception_message"]
