"""CONDITIONING -> the prior's text input.

Rules (documented in docs/comfyui.md):
- The FIRST entry of the CONDITIONING list is used (combine/concat nodes append further entries;
  they are ignored). Its tensor is [1, T, D]; one conditioning is broadcast over the latent batch.
- Published priors (SDXL, Hunyuan-DiT) were trained on diffusers' embeddings: exactly 77 tokens,
  no attention mask. They get the first 77 tokens and no mask. ComfyUI's Hunyuan-DiT
  "attention_mask" is therefore not applied to them, because the prior never saw one.
- Own priors take every token, and the "attention_mask" of the entry when it has one.
- An entry whose dict has ``EXACT`` (NoiseAR Text Encode's ``prior_text``) is the prior's exact
  training embedding (diffusers' tokenization, 77 tokens). Any other conditioning of more than 77
  tokens comes from a prompt over 75 tokens: the result carries a warning saying what the prior reads.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .prior import NoiseARPrior
from .widgets import NoiseARNodeError

PUBLISHED_TOKENS = 77
EXACT = "noisear_exact"  # key set (True) in the dict of NoiseAR Text Encode's prior_text entries

# Which text encoder output each published text width comes from.
TEXT_SOURCES = {
    2048: "SDXL / DreamShaper-XL conditioning (CLIPTextEncode on an SDXL checkpoint, CLIP-L + CLIP-G, 2048-d)",
    1024: "Hunyuan-DiT conditioning (CLIPTextEncodeHunyuanDiT, the 1024-d BERT stream)",
}


def needed_text(prior: NoiseARPrior) -> str:
    """The model family whose conditioning fits this prior, in words."""
    width = prior.config.text_dim
    return TEXT_SOURCES.get(width, f"a conditioning of width {width} (the width this prior was trained on)")


def check_width(prior: NoiseARPrior, width: int) -> None:
    if width != prior.config.text_dim:
        raise NoiseARNodeError(
            f"the positive conditioning is {width}-d, but the NoiseAR prior '{prior.name}' ({prior.variant}) "
            f"needs {needed_text(prior)}. Encode the prompt with the text encoder of the model this "
            f"checkpoint was trained for, or load the NoiseAR checkpoint that matches your model."
        )


class PriorText(NamedTuple):
    """What the prior reads: text [1 or B, T, D] fp32, mask [same B, T] bool or None, and a warning (or None)."""

    text: torch.Tensor
    mask: torch.Tensor | None
    warning: str | None


def text_from_conditioning(conditioning: list, prior: NoiseARPrior) -> PriorText:
    """The prior's text input from a CONDITIONING (``positive`` or ``prior_text``); see the module rules."""
    if not conditioning:
        raise NoiseARNodeError("the positive conditioning is empty; connect a text encode node")
    cond, extras = _first_entry(conditioning)
    if not cond.is_floating_point():
        raise NoiseARNodeError(
            f"the positive conditioning is a {cond.dtype} tensor, not floating point: text encoders give float "
            f"embeddings. Connect a text encode node's CONDITIONING (a node in between changed its type)"
        )
    check_width(prior, cond.shape[-1])
    if cond.shape[1] == 0:
        raise NoiseARNodeError(
            f"the positive conditioning has no tokens (shape {list(cond.shape)}), so the prior would draw noise "
            f"no prompt influenced. Connect a text encode node's CONDITIONING of the prompt"
        )
    if not torch.isfinite(cond).all():
        raise NoiseARNodeError(
            "the positive conditioning holds NaN or infinite values (a text encoder overflowing in fp16?); "
            "encode the prompt in fp32 or bf16 (e.g. ComfyUI's --fp32-text-enc) and run again"
        )
    warning = None if extras.get(EXACT) else long_prompt_warning(cond.shape[1], "attention_mask" in extras, prior)
    if prior.published:
        if cond.shape[1] < PUBLISHED_TOKENS:
            raise NoiseARNodeError(
                f"the positive conditioning has {cond.shape[1]} tokens; the published {prior.variant} prior "
                f"reads {PUBLISHED_TOKENS} (ComfyUI's SDXL and Hunyuan-DiT encoders always give at least that)"
            )
        return PriorText(cond[:, :PUBLISHED_TOKENS].float(), None, warning)
    mask = extras.get("attention_mask")
    if mask is not None:
        if mask.numel() != cond.shape[0] * cond.shape[1]:
            raise NoiseARNodeError(f"the conditioning's attention_mask has {mask.numel()} values for {cond.shape[1]} tokens")
        mask = mask.reshape(cond.shape[:2]).bool()
        if not mask.any(dim=1).all():
            raise NoiseARNodeError(
                "the conditioning's attention_mask marks no token of the prompt as real (all 0), so the prior would "
                "draw noise no prompt influenced. Connect the text encode node's CONDITIONING unchanged"
            )
    return PriorText(cond.float(), mask, warning)


def long_prompt_warning(tokens: int, one_pass: bool, prior: NoiseARPrior) -> str | None:
    """The warning for a CONDITIONING (not prior_text) of ``tokens`` tokens, None for at most 77.

    ``one_pass``: the encoder read the whole prompt at once (ComfyUI's Hunyuan-DiT BERT, which has an
    attention mask), so even its first 77 tokens differ from diffusers' truncated encoding.
    """
    if tokens <= PUBLISHED_TOKENS:
        return None
    fix = (
        "Connect NoiseAR Text Encode's prior_text to give the prior exactly the embedding it was trained on "
        "(diffusers' truncation to 77 tokens)."
    )
    if not prior.published:
        return (
            f"NoiseAR WARNING: the positive conditioning has {tokens} tokens (the prompt is longer than 75 "
            f"tokens). This own prior reads all of them, but priors trained with `noisear train` saw only "
            f"the first 77. {fix}"
        )
    cut = f"The published {prior.variant} prior reads only the first 77, so the rest of the prompt does not reach it"
    if one_pass:
        cut += (
            ", and because ComfyUI encoded the whole prompt in one pass, even those 77 differ from the "
            "embedding the prior was trained on"
        )
    return f"NoiseAR WARNING: the positive conditioning has {tokens} tokens (the prompt is longer than 75 tokens). {cut}. {fix}"


def _first_entry(conditioning: list) -> tuple[torch.Tensor, dict[str, Any]]:
    entry = conditioning[0]
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], torch.Tensor) and entry[0].ndim == 3):
        raise NoiseARNodeError("positive is not a CONDITIONING ([[tensor [1, tokens, width], dict], ...])")
    return entry[0], entry[1] or {}
