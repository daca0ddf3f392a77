"""CONDITIONING -> the prior's text input: the tensor the diffusion model reads, less the family's padding.

Rules (documented in docs/comfyui.md, "The prompt the prior reads"):
- The FIRST entry of the CONDITIONING list is used (combine/concat nodes append further entries;
  they are ignored). Its tensor is [1, T, D]; one conditioning is broadcast over the latent batch.
- Published priors (SDXL, Hunyuan-DiT) were trained on diffusers' embeddings: exactly 77 tokens,
  no attention mask. They get the first 77 tokens and no mask. ComfyUI's Hunyuan-DiT
  "attention_mask" is therefore not applied to them, because the prior never saw one.
- Own priors read every token of the prompt and none of its padding; which rows are padding is the family's
  rule (``prompt_mask``, noisear.families.Family.text_padding), the one rule the sampling nodes and the Dataset
  Collector share, so a dataset stores exactly what the prior reads at inference:
  - ``TEXT_MASK`` in the dict (NoiseAR Text Encode's prior_text on SD3 / Flux): that mask, for any family;
  - "mask" (Hunyuan-DiT, Lumina2, HunyuanImage 2.1) and an unknown family: the entry's ``attention_mask``;
  - "zeros" (Wan): ComfyUI zeroes the rows after the prompt, so trailing all-zero rows are padding;
  - "t5" (SD3, Flux) without TEXT_MASK: T5 pads with real pad-token embeddings that the tensor cannot tell from
    the prompt, so every row is read, with a warning that names the exact route (NoiseAR Text Encode);
  - "none" (Chroma, ChromaRadiance, Qwen-Image) and "clip" (own SDXL priors, CLIP's padding is part of the text
    as in the published priors): every row. On Flux and Chroma an ``attention_mask`` is an image-region mask,
    never a text mask, and Qwen-Image's model ignores one: it is not read there.
- An entry whose dict has ``EXACT`` (NoiseAR Text Encode's ``prior_text``) is the prior's exact
  training embedding. Any other conditioning of more than 77 tokens for an SDXL / Hunyuan-DiT-era prior comes
  from a prompt over 75 tokens: the result carries a warning saying what the prior reads.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from noisear.families import Family

from .family import of_prior, prior_side, with_text_width
from .prior import NoiseARPrior
from .widgets import NoiseARNodeError

PUBLISHED_TOKENS = 77
EXACT = "noisear_exact"  # key set (True) in the dict of NoiseAR Text Encode's prior_text entries
TEXT_MASK = "noisear_text_mask"  # key NoiseAR Text Encode sets on SD3 / Flux prior_text: [1, T] bool, True = prompt
CLIP_ERA = ("", "sdxl", "hunyuan-dit")  # family keys of priors whose text is 77-token chunks (long-prompt warning)

# Which text encoder output each published text width comes from.
TEXT_SOURCES = {
    2048: "SDXL / DreamShaper-XL conditioning (CLIPTextEncode on an SDXL checkpoint, CLIP-L + CLIP-G, 2048-d)",
    1024: "Hunyuan-DiT conditioning (CLIPTextEncodeHunyuanDiT, the 1024-d BERT stream)",
}


def needed_text(prior: NoiseARPrior) -> str:
    """The conditioning that fits this prior, in words."""
    width, family = prior.config.text_dim, of_prior(prior)
    if prior.published or family is None:
        return TEXT_SOURCES.get(width, f"a conditioning of width {width} (the width this prior was trained on)")
    return f"{family.title} conditioning ({width}-d, the text encoder of a {family.title} checkpoint)"


def check_width(prior: NoiseARPrior, width: int, node: str) -> None:
    if width != prior.config.text_dim:
        raise NoiseARNodeError(
            f"{node}: the positive conditioning is {width}-d{with_text_width(width)}, but {prior_side(prior)} needs "
            f"{needed_text(prior)}. Encode the prompt with the text encoder of the model this prior was trained "
            f"for, or load the NoiseAR prior that matches your model."
        )


class PriorText(NamedTuple):
    """What the prior reads: text [1 or B, T, D] fp32, mask [same B, T] bool (True = a token of the prompt) or None
    (every token), and a warning (or None)."""

    text: torch.Tensor
    mask: torch.Tensor | None
    warning: str | None


def conditioning_entry(conditioning: list) -> tuple[torch.Tensor, dict[str, Any]]:
    """The first entry's tensor [B, T, D] and dict, refused unless it is finite float text of at least one token."""
    if not conditioning:
        raise NoiseARNodeError("the positive conditioning is empty; connect a text encode node")
    cond, extras = _first_entry(conditioning)
    if not cond.is_floating_point():
        raise NoiseARNodeError(
            f"the positive conditioning is a {cond.dtype} tensor, not floating point: text encoders give float "
            f"embeddings. Connect a text encode node's CONDITIONING (a node in between changed its type)"
        )
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
    return cond, extras


def prompt_mask(cond: torch.Tensor, extras: dict[str, Any], family: Family | None) -> tuple[torch.Tensor | None, str | None]:
    """The family's rule (see the module doc): which rows of ``cond`` [B, T, D] are the prompt -> (mask [B, T] bool,
    or None for every row; a warning or None)."""
    if TEXT_MASK in extras:
        return _given_mask(extras[TEXT_MASK], cond, TEXT_MASK), None
    padding = family.text_padding if family is not None else "mask"
    if padding == "mask" and extras.get("attention_mask") is not None:
        return _given_mask(extras["attention_mask"], cond, "attention_mask"), None
    if padding == "zeros":
        rows = torch.arange(cond.shape[1])
        last = torch.where((cond.abs().amax(dim=-1) > 0).cpu(), rows, -1).amax(dim=1)  # [B]: the last row with a value
        mask = rows[None, :] <= last[:, None]
        return _checked(mask, "the conditioning has only zero rows (the padding Wan's encoder zeroes)"), None
    if padding == "t5":
        return None, (
            f"NoiseAR WARNING: this {family.title} conditioning does not say where the prompt ends: its T5 stream is "
            f"padded with pad-token embeddings ({cond.shape[1]} rows), which no tensor tells apart from the prompt, so "
            f"the prior reads the padding as text. NoiseAR Text Encode's prior_text (connect it to the prior's text "
            f"input) gives the prior exactly the prompt."
        )
    return None, None


def _given_mask(mask: Any, cond: torch.Tensor, key: str) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.numel() != cond.shape[0] * cond.shape[1]:
        count = mask.numel() if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise NoiseARNodeError(f"the conditioning's {key} has {count} values for {cond.shape[1]} tokens")
    return _checked(
        mask.reshape(cond.shape[:2]).bool().cpu(), f"the conditioning's {key} marks no token of the prompt as real (all 0)"
    )


def _checked(mask: torch.Tensor, problem: str) -> torch.Tensor:
    """``mask``, refused (saying ``problem``) when it leaves an item without a token."""
    if not mask.any(dim=1).all():
        raise NoiseARNodeError(
            f"{problem}, so the prior would draw noise no prompt influenced. Connect the text encode node's "
            f"CONDITIONING unchanged"
        )
    return mask


def read_text(conditioning: list, family: Family | None) -> PriorText:
    """The prompt of a CONDITIONING by the family's rule: the whole tensor fp32 and its prompt mask (see prompt_mask).
    What an own prior of ``family`` reads, and what the Dataset Collector stores for it."""
    cond, extras = conditioning_entry(conditioning)
    mask, warning = prompt_mask(cond, extras, family)
    return PriorText(cond.float(), mask, warning)


def text_from_conditioning(conditioning: list, prior: NoiseARPrior, node: str = "NoiseAR Noise") -> PriorText:
    """The prior's text input from a CONDITIONING (``positive`` or ``prior_text``); see the module rules."""
    cond, extras = conditioning_entry(conditioning)
    check_width(prior, cond.shape[-1], node)
    family = of_prior(prior)
    warning = None
    if not extras.get(EXACT) and prior.config.family_key in CLIP_ERA:
        warning = long_prompt_warning(cond.shape[1], "attention_mask" in extras, prior)
    if prior.published:
        if cond.shape[1] < PUBLISHED_TOKENS:
            raise NoiseARNodeError(
                f"the positive conditioning has {cond.shape[1]} tokens; the published {prior.variant} prior "
                f"reads {PUBLISHED_TOKENS} (ComfyUI's SDXL and Hunyuan-DiT encoders always give at least that)"
            )
        return PriorText(cond[:, :PUBLISHED_TOKENS].float(), None, warning)
    text = read_text(conditioning, family)
    return PriorText(text.text, text.mask, "\n".join(filter(None, [warning, text.warning])) or None)


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
