"""The NoiseAR nodes on every model family's standard graph in a real ComfyUI (see conftest.py; skipped without
COMFYUI_PATH).

Each family's graph is test_families_host.py's: its tiny random MODEL, its empty-latent node (batch 2), its own
tiny text encoder where one can be built (SD3, Flux, Chroma) or its CLIP stand-in, FluxGuidance for Flux,
ModelSamplingSD3 for SD3. A random own prior of the family is written with noisear.save into the test models
folder ("2d" positions, "3d" for Wan). In one graph per family:
- NoiseAR KSampler samples, and equals NoiseAR Noise -> SamplerCustomAdvanced for the same seed (SD3 and Flux read
  NoiseAR Text Encode's prior_text, whose T5 padding is marked; the others CLIPTextEncode's conditioning);
- NoiseAR Golden Noise -> SamplerCustomAdvanced samples; on Flux dev the guidance values change the golden noise,
  FluxSchnell has no guidance input to change it;
- NoiseAR Dataset Collector writes the family's pairs, with its family recorded.
Then a prior of another family and a conditioning of another width are refused, naming both sides.
Run with -s to see the figures.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_comfyui_host import execution_error, saved_latents
from test_families_host import FAMILIES as STANDARD
from test_families_host import PROMPTS, SIZE, WORDS

from noisear import NoiseAR, NoiseARConfig, save
from noisear.families import family_of_comfy_model
from noisear.train.data import ShardDataset

SEED = 7
NAMES = list(STANDARD)  # ComfyUI's supported_models classes, one graph each
KEYS = {name: family_of_comfy_model(name).key for name in NAMES}  # -> noisear.families keys (Flux and FluxSchnell: flux)
PATCH = {"chroma-radiance": 16, "hunyuan-image-2.1": 1, "wan2.2-5b": 2}  # cells per patch side; 4 for the others
EXACT_TEXT = ("sd3", "flux")  # the families whose prior reads NoiseAR Text Encode's prior_text
GOLDEN_GUIDANCE = 3.5  # Flux dev's usual guidance: the golden denoising step's


def node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def prior_config(key: str) -> NoiseARConfig:
    family = family_of_comfy_model(next(name for name in NAMES if KEYS[name] == key))
    cells, patch = SIZE // family.cell_pixels, PATCH.get(key, 4)
    video = dict(positions="3d", latent_frames=2) if family.video else dict(positions="2d")
    return NoiseARConfig(
        family=key,
        channels=family.channels,
        text_dim=family.text_dim,
        patch_size=patch,
        latent_height=cells,
        latent_width=cells,
        d_model=32,
        d_ff=64,
        **video,
    )


@pytest.fixture(scope="module")
def priors(comfy) -> dict[str, str]:
    """A random own prior of every family in the Loader's folder: key -> file name."""
    names = {}
    for index, key in enumerate(sorted(set(KEYS.values()))):
        torch.manual_seed(index)
        model = NoiseAR(prior_config(key))
        with torch.no_grad():  # wider than the published initialisation, so the prompt visibly shapes the noise
            for parameter in model.parameters():
                parameter.normal_(0.0, 0.1)
        names[key] = f"family_{key}.safetensors"
        save(model, comfy.extra_priors / names[key])
    return names


def standard_nodes(name: str) -> tuple[dict, list, list, list, list]:
    """The family's standard graph up to the sampler: (nodes, model, positive, negative, what the prior reads)."""
    spec, key = STANDARD[name], KEYS[name]
    empty_class, empty_inputs = spec.empty_latent
    nodes = {
        "model": node("NoiseARTestTinyModel", family=name, seed=0),
        "latent": node(empty_class, **{**empty_inputs, "batch_size": 2}),
        "clip": node("NoiseARTestTinyTextEncoder", family=spec.real_encoder, seed=0)
        if spec.real_encoder
        else node("NoiseARTestFamilyCLIP", family=name),
        "negative_text": node("CLIPTextEncode", clip=["clip", 0], text=""),
    }
    if "vae" in empty_inputs:  # Wan22ImageToVideoLatent wants a VAE; it uses none without a start image
        nodes["vae"] = node("VAELoader", vae_name="pixel_space")
    model = ["model", 0]
    if spec.shift is not None:
        nodes["sampling"] = node("ModelSamplingSD3", model=model, shift=spec.shift)
        model = ["sampling", 0]
    if key in EXACT_TEXT:
        nodes["encode"] = node("NoiseARTextEncode", clip=["clip", 0], text=PROMPTS[0])
        prior_text = ["encode", 1]
    else:
        nodes["encode"] = node("CLIPTextEncode", clip=["clip", 0], text=PROMPTS[0])
        prior_text = ["encode", 0]
    positive, negative = ["encode", 0], ["negative_text", 0]
    if spec.guidance is not None:
        nodes["positive_guided"] = node("FluxGuidance", conditioning=positive, guidance=spec.guidance)
        nodes["negative_guided"] = node("FluxGuidance", conditioning=negative, guidance=spec.guidance)
        positive, negative = ["positive_guided", 0], ["negative_guided", 0]
    return nodes, model, positive, negative, prior_text


def cfg_of(name: str) -> float:
    return 1.0 if STANDARD[name].guidance is not None or name == "FluxSchnell" else 2.0


def custom_sampler(nodes: dict, tag: str, noise: list, model: list, positive: list, negative: list, cfg: float) -> None:
    """SamplerCustomAdvanced (CFGGuider, euler, simple, 2 steps) from ``noise`` over the empty latent, saved as ``tag``."""
    nodes[f"guider_{tag}"] = node("CFGGuider", model=model, positive=positive, negative=negative, cfg=cfg)
    nodes[f"select_{tag}"] = node("KSamplerSelect", sampler_name="euler")
    nodes[f"sigmas_{tag}"] = node("BasicScheduler", model=model, scheduler="simple", steps=2, denoise=1.0)
    nodes[tag] = node(
        "SamplerCustomAdvanced",
        noise=noise,
        guider=[f"guider_{tag}", 0],
        sampler=[f"select_{tag}", 0],
        sigmas=[f"sigmas_{tag}", 0],
        latent_image=["latent", 0],
    )


def family_graph(name: str, prior: str) -> dict:
    nodes, model, positive, negative, prior_text = standard_nodes(name)
    cfg, key = cfg_of(name), KEYS[name]
    sampling = dict(model=model, steps=2, cfg=cfg, sampler_name="euler", scheduler="simple", positive=positive, negative=negative)
    nodes["prior"] = node("NoiseARLoader", ckpt_name=prior, device="auto", dtype="fp32")
    drawing = dict(noisear_model=["prior", 0], temperature=0.5, size_mode="any size")
    nodes["ksampler"] = node(
        "NoiseARKSampler", seed=SEED, latent_image=["latent", 0], denoise=1.0, **sampling, **drawing, prior_text=prior_text
    )
    nodes["plain"] = node("KSampler", seed=SEED, latent_image=["latent", 0], denoise=1.0, **sampling)
    nodes["noise"] = node("NoiseARNoise", positive=prior_text, noise_seed=SEED, **drawing)
    custom_sampler(nodes, "custom", ["noise", 0], model, positive, negative, cfg)
    guidance = GOLDEN_GUIDANCE if key == "flux" else cfg
    golden = dict(model=model, positive=positive, negative=negative, noise_seed=SEED, scheduler="simple", steps=4)
    nodes["golden"] = node("NoiseARGoldenNoise", cfg_denoise=guidance, cfg_invert=1.0, **golden)
    custom_sampler(nodes, "golden_sampled", ["golden", 0], model, positive, negative, cfg)
    if key == "flux":  # the golden noise itself, at two guidance values of the denoising step
        nodes["golden_weak"] = node("NoiseARGoldenNoise", cfg_denoise=1.0, cfg_invert=1.0, **golden)
        nodes["eps"] = node("RandomNoise", noise_seed=SEED)
        for source in ("golden", "golden_weak", "eps"):
            nodes[f"draw_{source}"] = node("NoiseARTestDrawNoise", noise=[source, 0], latent_image=["latent", 0])
    if key in EXACT_TEXT:
        nodes["describe_prior_text"] = node("NoiseARTestDescribeConditioning", conditioning=prior_text)
    nodes["collect"] = node(
        "NoiseARDatasetCollector",
        model=model,
        clip=["clip", 0],
        prompts="\n".join(PROMPTS),
        negative=negative,
        latent_image=["latent", 0],
        seeds_per_prompt=2,
        first_seed=0,
        scheduler="simple",
        steps=4,
        cfg_denoise=guidance,
        cfg_invert=1.0,
        dataset=f"family_nodes/{name}",
        text_tokens=128,
        batch_size=2,
        shard_size=8,
        model_name=name,
    )
    for tag in ("ksampler", "plain", "custom", "golden_sampled", "draw_golden", "draw_golden_weak", "draw_eps"):
        if tag in nodes:
            nodes[f"save_{tag}"] = node("SaveLatent", samples=[tag, 0], filename_prefix=f"family_nodes/{name}_{tag}")
    return nodes


@pytest.fixture(scope="module")
def family_run(comfy, priors):
    runs = {}

    def run(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
        if name not in runs:
            entry = comfy.run(family_graph(name, priors[KEYS[name]]))
            assert entry["status"]["status_str"] == "success", entry["status"]
            runs[name] = entry, saved_latents(comfy, entry)
        return runs[name]

    return run


def expected_latent(name: str) -> tuple[int, ...]:
    """The sampled latent: batch 2, but Wan22ImageToVideoLatent gives batch 1 without a start image (0.3.64)."""
    return (1 if name == "WAN22_T2V" else 2, *STANDARD[name].latent[1:])


@pytest.mark.parametrize("name", NAMES)
def test_noisear_ksampler_runs_the_standard_graph_and_equals_noisear_noise_with_samplercustomadvanced(family_run, name):
    _, latents = family_run(name)
    ksampler, custom, plain = latents["ksampler"], latents["custom"], latents["plain"]
    assert ksampler.shape == custom.shape == expected_latent(name) and torch.isfinite(ksampler).all()
    difference = (ksampler - custom).abs().max().item()
    print(f"{name}: NoiseAR KSampler vs NoiseAR Noise -> SamplerCustomAdvanced: max abs diff {difference:.3g}")
    assert difference <= 1e-5 * max(1.0, custom.abs().max().item())
    assert not torch.allclose(ksampler, plain)  # the prior's noise, not the seed's Gaussian draw


@pytest.mark.parametrize("name", NAMES)
def test_golden_noise_samples_on_the_standard_graph_and_the_collector_writes_the_familys_pairs(comfy, family_run, name):
    entry, latents = family_run(name)
    assert latents["golden_sampled"].shape == expected_latent(name) and torch.isfinite(latents["golden_sampled"]).all()
    summary = entry["outputs"]["collect"]["text"][0]
    assert "wrote 4, skipped 0" in summary, summary
    data = ShardDataset(comfy.base / "output" / "family_nodes" / name)
    family, shape = family_of_comfy_model(name), STANDARD[name].latent[1:]
    stored = shape if family.video else (shape[0], *shape[-2:])  # image noise as [C, H, W] (Qwen-Image's T = 1 dropped)
    assert data.info.family == KEYS[name] and data.item_shapes["noise"] == stored
    assert data.item_shapes["text"] == (128, family.text_dim)
    real_tokens = sorted(set(next(iter(data.iterate())).text_mask.sum(dim=1).tolist()))
    print(f"{name}: pairs {len(data)}, noise {list(stored)}, text tokens stored (padding left out) {real_tokens}")
    assert max(real_tokens) < {"SD3": 154, "Flux": 256, "FluxSchnell": 256, "WAN21_T2V": 512, "WAN22_T2V": 512}.get(name, 128)


@pytest.mark.parametrize("name", [name for name in NAMES if KEYS[name] in EXACT_TEXT])
def test_noisear_text_encode_marks_the_prompt_rows_of_the_real_t5_encoders(family_run, name):
    entry, _ = family_run(name)
    described = json.loads(entry["outputs"]["describe_prior_text"]["text"][0])
    clip_rows = 77 if KEYS[name] == "sd3" else 0
    assert described["text_mask"] == [list(described["cross_attn"][:2]), clip_rows + WORDS + 1]  # the words and T5's end


@pytest.mark.parametrize("name", ["Flux", "FluxSchnell"])
def test_the_golden_recipe_sets_fluxs_embedded_guidance_per_step(family_run, name):
    _, latents = family_run(name)
    golden, weak, eps = latents["draw_golden"], latents["draw_golden_weak"], latents["draw_eps"]
    change = float((golden - weak).norm() / golden.norm())
    print(f"{name}: golden at guidance {GOLDEN_GUIDANCE} vs 1.0: relative change {change:.3g}")
    assert not torch.equal(golden, eps) and torch.isfinite(golden).all()
    if name == "Flux":
        assert change > 1e-4  # the guidance value reaches the model's guidance embedding
    else:
        assert change == 0.0  # no guidance input: the recipe is one step down and back with the same model


def other_family(name: str) -> str:
    """A family other than ``name``'s, whose prior is tried on ``name``'s MODEL."""
    keys = sorted(set(KEYS.values()))
    return keys[(keys.index(KEYS[name]) + 1) % len(keys)]


@pytest.mark.parametrize("name", NAMES)
def test_a_prior_of_another_family_is_refused_naming_both(comfy, priors, name):
    nodes, model, positive, negative, prior_text = standard_nodes(name)
    other = other_family(name)
    nodes["prior"] = node("NoiseARLoader", ckpt_name=priors[other], device="auto", dtype="fp32")
    nodes["ksampler"] = node(
        "NoiseARKSampler", model=model, seed=SEED, steps=2, cfg=cfg_of(name), sampler_name="euler", scheduler="simple",
        positive=positive, negative=negative, latent_image=["latent", 0], denoise=1.0, noisear_model=["prior", 0],
        temperature=0.5, size_mode="any size",
    )  # fmt: skip
    nodes["save"] = node("SaveLatent", samples=["ksampler", 0], filename_prefix="family_nodes/refused")
    error = execution_error(comfy.run(nodes))
    served, given = family_of_comfy_model(next(n for n in NAMES if KEYS[n] == other)), family_of_comfy_model(name)
    assert error["node_type"] == "NoiseARKSampler"
    assert f"the NoiseAR prior '{priors[other]}' (own {served.title} prior" in error["exception_message"]
    assert f"serves {served.title} models, but the MODEL is ComfyUI's {name} ({given.title})" in error["exception_message"]


@pytest.mark.parametrize("name", NAMES)
def test_a_conditioning_of_another_width_is_refused_naming_both(comfy, priors, name):
    nodes, model, positive, negative, _ = standard_nodes(name)
    family = family_of_comfy_model(name)
    width = 2304 if family.text_dim != 2304 else 4096  # Lumina2's width, or SD3 / Flux / Chroma / Wan's
    nodes["prior"] = node("NoiseARLoader", ckpt_name=priors[KEYS[name]], device="auto", dtype="fp32")
    nodes["wrong"] = node("NoiseARTestConditioning", width=width, tokens=12, seed=3)
    nodes["noise"] = node(
        "NoiseARNoise", noisear_model=["prior", 0], positive=["wrong", 0], noise_seed=SEED, temperature=0.5, size_mode="any size"
    )
    custom_sampler(nodes, "custom", ["noise", 0], model, positive, negative, cfg_of(name))
    nodes["save"] = node("SaveLatent", samples=["custom", 0], filename_prefix="family_nodes/refused_width")
    error = execution_error(comfy.run(nodes))
    assert error["node_type"] == "NoiseARNoise"
    message = error["exception_message"]
    assert f"the positive conditioning is {width}-d (" in message and f"own {family.title} prior" in message
    assert f"needs {family.title} conditioning ({family.text_dim}-d" in message
