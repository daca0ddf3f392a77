"""NoiseAR Text Encode and the warnings of the CONDITIONING route, against the fake host (tests/fake_comfy.py).

The fake CLIP encodes token t with weight w as w * t in every channel, so the tests read back which
tokens and weights reached the sampler's conditioning and the prior's prior_text. The numbers of the
real encoders are checked in tests/host/test_text_parity.py.
"""

from __future__ import annotations

import logging

import fake_comfy
import pytest
import torch
from builders import HUNYUAN_DIT, SDXL
from test_nodes import SMALL, empty_latent, recording_prior

from nodes import host
from nodes.conditioning import EXACT
from nodes.definitions import (
    NODE_CLASS_MAPPINGS,
    NODE_DISPLAY_NAME_MAPPINGS,
    NoiseARLatentNode,
    NoiseARPreviewNode,
    NoiseARTextEncodeNode,
)
from nodes.widgets import SIZE_MODES, NoiseARNodeError

PROMPT = "a lighthouse on a cliff at sunset"
LONG = " ".join(f"word{i}" for i in range(80))  # 80 tokens: more than the 75 a 77-token window holds
FAMILIES = {"sdxl": SDXL, "hunyuan": HUNYUAN_DIT}


@pytest.fixture(autouse=True)
def host_fakes(monkeypatch, tmp_path):
    return fake_comfy.install(monkeypatch, tmp_path)


def text_encode(clip, text):
    conditioning, prior_text = NoiseARTextEncodeNode().encode(clip, text)
    return conditioning, prior_text


def token_ids(conditioning) -> list[float]:
    """The fake encoding's first channel per position: token id times weight."""
    return conditioning[0][0][0, :, 0].tolist()


def test_the_node_is_registered_with_a_clip_and_a_multiline_text():
    assert NODE_CLASS_MAPPINGS["NoiseARTextEncode"] is NoiseARTextEncodeNode
    assert NODE_DISPLAY_NAME_MAPPINGS["NoiseARTextEncode"] == "NoiseAR Text Encode"
    required = NoiseARTextEncodeNode.INPUT_TYPES()["required"]
    assert required["clip"][0] == "CLIP" and required["text"][0] == "STRING" and required["text"][1]["multiline"]
    assert NoiseARTextEncodeNode.RETURN_NAMES == ("conditioning", "prior_text")
    assert "(word:1.2)" in required["text"][1]["tooltip"]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_plain_short_prompt_is_encoded_once_and_prior_text_is_marked_exact(family, host_fakes):
    clip = fake_comfy.CLIP(family)
    conditioning, prior_text = text_encode(clip, PROMPT)
    assert len(clip.calls) == 1  # both outputs share one encoding
    assert torch.equal(conditioning[0][0], host.encode_text(fake_comfy.CLIP(family), PROMPT)[0][0])
    assert prior_text[0][0] is conditioning[0][0] and prior_text[0][1][EXACT] is True
    assert EXACT not in conditioning[0][1]
    assert prior_text[0][0].shape[1] == 77
    assert host_fakes.node_texts[-1][1].startswith("prior_text: ")


def test_a_long_sdxl_prompt_reaches_the_prior_cut_like_diffusers(host_fakes):
    clip = fake_comfy.CLIP("sdxl")
    conditioning, prior_text = text_encode(clip, LONG)
    assert conditioning[0][0].shape[1] == 154  # the sampler gets the whole prompt, in two chunks
    for stream in ("l", "g"):
        (chunk,) = clip.calls[-1][0][stream]
        assert [t for t, _ in chunk] == [49406] + [1000 + i for i in range(75)] + [49407]  # end token at 76
    assert token_ids(prior_text) == [49406] + [1000 + i for i in range(75)] + [49407]
    assert "longer than 75 tokens" in host_fakes.node_texts[-1][1]


def test_a_long_hunyuan_prompt_reaches_bert_cut_to_77_and_mt5_whole(host_fakes):
    clip = fake_comfy.CLIP("hunyuan")
    conditioning, prior_text = text_encode(clip, LONG)
    assert conditioning[0][0].shape[1] == 82  # ComfyUI's BERT stream: the whole prompt in one pass
    tokens = clip.calls[-1][0]
    assert [t for t, _ in tokens["hydit_clip"][0]] == [101] + [1000 + i for i in range(75)] + [102]
    assert tokens["mt5xl"] == clip.tokenize(LONG)["mt5xl"]
    assert prior_text[0][1]["attention_mask"].tolist() == [[1] * 77] and prior_text[0][1][EXACT]


def test_a_short_hunyuan_prompt_keeps_bert_padding_and_its_mask():
    conditioning, prior_text = text_encode(fake_comfy.CLIP("hunyuan"), "a red panda")
    assert prior_text[0][1]["attention_mask"].tolist() == [[1] * 5 + [0] * 72]


def test_weight_syntax_reaches_the_sampler_only(host_fakes):
    clip = fake_comfy.CLIP("sdxl")
    conditioning, prior_text = text_encode(clip, "(red:1.2) car")
    red, literal = clip.vocab["red"], clip.vocab["(red:1.2)"]
    assert token_ids(conditioning)[1] == pytest.approx(1.2 * red)
    assert token_ids(prior_text)[1] == literal  # the prior reads the text as typed, weight 1 (as diffusers)
    assert len(clip.calls) == 2 and "Weight syntax" in host_fakes.node_texts[-1][1]


def test_clip_set_last_layer_reaches_the_sampler_only(host_fakes):
    clip = fake_comfy.CLIP("sdxl")
    clip.layer_idx = -1
    text_encode(clip, PROMPT)
    assert [layer for _, layer in clip.calls] == [-1, None] and clip.layer_idx == -1
    assert "default layer" in host_fakes.node_texts[-1][1]


def test_clips_no_prior_is_trained_with_are_refused_clearly():
    with pytest.raises(NoiseARNodeError, match=r"SDXL.*Hunyuan-DiT.*\['l'\]"):
        text_encode(fake_comfy.CLIP("sd1"), PROMPT)
    with pytest.raises(NoiseARNodeError, match="no text encoder"):
        text_encode(None, PROMPT)


# The NoiseAR nodes: prior_text is exact, a long CLIPTextEncode conditioning gets a visible warning ---------
def noisear_noise(prior, conditioning):
    return NODE_CLASS_MAPPINGS["NoiseARNoise"]().make(prior, conditioning, 3, 0.5, SIZE_MODES[0])[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_prior_text_of_a_long_prompt_gives_no_warning(family, host_fakes):
    clip = fake_comfy.CLIP(family)
    prior = recording_prior(FAMILIES[family])
    noise = noisear_noise(prior, text_encode(clip, LONG)[1])
    noise.generate_noise(empty_latent(height=128, width=128))
    assert noise.warning is None and not any("WARNING" in text for _, text in host_fakes.node_texts)
    assert torch.equal(prior.model.calls[0]["text"], text_encode(clip, LONG)[1][0][0])


@pytest.mark.parametrize("family, one_pass", [("sdxl", False), ("hunyuan", True)])
def test_a_long_conditioning_warns_on_the_node_in_the_console_and_in_the_stats(family, one_pass, host_fakes, caplog):
    prior = recording_prior(FAMILIES[family])
    conditioning = host.encode_text(fake_comfy.CLIP(family), LONG)
    with caplog.at_level(logging.WARNING, logger="NoiseAR"):
        noise = noisear_noise(prior, conditioning)
    tokens = conditioning[0][0].shape[1]
    warning = noise.warning
    assert f"has {tokens} tokens" in warning and "reads only the first 77" in warning and "prior_text" in warning
    assert ("one pass" in warning) == one_pass
    assert warning in caplog.text and host_fakes.node_texts == [("7", warning)]
    latent = empty_latent(height=128, width=128)
    assert warning in NoiseARPreviewNode().preview(noise, latent)["result"][1]
    model = fake_comfy.Model()
    info = NoiseARLatentNode().make(model, prior, conditioning, 3, 0.5, SIZE_MODES[0], latent)["result"][1]
    assert warning in info


def test_a_conditioning_of_77_tokens_gives_no_warning(host_fakes):
    noise = noisear_noise(recording_prior(SDXL), host.encode_text(fake_comfy.CLIP("sdxl"), PROMPT))
    assert noise.warning is None and host_fakes.node_texts == []


def test_own_priors_read_every_token_and_say_what_they_were_trained_on():
    conditioning = [[torch.randn(1, 154, SMALL.text_dim), {}]]
    noise = noisear_noise(recording_prior(SMALL), conditioning)
    assert "own prior reads all of them" in noise.warning and "noisear train" in noise.warning
