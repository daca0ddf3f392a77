"""The nodes for every model family, without ComfyUI (tests/fake_comfy.py): the family of a MODEL and of a prior and
the refusals that name both sides, each family's text rule (the same prompt padded to two lengths gives the same
noise), latents of every rank, the cost announced before a long draw, the golden recipe of guidance-distilled
models, and what the Dataset Collector stores per family.
"""

from __future__ import annotations

import json
import math

import fake_comfy
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_nodes import RecordingModel, conditioning

from nodes import host
from nodes import noise as noise_module
from nodes.collector import stored_text
from nodes.conditioning import EXACT, TEXT_MASK
from nodes.definitions import (
    DatasetCollectorNode,
    GoldenNoiseNode,
    NoiseARBlendNode,
    NoiseARKSamplerAdvancedNode,
    NoiseARKSamplerNode,
    NoiseARLatentNode,
    NoiseARNoiseNode,
    NoiseARPreviewNode,
    NoiseARTextEncodeNode,
)
from nodes.golden import golden_from_denoised
from nodes.prior import NoiseARPrior
from nodes.widgets import SIZE_MODES, NoiseARNodeError
from noisear import NoiseAR, NoiseARConfig
from noisear.families import FAMILIES
from noisear.golden import GoldenConfig
from noisear.train.data import ShardDataset, pair_seed, prompt_index

SEED = 11


@pytest.fixture(autouse=True)
def host_fakes(monkeypatch, tmp_path):
    return fake_comfy.install(monkeypatch, tmp_path)


def family_config(key: str, **changes) -> NoiseARConfig:
    """A tiny own prior of the family: 2 x 2-cell patches (video: 1 frame each), 2-D or video positions."""
    family = FAMILIES[key]
    video = dict(positions="3d", latent_frames=2) if family.video else dict(positions="2d")
    values = dict(
        family=key,
        channels=family.channels,
        text_dim=family.text_dim,
        patch_size=2,
        latent_height=4,
        latent_width=4,
        d_model=24,
        d_ff=32,
        **video,
    )
    return NoiseARConfig(**{**values, **changes})


def family_prior(key: str, seed: int = 0, **changes) -> NoiseARPrior:
    """The real network with every parameter N(0, 0.3^2), so the text visibly shapes the noise."""
    torch.manual_seed(seed)
    model = NoiseAR(family_config(key, **changes))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    return NoiseARPrior(model.train(False), f"{key}.safetensors", "auto", "fp32")


def latent(key: str, batch: int = 1, frames: int = 2, side: int = 4) -> dict:
    """The family's empty latent as its sampler hands it to a NOISE (Qwen-Image: [B, 16, 1, H, W])."""
    family = FAMILIES[key]
    time = (frames,) if family.video else (1,) if family.latent_dims == 5 else ()
    return {"samples": torch.zeros(batch, family.channels, *time, side, side)}


def model_of(config: str, **latent_format) -> fake_comfy.Model:
    """A fake flow MODEL whose class is ComfyUI's supported_models ``config``."""
    return fake_comfy.Model(
        sampling=fake_comfy.CONST(),
        latent_format=fake_comfy.LatentFormat(**latent_format),
        model=fake_comfy.base_model(config),
    )


def draw(prior, cond, samples_latent, seed=SEED) -> torch.Tensor:
    return NoiseARNoiseNode().make(prior, cond, seed, 0.5, SIZE_MODES[0])[0].generate_noise(samples_latent)


def prompt_rows(key: str, rows: int, seed: int = 5) -> torch.Tensor:
    return torch.randn(1, rows, FAMILIES[key].text_dim, generator=torch.Generator().manual_seed(seed))


# The family of a MODEL and of a prior ---------------------------------------------------------------------
def test_the_family_of_a_model_comes_from_its_comfyui_config_class():
    assert host.model_config_name(model_of("FluxSchnell")) == "FluxSchnell"
    assert host.model_family(model_of("FluxSchnell")) is FAMILIES["flux"]
    assert host.model_family(model_of("WAN21_T2V")) is FAMILIES["wan"]
    assert host.model_family(model_of("SD15")) is None  # a class in no family
    assert host.model_family(fake_comfy.Model()) is None and host.model_config_name(object()) is None


def test_the_loader_info_names_the_family_the_prior_serves():
    assert "own prior for Flux.1 dev / schnell, trained at 32 x 32 px" in family_prior("flux").describe()
    video = family_prior("wan").describe()
    assert "own prior for Wan 2.1 / Wan 2.2 14B, trained at 32 x 32 px x 5 frames" in video and "1 x 2 x 2-cell" in video
    unknown = NoiseARPrior(
        NoiseAR(NoiseARConfig(patch_size=2, latent_height=4, latent_width=4, d_model=8, d_ff=8)), "old", "auto", "fp32"
    )
    assert "own prior for an unknown family" in unknown.describe()


def run_ksampler(prior, model, key, advanced=False):
    cond = conditioning(width=prior.config.text_dim)
    if advanced:
        return NoiseARKSamplerAdvancedNode().sample(
            model, "enable", SEED, 2, 1.0, "euler", "simple", cond, cond, latent(key), 0, 10000, "disable", prior, 0.5, "any size"
        )
    return NoiseARKSamplerNode().sample(
        model, SEED, 2, 1.0, "euler", "simple", cond, cond, latent(key), 1.0, prior, 0.5, "any size"
    )


@pytest.mark.parametrize("advanced", [False, True], ids=["KSampler", "KSampler (Advanced)"])
def test_a_prior_of_another_family_than_the_model_is_refused_naming_both(advanced):
    with pytest.raises(
        NoiseARNodeError,
        match=r"NoiseAR KSampler.*: the NoiseAR prior 'flux.safetensors' \(own Flux.1 dev / schnell prior: 16-channel "
        r"latents, 4096-wide text\) serves Flux.1 dev / schnell models, but the MODEL is ComfyUI's QwenImage "
        r"\(Qwen-Image\)\. .*trained for Qwen-Image",
    ):
        run_ksampler(family_prior("flux"), model_of("QwenImage", latent_channels=16, latent_dimensions=3), "qwen-image", advanced)


def test_the_published_sdxl_prior_is_refused_on_a_flux_model_and_runs_on_an_sdxl_one(host_fakes):
    sdxl = NoiseARPrior(RecordingModel(NoiseARConfig()), "sdxl_and_dreamshaper.safetensors", "auto", "fp32")
    with pytest.raises(
        NoiseARNodeError, match=r"\(SDXL prior: .*\) serves SDXL / DreamShaper-XL models, but the MODEL is ComfyUI's Flux"
    ):
        NoiseARKSamplerNode().sample(
            model_of("Flux", latent_channels=16), SEED, 2, 1.0, "euler", "simple", conditioning(width=2048),
            conditioning(width=2048), {"samples": torch.zeros(1, 4, 128, 128)}, 1.0, sdxl, 0.5, "any size",
        )  # fmt: skip
    NoiseARKSamplerNode().sample(
        fake_comfy.Model(model=fake_comfy.base_model("SDXL")), SEED, 2, 1.0, "euler", "simple", conditioning(width=2048),
        conditioning(width=2048), {"samples": torch.zeros(1, 4, 128, 128)}, 1.0, sdxl, 0.5, "any size",
    )  # fmt: skip
    assert host_fakes.sample_calls


def test_noisear_latent_and_golden_noise_refuse_a_prior_of_another_family():
    flux, model = family_prior("flux"), model_of("QwenImage", latent_channels=16, latent_dimensions=3)
    cond = conditioning(width=4096)
    with pytest.raises(NoiseARNodeError, match=r"NoiseAR Latent: the NoiseAR prior 'flux.safetensors' .* ComfyUI's QwenImage"):
        NoiseARLatentNode().make(model, flux, cond, SEED, 0.5, "any size", latent("qwen-image"))
    upstream = NoiseARNoiseNode().make(flux, cond, SEED, 0.5, "any size")[0]
    with pytest.raises(NoiseARNodeError, match=r"NoiseAR Golden Noise: the NoiseAR prior 'flux.safetensors' .* QwenImage"):
        GoldenNoiseNode().make(model, cond, cond, SEED, "simple", 4, 3.5, 1.0, noise=upstream)


def test_noisear_latent_refuses_flow_models_pointing_to_noisear_ksampler():
    with pytest.raises(NoiseARNodeError, match=r"flow model .*Use NoiseAR KSampler .*or NoiseAR Noise"):
        NoiseARLatentNode().make(
            model_of("Flux", latent_channels=16),
            family_prior("flux"),
            conditioning(width=4096),
            SEED,
            0.5,
            "any size",
            latent("flux"),
        )


def test_a_conditioning_of_another_width_is_refused_naming_both():
    with pytest.raises(
        NoiseARNodeError,
        match=r"NoiseAR Noise: the positive conditioning is 3584-d \(Qwen-Image, HunyuanImage 2.1 text\), but the NoiseAR "
        r"prior 'flux.safetensors' \(own Flux.1 dev / schnell prior: .*\) needs Flux.1 dev / schnell conditioning \(4096-d",
    ):
        NoiseARNoiseNode().make(family_prior("flux"), conditioning(width=3584), SEED, 0.5, "any size")


@pytest.mark.parametrize(
    "key, samples, message",
    [
        ("wan", torch.zeros(1, 16, 4, 4), r"image latent, but the NoiseAR prior 'wan.safetensors' .* is a video prior"),
        ("qwen-image", torch.zeros(1, 16, 3, 4, 4), r"a video of 3 latent frames, but the NoiseAR prior .* is an image prior"),
        ("hunyuan-image-2.1", torch.zeros(1, 16, 4, 4), r"has 16 channels \(SD3 .*latents\), but the NoiseAR prior .* models 64"),
    ],
    ids=["video prior, image latent", "image prior, video latent", "channels"],
)
def test_a_latent_of_another_rank_or_channels_is_refused_naming_both(key, samples, message):
    prior = family_prior(key)
    with pytest.raises(NoiseARNodeError, match="NoiseAR Noise: the latent .*" + message):
        draw(prior, conditioning(width=prior.config.text_dim), {"samples": samples})


# Latents of every family ---------------------------------------------------------------------------------
@pytest.mark.parametrize("key", list(FAMILIES))
def test_noise_of_every_family_has_the_latents_shape_and_is_the_libraries_sample(key):
    prior = family_prior(key)
    cond, samples_latent = conditioning(tokens=6, width=prior.config.text_dim), latent(key, batch=2)
    node_noise = NoiseARNoiseNode().make(prior, cond, SEED, 0.5, "any size")[0]
    noise = node_noise.generate_noise(samples_latent)
    assert noise.shape == samples_latent["samples"].shape and torch.isfinite(noise).all()
    eps = fake_comfy.prepare_noise(samples_latent["samples"], SEED)
    for i in range(2):  # an image prior takes Qwen-Image's [B, 16, 1, H, W] and gives that rank back
        assert torch.equal(noise[i : i + 1], prior.model.sample(cond[0][0], eps[i : i + 1], temperature=0.5))
    expected = {
        "wan": "video prior for 32 x 32 px x 5 frames",
        "wan2.2-5b": "video prior for 64 x 64 px x 5 frames",  # 16 px a cell
        "hunyuan-image-2.1": "2-D prior for 128 x 128 px",  # 32 px a cell
        "chroma-radiance": "2-D prior for 4 x 4 px",  # pixels
    }
    assert expected.get(key, "2-D prior") in node_noise.info


def test_preview_and_blend_take_video_noise(monkeypatch):
    monkeypatch.setattr(host, "save_temp_images", lambda images, prefix: [])
    prior = family_prior("wan")
    noisear_noise = NoiseARNoiseNode().make(prior, conditioning(width=4096), SEED, 0.5, "any size")[0]
    image, stats = NoiseARPreviewNode().preview(noisear_noise, latent("wan", frames=3))["result"]
    assert image.shape == (1, 4 * 4, 3 * 4 * 4, 3) and "noise [1, 16, 3, 4, 4]" in stats  # frames side by side

    class Gaussian:
        seed = 3

        def generate_noise(self, latent):
            return fake_comfy.prepare_noise(latent["samples"], self.seed)

    blended = NoiseARBlendNode().make(noisear_noise, Gaussian(), 1.0, "slerp", False)[0]
    assert torch.equal(blended.generate_noise(latent("wan")), noisear_noise.generate_noise(latent("wan")))
    assert blended.prior is prior


# Text per family: the prompt without its padding ---------------------------------------------------------
def test_wan_reads_the_prompt_without_the_rows_comfyui_zeroes():
    prior, rows = family_prior("wan"), prompt_rows("wan", 6)
    padded = {n: [[torch.cat([rows, torch.zeros(1, n - 6, 4096)], dim=1), {"pooled_output": None}]] for n in (512, 600)}
    noises = [draw(prior, cond, latent("wan")) for cond in (padded[512], padded[600], [[rows, {}]])]
    assert torch.equal(noises[0], noises[1]) and torch.equal(noises[0], noises[2])
    assert not torch.equal(noises[0], draw(prior, [[torch.cat([rows, torch.ones(1, 506, 4096)], dim=1), {}]], latent("wan")))


@pytest.mark.parametrize(
    "key, cond, message",
    [
        ("wan", [[torch.zeros(1, 512, 4096), {}]], r"the conditioning has only zero rows \(the padding Wan's encoder zeroes\)"),
        (
            "flux",
            [[torch.ones(1, 256, 4096), {TEXT_MASK: torch.ones(1, 77, dtype=torch.bool)}]],
            r"the conditioning's noisear_text_mask has 77 values for 256 tokens",
        ),
        (
            "lumina2",
            [[torch.ones(1, 8, 2304), {"attention_mask": torch.zeros(1, 8)}]],
            r"attention_mask marks no token of the prompt as real",
        ),
    ],
    ids=["wan all zeros", "flux mask of another length", "lumina2 all masked"],
)
def test_a_conditioning_whose_rule_leaves_no_prompt_is_refused(key, cond, message):
    with pytest.raises(NoiseARNodeError, match=message):
        NoiseARNoiseNode().make(family_prior(key), cond, SEED, 0.5, "any size")


@pytest.mark.parametrize("key", ["lumina2", "hunyuan-image-2.1", "hunyuan-dit"])
def test_an_attention_mask_family_reads_the_masked_prompt(key):
    prior, rows = family_prior(key), prompt_rows(key, 6)
    conds = []
    for total, seed in ((10, 1), (20, 2)):  # the padding rows hold other values each time
        padding = torch.randn(1, total - 6, FAMILIES[key].text_dim, generator=torch.Generator().manual_seed(seed))
        mask = torch.tensor([[1] * 6 + [0] * (total - 6)])
        conds.append([[torch.cat([rows, padding], dim=1), {"attention_mask": mask, "pooled_output": None}]])
    assert torch.equal(draw(prior, conds[0], latent(key)), draw(prior, conds[1], latent(key)))


def test_noisear_text_encode_marks_flux_t5_padding_and_a_plain_conditioning_warns(host_fakes):
    clip, prior = fake_comfy.CLIP("flux"), family_prior("flux")
    conditioning_out, prior_text = NoiseARTextEncodeNode().encode(clip, "a red car on grass")
    assert prior_text[0][0].shape == (1, 256, 4096) and prior_text[0][1][EXACT]
    assert prior_text[0][1][TEXT_MASK].tolist() == [[True] * 6 + [False] * 250]  # five words and T5's end token
    assert TEXT_MASK not in conditioning_out[0][1] and "6 of 256 rows" in host_fakes.node_texts[-1][1]
    longer = [
        [torch.cat([prior_text[0][0], torch.zeros(1, 44, 4096)], dim=1), {TEXT_MASK: torch.tensor([[True] * 6 + [False] * 294])}]
    ]
    exact = draw(prior, prior_text, latent("flux"))
    assert torch.equal(exact, draw(prior, longer, latent("flux")))  # the same prompt padded to 256 and 300 rows
    plain = NoiseARNoiseNode().make(prior, conditioning_out, SEED, 0.5, "any size")[0]
    assert "padding as text" in plain.warning and "NoiseAR Text Encode's prior_text" in plain.warning
    assert not torch.equal(plain.generate_noise(latent("flux")), exact)


def test_noisear_text_encode_reads_sd3s_clip_rows_whole_then_its_t5_prompt():
    _, prior_text = NoiseARTextEncodeNode().encode(fake_comfy.CLIP("sd3"), "a red car")
    assert prior_text[0][0].shape == (1, 154, 4096)
    assert prior_text[0][1][TEXT_MASK].tolist() == [[True] * 77 + [True] * 4 + [False] * 73]


@pytest.mark.parametrize("key", ["chroma", "chroma-radiance", "qwen-image", "flux"])
def test_families_without_a_text_mask_read_every_row_and_never_an_image_region_mask(key):
    prior = NoiseARPrior(RecordingModel(family_config(key)), "stand-in", "auto", "fp32")
    region = torch.ones(1, 64)  # Flux / Chroma: attention_mask is an image-region mask (Qwen-Image ignores any)
    cond = conditioning(tokens=9, width=FAMILIES[key].text_dim, attention_mask=region)
    draw(prior, cond, latent(key))
    call = prior.model.calls[0]
    assert torch.equal(call["text"], cond[0][0]) and call["mask"] is None


def test_the_collector_stores_exactly_the_text_the_prior_reads(host_fakes):
    prior, rows = family_prior("wan"), prompt_rows("wan", 6)
    cond = [[torch.cat([rows, torch.zeros(1, 506, 4096)], dim=1), {}]]
    text, mask = stored_text(cond, FAMILIES["wan"], 16)
    assert torch.equal(text[:6], rows[0]) and not text[6:].any() and mask.tolist() == [True] * 6 + [False] * 10
    eps = fake_comfy.prepare_noise(latent("wan")["samples"], SEED)
    trained_on = prior.model.sample(text[None], eps, temperature=0.5, text_mask=mask[None])
    assert torch.equal(trained_on, draw(prior, cond, latent("wan")))
    with pytest.raises(NoiseARNodeError, match=r"has 6 tokens \(padding excluded\), more than text_tokens \(5\).*not cut"):
        stored_text(cond, FAMILIES["wan"], 5)


# Cost before a long draw ------------------------------------------------------------------------------
def test_a_draw_over_the_bound_is_refused_with_the_librarys_estimate_before_anything_is_drawn():
    config = NoiseARConfig(
        patch_size=1, channels=4, latent_height=4, latent_width=4, d_model=8, d_ff=8, text_dim=24, positions="2d"
    )
    prior = NoiseARPrior(RecordingModel(config), "stand-in", "auto", "fp32")
    with pytest.raises(NoiseARNodeError, match=r"NoiseAR Noise: this draw is too large: 1,100,000 patches .*The bound is 600 s"):
        draw(prior, conditioning(), {"samples": torch.zeros(1, 4, 1100, 1000)})
    assert prior.model.calls == []


def test_a_prompt_over_the_priors_text_limit_is_refused_by_the_node_that_draws():
    config = NoiseARConfig(
        patch_size=2, channels=4, latent_height=4, latent_width=4, d_model=8, d_ff=8, text_dim=24, positions="2d",
        text_tokens=4,
    )  # fmt: skip
    prior = NoiseARPrior(NoiseAR(config), "stand-in", "auto", "fp32")
    with pytest.raises(NoiseARNodeError, match=r"^NoiseAR Noise: the text has 9 tokens .*at most 4: shorten the prompt"):
        draw(prior, conditioning(tokens=9), {"samples": torch.zeros(1, 4, 4, 4)})


def test_a_long_draw_is_announced_on_the_node_before_it_starts(host_fakes, monkeypatch):
    monkeypatch.setattr(noise_module, "LONG_DRAW_SECONDS", 0.0)
    shown_at_draw = []

    class Watching(RecordingModel):
        def sample(self, text, eps, **kwargs):
            shown_at_draw.append(list(host_fakes.node_texts))
            return super().sample(text, eps, **kwargs)

    config = NoiseARConfig(
        patch_size=2, channels=4, latent_height=4, latent_width=4, d_model=8, d_ff=8, text_dim=24, positions="2d"
    )
    draw(NoiseARPrior(Watching(config), "stand-in", "auto", "fp32"), conditioning(), {"samples": torch.zeros(2, 4, 4, 4)})
    assert len(shown_at_draw[0]) == 1
    assert shown_at_draw[0][0][1].startswith("NoiseAR Noise: drawing 2 items, each 4 patches in 4 decoder steps")
    assert "s per item on cpu" in shown_at_draw[0][0][1]


# Golden noise: the recipe of guidance-distilled models ---------------------------------------------------
def test_embedded_guidance_runs_both_steps_at_cfg_1_with_the_guidance_values():
    calls = []

    def denoised(x, sigma, cfg, guidance=None):
        calls.append((cfg, guidance))
        return x * (0.5 + 0.01 * guidance)

    sigmas = torch.tensor([1.0, 0.8, 0.0])
    noise = torch.randn(1, 16, 2, 2)
    golden = golden_from_denoised(denoised, noise, 1.0, sigmas, "flow", GoldenConfig(3.5, 1.0), embedded=True)
    assert calls == [(1.0, 3.5), (1.0, 1.0)]
    calls.clear()
    same = golden_from_denoised(denoised, noise, 1.0, sigmas, "flow", GoldenConfig(1.0, 1.0), embedded=True)
    assert not torch.allclose(golden, same)  # the guidance values shape the golden noise


@pytest.mark.parametrize("config, embedded, note", [("Flux", True, False), ("FluxSchnell", True, True), ("SD3", False, False)])
def test_the_golden_node_picks_the_recipe_of_the_models_family(monkeypatch, host_fakes, config, embedded, note):
    runs = []

    def run_guided(model, positive, negative, noise, sigmas, seed, work, embedded_guidance=False):
        runs.append(embedded_guidance)
        return work(lambda x, s, cfg, guidance=None: x * 0.9, noise, 1.0)

    monkeypatch.setattr(host, "run_guided", run_guided)
    monkeypatch.setattr(host, "schedule_sigmas", lambda model, scheduler, steps: torch.tensor([1.0, 0.75, 0.5, 0.0]))
    model = model_of(config, latent_channels=16)
    cond = conditioning(width=4096)
    GoldenNoiseNode().make(model, cond, cond, SEED, "simple", 3, 3.5, 1.0)[0].generate_noise(latent("flux"))
    assert runs == [embedded]
    assert any("has no guidance input" in text for _, text in host_fakes.node_texts) == note


def test_golden_noise_runs_at_the_models_rank_whatever_latent_asks(monkeypatch):
    shapes = []

    def run_guided(model, positive, negative, noise, sigmas, seed, work, embedded_guidance=False):
        shapes.append(tuple(noise.shape))
        return work(lambda x, s, cfg, guidance=None: x * 0.9, noise, 1.0)

    monkeypatch.setattr(host, "run_guided", run_guided)
    monkeypatch.setattr(host, "schedule_sigmas", lambda model, scheduler, steps: torch.tensor([1.0, 0.75, 0.5, 0.0]))
    model, cond = model_of("QwenImage", latent_channels=16, latent_dimensions=3), conditioning(width=3584)
    golden = GoldenNoiseNode().make(model, cond, cond, SEED, "simple", 3, 5.5, 1.0)[0]
    asked = golden.generate_noise({"samples": torch.zeros(1, 16, 8, 8)})  # EmptySD3LatentImage's, as a Preview asks
    sampled = golden.generate_noise({"samples": torch.zeros(1, 16, 1, 8, 8)})  # as SamplerCustomAdvanced asks
    assert shapes == [(1, 16, 1, 8, 8)] * 2 and torch.equal(asked, sampled[:, :, 0])
    with pytest.raises(NoiseARNodeError, match=r"the latent \[1, 4, 8, 8\] is not this MODEL's .*\[1, 16, 1, 8, 8\]"):
        golden.generate_noise({"samples": torch.zeros(1, 4, 8, 8)})


# The Dataset Collector for every latent rank ----------------------------------------------------------
class FamilyClip:
    """A CLIP stand-in of a family without padding: [1, 5 + words, width] rows seeded by the text."""

    def __init__(self, width: int) -> None:
        self.width = width

    def tokenize(self, text: str, **options) -> str:
        return text

    def encode_from_tokens_scheduled(self, text: str) -> list:
        rows = torch.randn(1, 5 + len(text.split()), self.width, generator=torch.Generator().manual_seed(len(text)))
        return [[rows, {"pooled_output": None}]]


@pytest.fixture
def flow_host(monkeypatch):
    """The host's golden machinery for a flow model, rank-agnostic: x0 = 0.5 * x + the prompt's mean."""

    def run_guided(model, positive, negative, noise, sigmas, seed, work, embedded_guidance=False):
        cond = float(positive[0][0].mean())
        return work(lambda x, s, cfg, guidance=None: 0.5 * x + cond * cfg, noise * float(sigmas[0]), float(sigmas[0]))

    monkeypatch.setattr(host, "run_guided", run_guided)
    monkeypatch.setattr(host, "schedule_sigmas", lambda model, scheduler, steps: torch.tensor([1.0, 0.75, 0.5, 0.0]))
    monkeypatch.setattr(host, "prediction_kind", lambda model: "flow")
    monkeypatch.setattr(host, "encode_text", lambda clip, text: clip.encode_from_tokens_scheduled(clip.tokenize(text)))


def collect(model, key, samples, dataset, clip=None):
    width = FAMILIES[key].text_dim
    negative = [[torch.zeros(1, 5, width), {}]]
    return DatasetCollectorNode().collect(
        model, clip or FamilyClip(width), "a red car\nblue boat", negative, {"samples": samples}, 2, 0, "simple", 3,
        5.5, 1.0, dataset, 16, 2, 8, "tiny",
    )["result"][0]  # fmt: skip


@pytest.mark.usefixtures("flow_host")
def test_the_collector_stores_qwen_image_noise_as_images_from_its_5d_latent(tmp_path):
    model = model_of("QwenImage", latent_channels=16, latent_dimensions=3)
    assert "wrote 4" in collect(model, "qwen-image", torch.zeros(1, 16, 8, 8), "qwen")  # EmptySD3LatentImage's 4-D latent
    data = ShardDataset(tmp_path / "output" / "qwen")
    assert data.item_shapes["noise"] == (16, 8, 8) and data.info.family == "qwen-image"
    seed = pair_seed(0, prompt_index("blue boat"), 1)
    row = next(iter(data.iterate()))
    stored = row.noise[(row.seed == seed).nonzero()[0, 0]]
    width = FAMILIES["qwen-image"].text_dim
    golden = GoldenNoiseNode().make(
        model,
        FamilyClip(width).encode_from_tokens_scheduled("blue boat"),
        [[torch.zeros(1, 5, width), {}]],
        seed,
        "simple",
        3,
        5.5,
        1.0,
    )[0]
    at_inference = golden.generate_noise({"samples": torch.zeros(1, 16, 1, 8, 8)})  # as SamplerCustomAdvanced gives it
    torch.testing.assert_close(stored, at_inference[0, :, 0])


@pytest.mark.usefixtures("flow_host")
def test_the_collector_stores_wan_video_noise_and_refuses_another_length_in_the_folder(tmp_path):
    model = model_of("WAN21_T2V", latent_channels=16, latent_dimensions=3)
    assert "wrote 4" in collect(model, "wan", torch.zeros(1, 16, 2, 8, 8), "wan/64x64x5")
    data = ShardDataset(tmp_path / "output" / "wan" / "64x64x5")
    assert data.item_shapes == {"text": (16, 4096), "noise": (16, 2, 8, 8)} and data.info.family == "wan"
    batch = next(iter(data.iterate()))
    assert batch.noise.shape[1:] == (16, 2, 8, 8) and set(batch.text_mask.sum(dim=1).tolist()) == {8, 7}  # words + 5
    with pytest.raises(
        NoiseARNodeError, match=r"wan/64x64x5 holds latents of 64 x 64 px x 5 frames .* set dataset to wan/64x64x9"
    ):
        collect(model, "wan", torch.zeros(1, 16, 3, 8, 8), "wan/64x64x5")
    collect(model, "wan", torch.zeros(1, 16, 8, 8), "wan/64x64x1")  # an image latent: one frame, as Wan samples it
    assert ShardDataset(tmp_path / "output" / "wan" / "64x64x1").item_shapes["noise"] == (16, 1, 8, 8)


@pytest.mark.usefixtures("flow_host")
def test_the_collector_refuses_a_video_latent_for_an_image_model():
    model = model_of("QwenImage", latent_channels=16, latent_dimensions=3)
    with pytest.raises(NoiseARNodeError, match=r"the latent \[1, 16, 3, 8, 8\] is a video of 3 frames, but QwenImage"):
        collect(model, "qwen-image", torch.zeros(1, 16, 3, 8, 8), "qwen_video")


@pytest.mark.usefixtures("flow_host")
def test_the_collector_records_the_embedded_guidance_recipe(tmp_path):
    model = model_of("Flux", latent_channels=16)
    collect(model, "flux", torch.zeros(1, 16, 8, 8), "flux", clip=fake_comfy.CLIP("flux"))
    data = ShardDataset(tmp_path / "output" / "flux")
    assert data.info.family == "flux" and data.info.extra["guidance"].startswith("embedded")
    batch = next(iter(data.iterate()))
    assert set(batch.text_mask.sum(dim=1).tolist()) == {4, 3}  # T5's words and end token, not its 256 rows
    assert math.isclose(data.info.guidance_denoise, 5.5)


@pytest.mark.usefixtures("flow_host")
def test_a_folder_from_before_families_were_recorded_is_continued_without_one(tmp_path):
    model = model_of("Chroma", latent_channels=16)
    collect(model, "chroma", torch.zeros(1, 16, 8, 8), "chroma")
    folder = tmp_path / "output" / "chroma"
    for path in folder.glob("*.safetensors"):  # the shards as the collector wrote them before DatasetInfo.family
        with safe_open(str(path), framework="pt") as handle:
            tensors, metadata = {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata()
        info = json.loads(metadata["info"])
        del info["family"]
        save_file(tensors, str(path), metadata={**metadata, "info": json.dumps(info)})
    width = FAMILIES["chroma"].text_dim
    summary = DatasetCollectorNode().collect(
        model, FamilyClip(width), "a red car\nblue boat", [[torch.zeros(1, 5, width), {}]], {"samples": torch.zeros(1, 16, 8, 8)},
        3, 0, "simple", 3, 5.5, 1.0, "chroma", 16, 2, 8, "tiny",
    )["result"][0]  # fmt: skip
    assert "wrote 2, skipped 4" in summary and "before model families were recorded" in summary
    assert ShardDataset(folder).info.family == ""
