"""The diffusion-model families a NoiseAR prior can serve: their latents and text, in one table.

A prior records the family it was trained for (``NoiseARConfig.family``); the ComfyUI nodes compare it
with the MODEL's family, and ``noisear train`` reads the defaults below (patch size, text limit) from it.
Facts come from ComfyUI 0.3.64 (comfy/supported_models.py, comfy/latent_formats.py,
comfy/text_encoders/) and the published priors; docs/train-your-prior.md has a section per family.
"""

from __future__ import annotations

from dataclasses import dataclass

TEXT_PADDING = ("none", "clip", "t5", "zeros", "mask")


@dataclass(frozen=True)
class Family:
    """One model family: what its latent and its text conditioning look like.

    - ``channels``, ``cell_pixels``: latent channels and pixels per latent cell (the VAE's downscale);
      ``frame_stride`` > 0 for video families (video frames per latent frame after the first, Wan: 4).
    - ``latent_dims``: 4 for [B, C, H, W] latents, 5 for [B, C, T, H, W] (QwenImage's images are 5-D with T = 1).
    - ``text_dim``: width of the cross-attention conditioning; ``text_tokens``: the longest text a prior of this
      family accepts (the encoder's practical limit for one prompt).
    - ``text_padding``: what the encoder pads a prompt with, i.e. which tokens are not the prompt:
      "none" (no padding: every token is the prompt), "clip" (77-token CLIP chunks; their padding is part of the
      published priors' input and kept), "t5" (a T5 stream padded with real pad-token embeddings to a minimum
      length: the true length comes from the tokenizer), "zeros" (pad rows zeroed), "mask" (an attention_mask).
    - ``patch_size``, ``patch_frames``: the default patch of an own prior in latent cells, chosen so a token
      holds about 1,000-4,000 values; ``prediction``: what the model predicts; ``guidance``: "cfg" or
      "embedded" (a guidance-distilled model steered by a guidance value in the conditioning, run at cfg 1).
    - ``comfy_models``: ComfyUI's ``supported_models`` classes of the family; ``empty_latent``: the node that makes
      its empty latent in a standard graph.
    """

    key: str
    title: str
    channels: int
    cell_pixels: int
    text_dim: int
    text_tokens: int
    text_padding: str
    patch_size: int
    prediction: str
    guidance: str
    comfy_models: tuple[str, ...]
    empty_latent: str
    latent_dims: int = 4
    frame_stride: int = 0
    patch_frames: int = 1

    @property
    def video(self) -> bool:
        return self.frame_stride > 0

    @property
    def token_values(self) -> int:
        """Values in one patch token of an own prior with the default patch."""
        return self.channels * self.patch_frames * self.patch_size**2


FAMILIES: dict[str, Family] = {
    family.key: family
    for family in (
        Family(
            key="sdxl",
            title="SDXL / DreamShaper-XL",
            channels=4,
            cell_pixels=8,
            text_dim=2048,
            text_tokens=77 * 8,
            text_padding="clip",
            patch_size=32,
            prediction="epsilon",
            guidance="cfg",
            comfy_models=("SDXL", "SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B"),
            empty_latent="EmptyLatentImage",
        ),
        Family(
            key="hunyuan-dit",
            title="Hunyuan-DiT v1.2",
            channels=4,
            cell_pixels=8,
            text_dim=1024,
            text_tokens=256,
            text_padding="mask",
            patch_size=32,
            prediction="v",
            guidance="cfg",
            comfy_models=("HunyuanDiT", "HunyuanDiT1"),
            empty_latent="EmptyLatentImage",
        ),
        Family(
            key="sd3",
            title="SD3 / SD3.5",
            channels=16,
            cell_pixels=8,
            text_dim=4096,
            text_tokens=77 + 512,
            text_padding="t5",
            patch_size=8,
            prediction="flow",
            guidance="cfg",
            comfy_models=("SD3",),
            empty_latent="EmptySD3LatentImage",
        ),
        Family(
            key="flux",
            title="Flux.1 dev / schnell",
            channels=16,
            cell_pixels=8,
            text_dim=4096,
            text_tokens=512,
            text_padding="t5",
            patch_size=8,
            prediction="flow",
            guidance="embedded",
            comfy_models=("Flux", "FluxSchnell"),
            empty_latent="EmptySD3LatentImage",
        ),
        Family(
            key="chroma",
            title="Chroma",
            channels=16,
            cell_pixels=8,
            text_dim=4096,
            text_tokens=512,
            text_padding="none",
            patch_size=8,
            prediction="flow",
            guidance="cfg",
            comfy_models=("Chroma",),
            empty_latent="EmptySD3LatentImage",
        ),
        Family(
            key="chroma-radiance",
            title="Chroma Radiance (pixel space)",
            channels=3,
            cell_pixels=1,
            text_dim=4096,
            text_tokens=512,
            text_padding="none",
            patch_size=32,
            prediction="flow",
            guidance="cfg",
            comfy_models=("ChromaRadiance",),
            empty_latent="EmptyChromaRadianceLatentImage",
        ),
        Family(
            key="lumina2",
            title="Lumina Image 2.0 / Z-Image",
            channels=16,
            cell_pixels=8,
            text_dim=2304,
            text_tokens=512,
            text_padding="mask",
            patch_size=8,
            prediction="flow",
            guidance="cfg",
            comfy_models=("Lumina2",),
            empty_latent="EmptySD3LatentImage",
        ),
        Family(
            key="qwen-image",
            title="Qwen-Image",
            channels=16,
            cell_pixels=8,
            text_dim=3584,
            text_tokens=1024,
            text_padding="none",
            patch_size=8,
            prediction="flow",
            guidance="cfg",
            comfy_models=("QwenImage",),
            empty_latent="EmptySD3LatentImage",
            latent_dims=5,
        ),
        Family(
            key="hunyuan-image-2.1",
            title="HunyuanImage 2.1",
            channels=64,
            cell_pixels=32,
            text_dim=3584,
            text_tokens=1024,
            text_padding="mask",
            patch_size=4,
            prediction="flow",
            guidance="cfg",
            comfy_models=("HunyuanImage21",),
            empty_latent="EmptyHunyuanImageLatent",
        ),
        Family(
            key="wan",
            title="Wan 2.1 / Wan 2.2 14B",
            channels=16,
            cell_pixels=8,
            text_dim=4096,
            text_tokens=512,
            text_padding="zeros",
            patch_size=8,
            prediction="flow",
            guidance="cfg",
            comfy_models=("WAN21_T2V",),
            empty_latent="EmptyHunyuanLatentVideo",
            latent_dims=5,
            frame_stride=4,
        ),
        Family(
            key="wan2.2-5b",
            title="Wan 2.2 5B",
            channels=48,
            cell_pixels=16,
            text_dim=4096,
            text_tokens=512,
            text_padding="zeros",
            patch_size=4,
            prediction="flow",
            guidance="cfg",
            comfy_models=("WAN22_T2V",),
            empty_latent="Wan22ImageToVideoLatent",
            latent_dims=5,
            frame_stride=4,
        ),
    )
}


def family_of_comfy_model(name: str) -> Family | None:
    """The family of a ComfyUI ``supported_models`` class name, or None when NoiseAR has no entry for it."""
    return next((family for family in FAMILIES.values() if name in family.comfy_models), None)


def family_named(key: str) -> Family:
    """``FAMILIES[key]`` with a message listing the known keys."""
    if key not in FAMILIES:
        raise ValueError(f"unknown model family {key!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[key]
