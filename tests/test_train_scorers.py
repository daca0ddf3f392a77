"""CLIP score / PickScore adapter with a tiny random CLIPModel, tokenizer and preprocessor settings built here
(nothing downloaded; no imaging library needed)."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
from test_train_text_encoders import clip_tokenizer  # noqa: E402
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer  # noqa: E402

from noisear.train.dpo import PromptSet  # noqa: E402
from noisear.train.scorers import clip_pixels, clip_scorer  # noqa: E402

SIZE = 32
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
STRINGS = ("a red cat", "blue sky", "dog")


@pytest.fixture
def clip_folder(tmp_path, monkeypatch):
    """A saved tiny random CLIPModel (32-d towers, 32 px images, 8 px patches, 16-d projection), its tokenizer and
    the preprocessor_config.json a CLIPImageProcessor(size/crop 32) writes."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer = clip_tokenizer(tmp_path / "clip")
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=SIZE, patch_size=8
        ),
        projection_dim=16,
        logit_scale_init_value=2.0,
    )
    torch.manual_seed(5)  # weights whose cosines on these images and prompts have both signs
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    settings = {
        "image_processor_type": "CLIPImageProcessor",
        "size": {"shortest_edge": SIZE},
        "crop_size": {"height": SIZE, "width": SIZE},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": MEAN,
        "image_std": STD,
        "resample": 3,
    }
    (tmp_path / "clip" / "preprocessor_config.json").write_text(json.dumps(settings))
    return tmp_path / "clip"


def prompts(strings=STRINGS):
    count = len(STRINGS)
    return PromptSet(torch.zeros(count, 4, 8), torch.ones(count, 4, dtype=torch.bool), torch.arange(count), strings)


def reference_cosine(folder, images, strings):
    """Cosine of the model's image and text features, with the CLIP normalisation done by hand: the images are
    already SIZE x SIZE in [0,1], so preprocessing is only (x - mean) / std (no resize, no 1/255 rescale)."""
    model = CLIPModel.from_pretrained(folder).eval()
    tokens = CLIPTokenizer.from_pretrained(folder)(list(strings), padding=True, return_tensors="pt")
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    with torch.no_grad():
        image = model.get_image_features(pixel_values=(images - mean) / std)
        text = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    image, text = (getattr(x, "pooler_output", x) for x in (image, text))
    cosine = (image / image.norm(dim=-1, keepdim=True) * text / text.norm(dim=-1, keepdim=True)).sum(-1)
    return cosine, model.logit_scale.exp().detach()


@pytest.fixture
def images():
    return torch.rand(len(STRINGS), 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def test_clip_score_is_scale_times_nonnegative_cosine(clip_folder, images):
    cosine, _ = reference_cosine(clip_folder, images, STRINGS)
    for scale in (100, 2.5):
        scores = clip_scorer(clip_folder, scale=scale)(images, prompts())
        assert scores.shape == (len(STRINGS),)
        assert torch.isfinite(scores).all()
        torch.testing.assert_close(scores, scale * cosine.clamp_min(0), atol=1e-4, rtol=1e-4)
    assert (cosine < 0).any() and (cosine > 0).any()  # the clipping at 0 is exercised


def test_pickscore_is_logit_scale_times_cosine(clip_folder, images):
    cosine, logit_scale = reference_cosine(clip_folder, images, STRINGS)
    scores = clip_scorer(clip_folder)(images, prompts())
    assert scores.shape == (len(STRINGS),)
    assert torch.isfinite(scores).all()
    assert cosine.abs().min() > 1e-3  # a random model: the scores are not all zero, so the check can fail
    torch.testing.assert_close(scores, logit_scale * cosine, atol=1e-4, rtol=1e-4)


def test_prompts_without_strings_are_refused(clip_folder, images):
    with pytest.raises(ValueError, match="PromptSet.strings"):
        clip_scorer(clip_folder)(images, prompts(strings=()))


def test_clip_pixels_crops_the_centre_and_resizes_the_shortest_edge():
    settings = {
        "size": {"shortest_edge": SIZE},
        "crop_size": {"height": SIZE, "width": SIZE},
        "image_mean": MEAN,
        "image_std": STD,
    }
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    wide = torch.rand(2, 3, SIZE, SIZE + 16, generator=torch.Generator().manual_seed(2))  # no resize, crop 8 | 8
    torch.testing.assert_close(clip_pixels(wide, settings), (wide[..., 8 : 8 + SIZE] - mean) / std)
    flat = torch.full((1, 3, 2 * SIZE, 3 * SIZE), 0.25)  # resized to 32 x 48, cropped to 32 x 32
    torch.testing.assert_close(clip_pixels(flat, settings), ((0.25 - mean) / std).expand(1, 3, SIZE, SIZE))
