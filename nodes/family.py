"""Which model family a prior serves and which one a MODEL, a latent or a conditioning belongs to (noisear.families),
and the check that a prior meets a MODEL of its own family. Messages name both sides: the prior with its family and
what it expects, and the MODEL, latent or conditioning it was given.
"""

from __future__ import annotations

from typing import Any

from noisear.families import FAMILIES, Family

from . import host
from .prior import NoiseARPrior
from .widgets import NoiseARNodeError


def of_prior(prior: NoiseARPrior) -> Family | None:
    """The family the prior serves (its config's family; published checkpoints by their shapes), None if unknown."""
    key = prior.config.family_key
    return FAMILIES[key] if key else None


def family_title(family: Family | None) -> str:
    return family.title if family is not None else "unknown family"


def prior_side(prior: NoiseARPrior) -> str:
    """'the NoiseAR prior 'x.safetensors' (own Flux.1 dev / schnell prior: 16-channel latents, 4096-wide text)'."""
    c = prior.config
    video = " video" if c.video else ""
    return f"the NoiseAR prior '{prior.name}' ({c.title} prior: {c.channels}-channel{video} latents, {c.text_dim}-wide text)"


def titles(families: list[Family]) -> str:
    return ", ".join(family.title for family in families)


def with_text_width(width: int) -> str:
    """The families whose conditioning is ``width`` wide, in words ('' when none)."""
    names = titles([family for family in FAMILIES.values() if family.text_dim == width])
    return f" ({names} text)" if names else ""


def with_channels(channels: int) -> str:
    """The families whose latents have ``channels`` channels, in words ('' when none)."""
    names = titles([family for family in FAMILIES.values() if family.channels == channels])
    return f" ({names} latents)" if names else ""


def model_side(model: Any) -> str:
    """'the MODEL is ComfyUI's QwenImage (Qwen-Image)'."""
    name, family = host.model_config_name(model), host.model_family(model)
    return f"the MODEL is ComfyUI's {name} ({family_title(family)})"


def check_model(prior: NoiseARPrior | None, model: Any, node: str) -> None:
    """Refuse a prior of one family with a MODEL of another. A prior of unknown family, or a MODEL whose class is in
    no family, passes here (its latent channels and text width are still checked)."""
    if prior is None:
        return
    served, given = of_prior(prior), host.model_family(model)
    if served is None or given is None or served.key == given.key:
        return
    raise NoiseARNodeError(
        f"{node}: {prior_side(prior)} serves {served.title} models, but {model_side(model)}. A prior draws the noise "
        f"of the family it was trained for: load a NoiseAR prior trained for {given.title} (or collect a dataset with "
        f"NoiseAR Dataset Collector on this MODEL and train one), or use this prior with a {served.title} MODEL"
    )
