"""Real-model scorers for ``noisear eval``: (images [B,3,H,W] in [0,1], PromptSet) -> score [B], higher is better.

CLIP score and PickScore (transformers), HPSv2 (open_clip) and ImageReward (image-reward) are lazy adapters that
take local weight paths and never download; their packages are imported only when one is built.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import PromptSet
from .evaluate import ImageScorer


def clip_pixels(images: torch.Tensor, settings: dict[str, Any]) -> torch.Tensor:
    """[B,3,H,W] in [0,1] -> CLIP pixel_values per a transformers preprocessor_config.json: bicubic resize of the
    shortest edge (or to height x width), centre crop, (x - image_mean) / image_std. Plain torch, no imaging library."""
    size, crop = settings.get("size", 224), settings.get("crop_size", 224)
    height, width = images.shape[-2:]
    if isinstance(size, dict) and "height" in size:
        resized = (size["height"], size["width"])
    else:
        edge = size["shortest_edge"] if isinstance(size, dict) else size
        resized = (round(height * edge / min(height, width)), round(width * edge / min(height, width)))
    pixels = torch.nn.functional.interpolate(images.clamp(0, 1), size=resized, mode="bicubic", antialias=True).clamp(0, 1)
    crop_height, crop_width = (crop, crop) if isinstance(crop, int) else (crop["height"], crop["width"])
    top, left = (resized[0] - crop_height) // 2, (resized[1] - crop_width) // 2
    pixels = pixels[..., top : top + crop_height, left : left + crop_width]
    mean = torch.tensor(settings.get("image_mean", (0.48145466, 0.4578275, 0.40821073)))[:, None, None]
    std = torch.tensor(settings.get("image_std", (0.26862954, 0.26130258, 0.27577711)))[:, None, None]
    return (pixels - mean.to(pixels)) / std.to(pixels)


def clip_scorer(model_dir: str | Path, scale: float | None = None, device: str = "cpu") -> ImageScorer:
    """CLIP score (``scale`` * cosine clipped at 0, usually 100) or PickScore (scale None: the model's logit_scale
    * cosine) from a local transformers CLIPModel folder with its tokenizer and preprocessor_config.json (e.g.
    openai/clip-vit-large-patch14 or yuvalkirstain/PickScore_v1, downloaded by you). Prompts need ``strings``."""
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(str(model_dir), local_files_only=True).to(device).train(False)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    settings_path = Path(model_dir) / "preprocessor_config.json"
    if not settings_path.is_file():
        raise FileNotFoundError(
            f"{settings_path} is missing: the CLIP folder needs the image preprocessor settings "
            "(copy preprocessor_config.json from the model's processor)"
        )
    settings = json.loads(settings_path.read_text(encoding="utf-8"))

    @torch.no_grad()
    def score(images: torch.Tensor, prompts: PromptSet) -> torch.Tensor:
        if not prompts.strings:
            raise ValueError("CLIP-based scorers need the prompt texts (PromptSet.strings)")
        tokens = tokenizer(
            list(prompts.strings),
            padding=True,
            truncation=True,
            return_tensors="pt",
            max_length=model.config.text_config.max_position_embeddings,
        ).to(device)
        image = model.get_image_features(pixel_values=clip_pixels(images.float().to(device), settings))
        text = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        image, text = (getattr(x, "pooler_output", x) for x in (image, text))  # transformers 5 may return outputs
        cosine = torch.nn.functional.cosine_similarity(image, text, dim=-1)
        return (scale * cosine.clamp_min(0) if scale is not None else model.logit_scale.exp() * cosine).cpu()

    return score


def hpsv2_scorer(checkpoint: str | Path, device: str = "cpu") -> ImageScorer:
    """HPSv2 (open_clip ViT-H-14 with the HPS checkpoint you downloaded); needs ``pip install open_clip_torch``."""
    try:
        import open_clip
    except ImportError as err:
        raise ImportError("the HPSv2 scorer needs open_clip: pip install open_clip_torch") from err
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-H-14", pretrained=None, device=device)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state.get("state_dict", state))
    model.train(False)
    tokenizer = open_clip.get_tokenizer("ViT-H-14")
    size = model.visual.image_size
    mean = torch.tensor(model.visual.image_mean or (0.48145466, 0.4578275, 0.40821073))[:, None, None]
    std = torch.tensor(model.visual.image_std or (0.26862954, 0.26130258, 0.27577711))[:, None, None]

    @torch.no_grad()
    def score(images: torch.Tensor, prompts: PromptSet) -> torch.Tensor:
        pixels = torch.nn.functional.interpolate(images.clamp(0, 1), size=size, mode="bicubic", antialias=True)
        image = model.encode_image(((pixels - mean) / std).to(device), normalize=True)
        text = model.encode_text(tokenizer(list(prompts.strings)).to(device), normalize=True)
        return (100 * (image * text).sum(-1)).cpu()

    return score


def image_reward_scorer(checkpoint: str | Path, med_config: str | Path, device: str = "cpu") -> ImageScorer:
    """ImageReward from your local ImageReward.pt and med_config.json; needs ``pip install image-reward``."""
    try:
        import ImageReward
        from PIL import Image
    except ImportError as err:
        raise ImportError("the ImageReward scorer needs: pip install image-reward pillow") from err
    model = ImageReward.load(str(checkpoint), device=device, med_config=str(med_config))

    @torch.no_grad()
    def score(images: torch.Tensor, prompts: PromptSet) -> torch.Tensor:
        pictures = [
            Image.fromarray((image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)) for image in images.cpu()
        ]
        return torch.tensor([float(model.score(text, [picture])) for text, picture in zip(prompts.strings, pictures)])

    return score
