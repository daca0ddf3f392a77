"""Each newer model family's standard text-to-image graph (text-to-video for Wan) runs in a real ComfyUI.

Core nodes only, over the tiny random models and text fixtures of tests/host/comfy_test_nodes
(families.py says what each mimics): the family's empty-latent node, CLIPTextEncode over the family's own
tiny text encoder where one can be built (SD3, Flux, Chroma), else the family's conditioning fixture,
FluxGuidance for Flux, ModelSamplingSD3 for SD3, and KSampler; one graph per family, two prompts.
The expectations below are the families' real shapes (ComfyUI 0.3.64), written out independently of the
fixtures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file

PROMPTS = ("red car on green grass", "blue boat on calm water")  # one token a word for CLIP and T5 alike
WORDS = 5
LONG = 600  # words of a long prompt: past every family's padded length
SIZE, FRAMES = 64, 5  # px; Wan video frames (2 latent frames)


@dataclass(frozen=True)
class Family:
    empty_latent: tuple[str, dict]  # the family's empty-latent node and its inputs
    latent: tuple[int, ...]  # KSampler's output
    cross_attn: tuple[int, int, int]  # the positive's tensor for a WORDS-word prompt
    row_widths: list  # [[width up to the last nonzero column, rows], ...]
    pooled: tuple[int, int] | None
    long_tokens: int  # the conditioning's length for a LONG-word prompt
    keys: tuple[str, ...] = ("pooled_output",)
    attention_mask: list | None = None  # [shape, dtype, ones]
    real_encoder: str | None = None  # the family whose tiny ComfyUI text encoder this family uses
    guidance: float | None = None  # FluxGuidance on the positive (cfg 1)
    shift: float | None = None  # ModelSamplingSD3


SD3_LATENT = ("EmptySD3LatentImage", {"width": SIZE, "height": SIZE, "batch_size": 1})
T5_ONLY = dict(row_widths=[[4096, WORDS + 1]], pooled=None, long_tokens=LONG + 1)
FAMILIES = {
    # CLIP-L || CLIP-G (2048, zero-padded to 4096) in 77-token chunks, then T5 (at least 77)
    "SD3": Family(
        SD3_LATENT,
        (1, 16, 8, 8),
        (1, 154, 4096),
        [[2048, 77], [4096, 77]],
        (1, 2048),
        long_tokens=-(-LONG // 75) * 77 + LONG + 1,
        real_encoder="SD3",
        shift=3.0,
    ),
    "Flux": Family(
        SD3_LATENT,
        (1, 16, 8, 8),
        (1, 256, 4096),
        [[4096, 256]],  # T5 padded to 256, pad rows nonzero
        (1, 768),
        long_tokens=LONG + 1,
        keys=("guidance", "pooled_output"),
        real_encoder="Flux",
        guidance=3.5,
    ),
    "FluxSchnell": Family(
        SD3_LATENT, (1, 16, 8, 8), (1, 256, 4096), [[4096, 256]], (1, 768), long_tokens=LONG + 1, real_encoder="Flux"
    ),
    "Chroma": Family(SD3_LATENT, (1, 16, 8, 8), (1, WORDS + 1, 4096), **T5_ONLY, real_encoder="Chroma"),
    "ChromaRadiance": Family(
        ("EmptyChromaRadianceLatentImage", {"width": SIZE, "height": SIZE, "batch_size": 1}),
        (1, 3, SIZE, SIZE),  # pixels
        (1, WORDS + 1, 4096),
        **T5_ONLY,
        real_encoder="Chroma",
    ),
    "Lumina2": Family(
        SD3_LATENT,
        (1, 16, 8, 8),
        (1, WORDS + 1, 2304),  # start token + words
        [[2304, WORDS + 1]],
        None,
        long_tokens=LONG + 1,
        keys=("attention_mask", "pooled_output"),
        attention_mask=[[1, WORDS + 1], "torch.int64", WORDS + 1],
    ),
    "QwenImage": Family(
        SD3_LATENT,
        (1, 16, 1, 8, 8),  # the Wan 2.1 latent format: 5-D
        (1, WORDS + 5, 3584),  # words + <|im_end|>\n<|im_start|>assistant\n
        [[3584, WORDS + 5]],
        None,
        long_tokens=LONG + 5,
    ),
    "HunyuanImage21": Family(
        ("EmptyHunyuanImageLatent", {"width": SIZE, "height": SIZE, "batch_size": 1}),
        (1, 64, 2, 2),  # 64 ch, /32
        (1, WORDS + 1, 3584),  # words + <|im_end|>
        [[3584, WORDS + 1]],
        None,
        long_tokens=LONG + 1,
    ),
    "WAN21_T2V": Family(
        ("EmptyHunyuanLatentVideo", {"width": SIZE, "height": SIZE, "length": FRAMES, "batch_size": 1}),
        (1, 16, 2, 8, 8),
        (1, 512, 4096),
        [[4096, WORDS + 1], [0, 512 - WORDS - 1]],  # UMT5 padded to 512, rows after the end token zeroed
        None,
        long_tokens=LONG + 1,
    ),
    "WAN22_T2V": Family(
        ("Wan22ImageToVideoLatent", {"vae": ["vae", 0], "width": SIZE, "height": SIZE, "length": FRAMES, "batch_size": 1}),
        (1, 48, 2, 4, 4),  # 48 ch, /16
        (1, 512, 4096),
        [[4096, WORDS + 1], [0, 512 - WORDS - 1]],
        None,
        long_tokens=LONG + 1,
    ),
}


def node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def family_graph(family: str) -> dict:
    """API-format prompt: the family's text-to-image graph for both PROMPTS, and its text fixtures described."""
    spec = FAMILIES[family]
    empty_class, empty_inputs = spec.empty_latent
    prompt = {
        "model": node("NoiseARTestTinyModel", family=family, seed=0),
        "latent": node(empty_class, **empty_inputs),
        "stand_in": node("NoiseARTestFamilyCLIP", family=family),
        "clip_encode": node("CLIPTextEncode", clip=["stand_in", 0], text=PROMPTS[0]),
        "describe_clip_encode": node("NoiseARTestDescribeConditioning", conditioning=["clip_encode", 0]),
        "fixture": node("NoiseARTestFamilyConditioning", family=family, text=PROMPTS[0], tokens=0),
        "describe_fixture": node("NoiseARTestDescribeConditioning", conditioning=["fixture", 0]),
        "long": node("NoiseARTestFamilyConditioning", family=family, text=PROMPTS[0], tokens=LONG),
        "describe_long": node("NoiseARTestDescribeConditioning", conditioning=["long", 0]),
    }
    if "vae" in empty_inputs:  # Wan22ImageToVideoLatent wants a VAE; it uses none without a start image
        prompt["vae"] = node("VAELoader", vae_name="pixel_space")
    model = ["model", 0]
    if spec.shift is not None:
        prompt["sampling"] = node("ModelSamplingSD3", model=model, shift=spec.shift)
        model = ["sampling", 0]
    if spec.real_encoder:
        prompt["clip"] = node("NoiseARTestTinyTextEncoder", family=spec.real_encoder, seed=0)
        prompt["tokens_real"] = node("NoiseARTestTokens", clip=["clip", 0], text=PROMPTS[0])
        prompt["tokens_stand_in"] = node("NoiseARTestTokens", clip=["stand_in", 0], text=PROMPTS[0])

    def encode(name: str, text: str) -> list:
        if spec.real_encoder:
            prompt[name] = node("CLIPTextEncode", clip=["clip", 0], text=text)
        else:
            prompt[name] = node("NoiseARTestFamilyConditioning", family=family, text=text, tokens=0)
        if spec.guidance is not None:
            prompt[name + "_guided"] = node("FluxGuidance", conditioning=[name, 0], guidance=spec.guidance)
            return [name + "_guided", 0]
        return [name, 0]

    negative = encode("negative", "")
    positives = [encode(f"positive{i}", text) for i, text in enumerate(PROMPTS)]
    for i, positive in enumerate(positives):
        prompt[f"sample{i}"] = node(
            "KSampler",
            model=model,
            seed=0,
            steps=2,
            cfg=1.0 if spec.guidance is not None or family == "FluxSchnell" else 2.0,
            sampler_name="euler",
            scheduler="simple",
            positive=positive,
            negative=negative,
            latent_image=["latent", 0],
            denoise=1.0,
        )
        prompt[f"save{i}"] = node("SaveLatent", samples=[f"sample{i}", 0], filename_prefix=f"families/{family}{i}")
    prompt["describe_positive"] = node("NoiseARTestDescribeConditioning", conditioning=positives[0])
    return prompt


@pytest.fixture(scope="module")
def family_run(comfy):
    """family -> (history entry, saved latents by node id, UI JSON by node id); each graph runs once."""
    runs = {}

    def run(family: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, dict]]:
        if family not in runs:
            entry = comfy.run(family_graph(family))
            assert entry["status"]["status_str"] == "success", entry["status"]
            latents, texts = {}, {}
            for node_id, output in entry["outputs"].items():
                for record in output.get("latents", []):
                    path = comfy.base / "output" / record["subfolder"] / record["filename"]
                    latents[node_id] = load_file(str(path))["latent_tensor"]
                if output.get("text"):
                    texts[node_id] = json.loads(output["text"][0])
            runs[family] = entry, latents, texts
        return runs[family]

    return run


@pytest.mark.parametrize("family", FAMILIES)
def test_text_to_image_graph_samples_the_family_latent_and_follows_the_prompt(family_run, family):
    _, latents, _ = family_run(family)
    first, second = latents["save0"], latents["save1"]
    assert tuple(first.shape) == tuple(second.shape) == FAMILIES[family].latent
    assert torch.isfinite(first).all() and torch.isfinite(second).all()
    assert not torch.equal(first, second), "another prompt, same seed: the sample did not change"


@pytest.mark.parametrize("family", FAMILIES)
def test_the_sampled_conditioning_has_the_family_shape_padding_and_keys(family_run, family):
    _, _, texts = family_run(family)
    spec, positive = FAMILIES[family], texts["describe_positive"]
    assert positive["cross_attn"] == list(spec.cross_attn)
    assert positive["row_widths"] == spec.row_widths
    assert positive["keys"] == list(spec.keys)
    assert positive["pooled_output"] == (None if spec.pooled is None else list(spec.pooled))
    assert positive["attention_mask"] == spec.attention_mask
    assert positive["guidance"] == spec.guidance


@pytest.mark.parametrize("family", FAMILIES)
def test_the_stand_in_clip_encodes_exactly_as_the_conditioning_fixture(family_run, family):
    _, _, texts = family_run(family)
    spec, described = FAMILIES[family], texts["describe_clip_encode"]
    assert described == texts["describe_fixture"]
    assert described["cross_attn"] == list(spec.cross_attn) and described["row_widths"] == spec.row_widths
    assert described["keys"] == [key for key in spec.keys if key != "guidance"]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_long_prompt_grows_the_conditioning_past_the_padded_length(family_run, family):
    _, _, texts = family_run(family)
    long = texts["describe_long"]
    assert long["cross_attn"] == [1, FAMILIES[family].long_tokens, FAMILIES[family].cross_attn[2]]


@pytest.mark.parametrize("family", [name for name, spec in FAMILIES.items() if spec.real_encoder])
def test_stand_in_tokens_are_laid_out_as_the_real_tokenizer_lays_them_out(family_run, family):
    """Same streams, chunk lengths, start/end/pad tokens; only the words' own ids differ."""
    _, _, texts = family_run(family)
    real, stand_in = texts["tokens_real"], texts["tokens_stand_in"]
    assert sorted(real) == sorted(stand_in)
    for stream in real:
        assert [len(chunk) for chunk in real[stream]] == [len(chunk) for chunk in stand_in[stream]], stream
        for real_chunk, stand_in_chunk in zip(real[stream], stand_in[stream]):
            words = [i for i, (a, b) in enumerate(zip(real_chunk, stand_in_chunk)) if a != b]
            assert len(words) == WORDS, (stream, real_chunk[:10], stand_in_chunk[:10])
            assert words == list(range(words[0], words[0] + WORDS)), stream
