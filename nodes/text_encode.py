"""NoiseAR Text Encode: one prompt, two CONDITIONINGs, one for the sampler and one for the prior.

``conditioning`` is exactly what CLIPTextEncode gives (weight syntax honoured, the whole prompt).
``prior_text`` is what NoiseAR priors read of the prompt: the CLIP's own tokenizer with ComfyUI's weight syntax
read as plain text, encoded by ComfyUI's own encoder with the model's default layer (CLIPSetLastLayer and
tokenizer options are not applied to it), per family:

- SDXL (streams "l" CLIP-L, "g" CLIP-bigG): penultimate states concatenated, each stream cut to 77 tokens (start
  token, the first 75 tokens, end token, padding) as diffusers' ``encode_prompt`` makes it for the published
  priors and noisear.train.text_encoders: [1, 77, 2048].
- Hunyuan-DiT (streams "hydit_clip" BERT, "mt5xl"): BERT's last state cut to 77 tokens [1, 77, 1024] and its
  attention_mask [1, 77]; the mT5 stream, which the prior does not read, gets the whole text as in
  CLIPTextEncode (so prior_text is also a valid Hunyuan-DiT conditioning).
- SD3 (streams "l", "g", "t5xxl") and Flux (streams "l", "t5xxl"): the whole prompt, and in ``TEXT_MASK`` the true
  length its T5 stream padding hides: T5 pads to a minimum length (SD3 77, Flux 256) with pad-token embeddings the
  tensor cannot tell from the prompt, so the mask is read from the tokens (the prompt ends at T5's end token). SD3's
  conditioning is its 77-token CLIP chunks (all read, as CLIP's padding is for SDXL), then the T5 rows; Flux's is
  the T5 rows alone.

Its entries carry ``{EXACT: True}``, so the NoiseAR nodes know they need no warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from . import host
from .conditioning import EXACT, PUBLISHED_TOKENS, TEXT_MASK
from .widgets import NoiseARNodeError

T5_STREAM, T5_END = "t5xxl", 1  # ComfyUI's T5-XXL token stream and its end token </s> (padding comes after it)
CLIP_CHUNK = 77  # tokens of one CLIP chunk: one conditioning row each


@dataclass(frozen=True)
class Encoder:
    """A text encoder NoiseAR Text Encode knows, by the sorted token streams of its CLIP."""

    family: str  # how the note names it
    cut: tuple[str, ...] = ()  # streams cut to 77 tokens, as diffusers cut them for the published priors
    clip_rows: str | None = None  # T5 families: the CLIP stream whose 77-token chunks come before the T5 rows
    t5: bool = False  # the conditioning ends in a padded T5 stream: prior_text carries its true length


ENCODERS = {
    ("g", "l"): Encoder("SDXL", cut=("l", "g")),
    ("hydit_clip", "mt5xl"): Encoder("Hunyuan-DiT", cut=("hydit_clip",)),
    ("g", "l", "t5xxl"): Encoder("SD3", clip_rows="l", t5=True),
    ("l", "t5xxl"): Encoder("Flux", t5=True),
}


def encoder_of(tokens: host.Tokens) -> Encoder:
    """The encoder of a CLIP's tokens; an error for CLIPs NoiseAR Text Encode does not serve."""
    encoder = ENCODERS.get(tuple(sorted(tokens))) if isinstance(tokens, dict) else None
    if encoder is None:
        streams = sorted(tokens) if isinstance(tokens, dict) else type(tokens).__name__
        raise NoiseARNodeError(
            f"NoiseAR Text Encode knows the text encoders whose conditioning hides what the prior must not read: SDXL "
            f"(CLIP-L + CLIP-G) and Hunyuan-DiT (BERT + mT5), whose priors read the first 77 tokens, and SD3 and Flux, "
            f"whose T5 padding it marks; this CLIP's tokenizer gives the streams {streams}. Chroma, Qwen-Image, "
            f"Lumina2, HunyuanImage 2.1 and Wan conditionings say where their prompt ends themselves: feed the NoiseAR "
            f"node a CLIPTextEncode conditioning"
        )
    return encoder


def serves(clip: Any) -> bool:
    """True for the CLIPs NoiseAR Text Encode serves, whose prior_text is what priors read."""
    tokens = host.tokenize(clip, "", weights=False)
    return isinstance(tokens, dict) and tuple(sorted(tokens)) in ENCODERS


def first_77(chunks: list[list[tuple]], stream: str) -> tuple[list[list[tuple]], bool]:
    """diffusers' truncation of one stream: (its first chunk cut to 77 tokens ending in the end token, was cut).

    CLIP streams come in chunks of exactly 77 ([start, 75 tokens, end] when the prompt goes on); the BERT
    stream comes as one chunk of up to 512 tokens, padded to at least 77, that ends in its end token
    when longer than 77.
    """
    first = chunks[0]
    cut = len(chunks) > 1 or len(first) > PUBLISHED_TOKENS
    if len(first) > PUBLISHED_TOKENS:
        first = first[: PUBLISHED_TOKENS - 1] + first[-1:]
    if len(first) != PUBLISHED_TOKENS:
        raise NoiseARNodeError(
            f"the CLIP's '{stream}' tokenizer gave {len(first)} tokens where SDXL's and Hunyuan-DiT's give at "
            f"least {PUBLISHED_TOKENS}; this CLIP is not one NoiseAR priors are trained with"
        )
    return [first], cut


def t5_prompt_mask(tokens: host.Tokens, rows: int, encoder: Encoder) -> torch.Tensor | None:
    """[1, rows] bool: True on the conditioning rows of the prompt, False on the T5 padding after T5's end token;
    None when the rows do not fall into the CLIP chunks and T5 tokens (a text encoder without its T5 part: nothing
    is padded with pad embeddings then, every row is read)."""
    t5 = [token for chunk in tokens[T5_STREAM] for token, *_ in chunk]
    ends = [i for i, token in enumerate(t5) if isinstance(token, int) and token == T5_END]
    clip_rows = CLIP_CHUNK * len(tokens[encoder.clip_rows]) if encoder.clip_rows else 0
    if not ends or rows != clip_rows + len(t5):
        return None
    mask = torch.zeros(1, rows, dtype=torch.bool)
    mask[0, : clip_rows + ends[0] + 1] = True
    return mask


def has_weights(tokens: host.Tokens) -> bool:
    """True when ComfyUI's weight syntax gave any token a weight other than 1."""
    return any(token[1] != 1.0 for chunks in tokens.values() for chunk in chunks for token in chunk)


def encode(clip: Any, text: str) -> tuple[list, list, str]:
    """(conditioning as CLIPTextEncode, prior_text, a note on what the prior reads) of ``text``."""
    if clip is None:
        raise NoiseARNodeError(
            "the clip input is None: the checkpoint loader gave no text encoder (CLIP); load a "
            "checkpoint with one or use a CLIP loader"
        )
    tokens = host.tokenize(clip, text)
    conditioning = host.encode_tokens(clip, tokens)
    prior_clip = host.default_clip(clip)
    plain = host.tokenize(prior_clip, text, weights=False)
    encoder = encoder_of(plain)
    exact, cut = dict(plain), False
    for stream in encoder.cut:
        exact[stream], stream_cut = first_77(plain[stream], stream)
        cut = cut or stream_cut
    encoded = conditioning if prior_clip is clip and exact == tokens else host.encode_tokens(prior_clip, exact)
    marks: dict[str, Any] = {EXACT: True}
    if encoder.t5:
        rows = encoded[0][0].shape[1]
        mask = t5_prompt_mask(exact, rows, encoder)
        if mask is not None:
            marks[TEXT_MASK] = mask
        read = int(mask.sum()) if mask is not None else rows
        notes = [f"prior_text: {encoder.family}, {read} of {rows} rows (the T5 padding after the prompt is skipped)."]
    else:
        notes = [f"prior_text: {encoder.family}, {PUBLISHED_TOKENS} tokens, exactly the embedding NoiseAR priors are trained on."]
    prior_text = [[cond, {**extras, **marks}] for cond, extras in encoded]
    if cut:
        notes.append(
            "The prompt is longer than 75 tokens: the prior reads its first 75 (as in training); "
            "conditioning has the whole prompt."
        )
    if has_weights(tokens):
        notes.append("Weight syntax applies to conditioning only; the prior reads the text without weights (as in training).")
    if prior_clip is not clip:
        notes.append(
            "CLIPSetLastLayer / tokenizer options apply to conditioning only; the prior reads the model's default layer."
        )
    return conditioning, prior_text, "\n".join(notes)
