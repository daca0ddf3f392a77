"""Test-only ComfyUI nodes for the host suite (never shipped with the pack).

- NoiseARTestTinySDXL: a tiny random SDXL-family MODEL built from ComfyUI's own classes (no weights).
- NoiseARTestConditioning: a random CONDITIONING of any width/length, with an SDXL pooled output.
- NoiseARTestDrawNoise: what a NOISE gives for a latent, as a LATENT (so it can be saved and compared).
- NoiseARTestCLIP: a CLIP stand-in whose encoding of a text is a random SDXL-width conditioning seeded by it.
- NoiseARTestTinySDXLClip: ComfyUI's own SDXL text encoders (CLIP-L + CLIP-G, 2048-d, real tokenizers)
  with 3 layers each and random weights.

The newer families (SD3, Flux, FluxSchnell, Chroma, ChromaRadiance, Lumina2, QwenImage, HunyuanImage21,
WAN21_T2V, WAN22_T2V; what each mimics: families.py):
- NoiseARTestTinyModel: the family's tiny random MODEL.
- NoiseARTestFamilyConditioning: the family's CONDITIONING of a text (real width, length, padding, keys).
- NoiseARTestFamilyCLIP: a CLIP stand-in that tokenizes in the family's token format and encodes to
  exactly what NoiseARTestFamilyConditioning gives.
- NoiseARTestTinyTextEncoder: the family's own ComfyUI text encoder, tiny and random (SD3, Flux, Chroma).
- NoiseARTestDescribeConditioning, NoiseARTestTokens: a CONDITIONING's shapes and keys, a CLIP's tokens,
  as JSON in the UI output (for the host tests to read).
"""

import hashlib
import json

import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sdxl_clip
import comfy.supported_models
import comfy.supported_models_base
import torch

from . import families

TINY_UNET = dict(
    model_channels=32,
    channel_mult=[1, 2],
    num_res_blocks=[1, 1],
    transformer_depth=[0, 1],
    transformer_depth_middle=1,
    transformer_depth_output=[0, 0, 1, 1],
    num_head_channels=16,
    context_dim=2048,
    adm_in_channels=2816,
    in_channels=4,
    out_channels=4,
    image_size=32,
    use_spatial_transformer=True,
    use_linear_in_transformer=True,
    legacy=False,
    num_classes="sequential",
    dims=2,
    use_temporal_attention=False,
)
SEED = {"default": 0, "min": 0, "max": 2**31 - 1}


class NoiseARTestTinySDXL:
    CATEGORY = "testing/NoiseAR"
    FUNCTION = "build"
    RETURN_TYPES = ("MODEL",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", SEED)}}

    def build(self, seed):
        config = comfy.supported_models.SDXL(dict(TINY_UNET))
        config.set_inference_dtype(torch.float32, None)
        model = comfy.model_base.SDXL(config, device="cpu")
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # ComfyUI's layers skip initialisation
            for parameter in model.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
        patcher = comfy.model_patcher.ModelPatcher(
            model, load_device=comfy.model_management.get_torch_device(), offload_device=torch.device("cpu")
        )
        return (patcher,)


class NoiseARTestConditioning:
    CATEGORY = "testing/NoiseAR"
    FUNCTION = "make"
    RETURN_TYPES = ("CONDITIONING",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "width": ("INT", {"default": 2048, "min": 1, "max": 8192}),
                "tokens": ("INT", {"default": 77, "min": 1, "max": 1024}),
                "seed": ("INT", SEED),
            }
        }

    def make(self, width, tokens, seed):
        generator = torch.Generator().manual_seed(seed)
        cond = torch.randn(1, tokens, width, generator=generator)
        return ([[cond, {"pooled_output": torch.randn(1, 1280, generator=generator)}]],)


class NoiseARTestDrawNoise:
    CATEGORY = "testing/NoiseAR"
    FUNCTION = "draw"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"noise": ("NOISE",), "latent_image": ("LATENT",)}}

    def draw(self, noise, latent_image):
        return ({"samples": noise.generate_noise(latent_image).float().cpu()},)


class _TextSeededClip:
    """tokenize / encode_from_tokens_scheduled as the collector uses them: [1, 77, 2048] + pooled [1, 1280]."""

    def tokenize(self, text, **options):  # ComfyUI's CLIP.tokenize takes options (disable_weights, ...)
        return text

    def encode_from_tokens_scheduled(self, text):
        import zlib

        generator = torch.Generator().manual_seed(zlib.crc32(text.encode()))
        cond = torch.randn(1, 77, 2048, generator=generator)
        return [[cond, {"pooled_output": torch.randn(1, 1280, generator=generator)}]]


class NoiseARTestCLIP:
    CATEGORY = "testing/NoiseAR"
    FUNCTION = "make"
    RETURN_TYPES = ("CLIP",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def make(self):
        return (_TextSeededClip(),)


class NoiseARTestTinySDXLClip:
    CATEGORY = "testing/NoiseAR"
    FUNCTION = "build"
    RETURN_TYPES = ("CLIP",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", SEED)}}

    def build(self, seed):
        layers = {"num_hidden_layers": 3}  # the penultimate layer needs at least 3
        target = comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
        clip = comfy.sd.CLIP(
            target, model_options={"dtype": torch.float32, "clip_l_model_config": layers, "clip_g_model_config": layers}
        )
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # ComfyUI's layers skip initialisation
            for parameter in clip.cond_stage_model.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
        return (clip,)


FAMILY = (list(families.FAMILIES),)


class NoiseARTestTinyModel:
    CATEGORY = "testing/NoiseAR"
    FUNCTION = "build"
    RETURN_TYPES = ("MODEL",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": FAMILY, "seed": ("INT", SEED)}}

    def build(self, family, seed):
        return (families.build_model(family, seed),)


class NoiseARTestFamilyConditioning:
    CATEGORY = "testing/NoiseAR"
    FUNCTION = "make"
    RETURN_TYPES = ("CONDITIONING",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "family": FAMILY,
                "text": ("STRING", {"default": ""}),
                # 0: the text's own words; more: its words repeated or cut to that many
                "tokens": ("INT", {"default": 0, "min": 0, "max": 4096}),
            }
        }

    def make(self, family, text, tokens):
        return (families.conditioning(family, text, tokens),)


class NoiseARTestFamilyCLIP:
    CATEGORY = "testing/NoiseAR"
    FUNCTION = "make"
    RETURN_TYPES = ("CLIP",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": FAMILY}}

    def make(self, family):
        return (families.StandInClip(family),)


class NoiseARTestTinyTextEncoder:
    CATEGORY = "testing/NoiseAR"
    FUNCTION = "build"
    RETURN_TYPES = ("CLIP",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (families.REAL_ENCODER_FAMILIES,), "seed": ("INT", SEED)}}

    def build(self, family, seed):
        return (families.build_text_encoder(family, seed),)


def digest(tensor):
    return None if tensor is None else hashlib.sha256(tensor.float().contiguous().numpy().tobytes()).hexdigest()[:16]


def row_widths(rows):
    """Run-length [[width, rows], ...] of each row's width up to its last nonzero column (0: an all-zero row)."""
    nonzero = rows != 0
    widths = torch.where(nonzero.any(dim=1), rows.shape[1] - nonzero.flip(1).int().argmax(dim=1), 0).tolist()
    runs = []
    for width in widths:
        if runs and runs[-1][0] == width:
            runs[-1][1] += 1
        else:
            runs.append([width, 1])
    return runs


class NoiseARTestDescribeConditioning:
    """The first entry of a CONDITIONING as JSON: shapes, keys, row widths, guidance, masks, digests of its tensors."""

    CATEGORY = "testing/NoiseAR"
    FUNCTION = "describe"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",)}}

    def describe(self, conditioning):
        cross, extras = conditioning[0]
        pooled, mask, text_mask = extras.get("pooled_output"), extras.get("attention_mask"), extras.get("noisear_text_mask")
        info = {
            "cross_attn": list(cross.shape),
            "row_widths": row_widths(cross[0]),
            "keys": sorted(extras),
            "pooled_output": None if pooled is None else list(pooled.shape),
            "attention_mask": None if mask is None else [list(mask.shape), str(mask.dtype), int(mask.sum())],
            # the rows of the prompt NoiseAR Text Encode marks on SD3 / Flux prior_text (nodes.conditioning.TEXT_MASK)
            "text_mask": None if text_mask is None else [list(text_mask.shape), int(text_mask.sum())],
            "guidance": extras.get("guidance"),
            "digests": [digest(cross), digest(pooled)],
        }
        return {"ui": {"text": [json.dumps(info)]}}


class NoiseARTestTokens:
    """A CLIP's tokens of a text as JSON: {stream: [[token id, ...] per chunk]}."""

    CATEGORY = "testing/NoiseAR"
    FUNCTION = "tokenize"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip": ("CLIP",), "text": ("STRING", {"default": ""})}}

    def tokenize(self, clip, text):
        tokens = {key: [[int(token[0]) for token in chunk] for chunk in chunks] for key, chunks in clip.tokenize(text).items()}
        return {"ui": {"text": [json.dumps(tokens)]}}


NODE_CLASS_MAPPINGS = {
    "NoiseARTestTinySDXL": NoiseARTestTinySDXL,
    "NoiseARTestConditioning": NoiseARTestConditioning,
    "NoiseARTestDrawNoise": NoiseARTestDrawNoise,
    "NoiseARTestCLIP": NoiseARTestCLIP,
    "NoiseARTestTinySDXLClip": NoiseARTestTinySDXLClip,
    "NoiseARTestTinyModel": NoiseARTestTinyModel,
    "NoiseARTestFamilyConditioning": NoiseARTestFamilyConditioning,
    "NoiseARTestFamilyCLIP": NoiseARTestFamilyCLIP,
    "NoiseARTestTinyTextEncoder": NoiseARTestTinyTextEncoder,
    "NoiseARTestDescribeConditioning": NoiseARTestDescribeConditioning,
    "NoiseARTestTokens": NoiseARTestTokens,
}
