"""NoiseAR Text Encode: one prompt, two CONDITIONINGs, one for the sampler and one for the prior.

``conditioning`` is exactly what CLIPTextEncode gives (weight syntax honoured, the whole prompt).
``prior_text`` is the embedding NoiseAR priors are trained on, as diffusers' ``encode_prompt`` makes it
(the published priors) and noisear.train.text_encoders (``noisear train``): the CLIP's own tokenizer
with ComfyUI's weight syntax read as plain text, each stream the prior reads cut to 77 tokens
(start token, the first 75 tokens, end token, padding), encoded by ComfyUI's own encoder with the
model's default layer (CLIPSetLastLayer and tokenizer options are not applied to it):

- SDXL (streams "l" CLIP-L, "g" CLIP-bigG): penultimate states concatenated, [1, 77, 2048].
- Hunyuan-DiT (streams "hydit_clip" BERT, "mt5xl"): BERT's last state [1, 77, 1024] and its
  attention_mask [1, 77]; the mT5 stream, which the prior does not read, gets the whole text as in
  CLIPTextEncode (so prior_text is also a valid Hunyuan-DiT conditioning).

Its entries carry ``{EXACT: True}``, so the NoiseAR nodes know they need no warning.
"""

from __future__ import annotations

from typing import Any

from . import host
from .conditioning import EXACT, PUBLISHED_TOKENS
from .widgets import NoiseARNodeError

# sorted token streams of a CLIP -> (model family, the streams the prior reads)
FAMILIES = {("g", "l"): ("SDXL", ("l", "g")), ("hydit_clip", "mt5xl"): ("Hunyuan-DiT", ("hydit_clip",))}


def prior_streams(tokens: host.Tokens) -> tuple[str, tuple[str, ...]]:
    """(family, streams the prior reads) of a CLIP's tokens; an error for CLIPs no NoiseAR prior is trained on."""
    family = FAMILIES.get(tuple(sorted(tokens)))
    if family is None:
        raise NoiseARNodeError(
            f"NoiseAR Text Encode knows the text encoders NoiseAR priors are trained with: SDXL (CLIP-L + CLIP-G) "
            f"and Hunyuan-DiT (BERT + mT5); this CLIP's tokenizer gives the streams {sorted(tokens)}. Load the "
            f"CLIP of an SDXL or Hunyuan-DiT checkpoint, or feed the NoiseAR node a CLIPTextEncode conditioning"
        )
    return family


def serves(clip: Any) -> bool:
    """True for the CLIPs NoiseAR Text Encode serves (SDXL, Hunyuan-DiT), whose prior_text is what priors read."""
    tokens = host.tokenize(clip, "", weights=False)
    return isinstance(tokens, dict) and tuple(sorted(tokens)) in FAMILIES


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
    family, streams = prior_streams(plain)
    exact, cut = dict(plain), False
    for stream in streams:
        exact[stream], stream_cut = first_77(plain[stream], stream)
        cut = cut or stream_cut
    encoded = conditioning if prior_clip is clip and exact == tokens else host.encode_tokens(prior_clip, exact)
    prior_text = [[cond, {**extras, EXACT: True}] for cond, extras in encoded]
    notes = [f"prior_text: {family}, {PUBLISHED_TOKENS} tokens, exactly the embedding NoiseAR priors are trained on."]
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
