"""Tiny stand-ins for the newer ComfyUI model families (test-only; facts read from ComfyUI 0.3.64).

Models (``build_model``). A random-weight MODEL built from ComfyUI's own classes as its checkpoint loader
builds one: ``supported_models.<Config>(unet_config)`` with the dict ``model_detection.detect_unet_config``
would give (``image_model`` and every constructor argument, at a tiny size; the dict replaces the class's
own, and ``model_detection.model_config_from_unet_config`` must map it back to the same config), fp32
inference, ``Config.get_model`` (the ``model_base`` class and model type ComfyUI pairs with the config,
e.g. FluxSchnell -> model_base.Flux with FLOW sampling), every parameter and buffer of the diffusion
model drawn from a seeded generator (ComfyUI's layers skip initialisation; SD3's ``pos_embed`` is a
``torch.empty`` buffer), in a ModelPatcher. Each builds in well under a second. Architectures:
``comfy/ldm/<arch>/model.py``; latents (``comfy/latent_formats.py``): 16 ch /8 (SD3, Flux, Chroma,
Lumina2), 3 ch /1, pixels (ChromaRadiance), 16 ch /8 5-D (QwenImage; Wan 2.1, /4 in time), 64 ch /32
(HunyuanImage21), 48 ch /16 5-D (Wan 2.2 5B).

Text (``conditioning``, ``StandInClip``). A family's CONDITIONING with its real encoder's width, length,
padding and dict keys (``comfy/text_encoders/<file>.py``, ``comfy/sd1_clip.py`` SDTokenizer and
SDClipModel, ``comfy/sd.py`` CLIP), random rows seeded by the token ids (one text, one embedding):

- SD3 (sd3_clip): CLIP-L || CLIP-G rows (768 + 1280, zero-padded to 4096) in 77-token chunks, then T5
  rows (at least 77): [1, 154, 4096] for a short prompt; ``pooled_output`` [1, 2048].
- Flux, FluxSchnell (flux): T5 rows only, padded to 256 (pad rows are encoder outputs, nonzero):
  [1, 256, 4096]; ``pooled_output`` CLIP-L's [1, 768].
- Chroma, ChromaRadiance (pixart_t5): T5 without padding, [1, words + 1, 4096]; ``pooled_output`` None.
- Lumina2 (lumina2): Gemma-2-2B, start token, no padding: [1, words + 1, 2304]; ``attention_mask``
  [1, words + 1] long, all ones; ``pooled_output`` None. (CLIPTextEncodeLumina2's system prompt is not
  added, as CLIPTextEncode does not add it.)
- QwenImage (qwen_image): Qwen2.5-VL over a chat template whose system part the encoder cuts off:
  [1, words + 5, 3584]; no mask (dropped when all ones); ``pooled_output`` None.
- HunyuanImage21 (hunyuan_image): as QwenImage, the template ending at <|im_end|>: [1, words + 1, 3584].
- WAN21_T2V, WAN22_T2V (wan): UMT5 padded to 512, rows after the end token zeroed (zero_out_masked):
  [1, 512, 4096]; no mask; ``pooled_output`` None.

``StandInClip`` is ComfyUI's CLIP as CLIPTextEncode and the Dataset Collector call it (``tokenize``,
``encode_from_tokens_scheduled``): ComfyUI's token format for the family's streams with the start, end,
pad and template tokens its tokenizer adds, but one token per whitespace-separated word from a fixed
word -> id map (weight syntax is read as words). ``conditioning(family, text)`` is its encoding of text.

Real encoders (``build_text_encoder``). The family's own ComfyUI CLIP with real tokenizers and real widths,
1-3 layers, random weights, where the checkout has the tokenizer files and the encoder fits in memory:
SD3 (CLIP-L, CLIP-G, T5-XXL), Flux (CLIP-L, T5-XXL; also FluxSchnell's), Chroma (T5-XXL through the
PixArt tokenizer; also ChromaRadiance's). Lumina2's Gemma and Wan's UMT5 tokenizers ship inside the
weights; Qwen2.5-VL's tokenizer is in the checkout, but its 152k x 3584 embedding is 2.2 GB in fp32.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import comfy.model_detection
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.supported_models
import comfy.supported_models_base
import comfy.text_encoders.flux
import comfy.text_encoders.pixart_t5
import comfy.text_encoders.sd3_clip
import torch

WEIGHT_STD = 0.1  # of every random weight: enough for the prompt to visibly change a sample


# Models ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    config: str  # comfy.supported_models class
    unet_config: dict  # as detect_unet_config gives it, at a tiny size
    text_encoder: str  # key of TEXT_ENCODERS


FLUX_TINY = dict(
    image_model="flux",
    in_channels=16,  # unpacked: the model packs 2 x 2 latent patches itself
    out_channels=16,
    patch_size=2,
    vec_in_dim=768,
    context_in_dim=4096,
    hidden_size=64,
    mlp_ratio=4.0,
    num_heads=2,
    depth=1,
    depth_single_blocks=1,
    axes_dim=[4, 14, 14],  # sums to hidden_size / num_heads
    theta=10000,
    qkv_bias=True,
)
CHROMA_TINY = {
    **{k: v for k, v in FLUX_TINY.items() if k != "vec_in_dim"},
    **dict(image_model="chroma", in_channels=64, out_channels=64, in_dim=64, out_dim=64, hidden_dim=64, n_layers=2),
}
WAN_TINY = dict(
    image_model="wan2.1",
    model_type="t2v",
    dim=64,
    num_heads=2,  # head 32: rope axes 12, 10, 10
    ffn_dim=128,
    num_layers=1,
    patch_size=(1, 2, 2),
    freq_dim=256,
    window_size=(-1, -1),
    qk_norm=True,
    cross_attn_norm=True,
    eps=1e-6,
    in_dim=16,
    out_dim=16,
)
FAMILIES = {
    "SD3": Family(
        "SD3",
        dict(
            in_channels=16,
            out_channels=16,
            patch_size=2,
            depth=2,  # hidden 64 * depth, depth heads
            input_size=None,
            adm_in_channels=2048,
            context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 128}},
            num_patches=1024,
            pos_embed_max_size=32,  # 32 patches a side: up to 512 px
            pos_embed_scaling_factor=None,
            x_block_self_attn_layers=[],
        ),
        "sd3",
    ),
    "Flux": Family("Flux", {**FLUX_TINY, "guidance_embed": True}, "flux"),
    "FluxSchnell": Family("FluxSchnell", {**FLUX_TINY, "guidance_embed": False}, "flux"),
    "Chroma": Family("Chroma", CHROMA_TINY, "chroma"),
    "ChromaRadiance": Family(
        "ChromaRadiance",
        {
            **CHROMA_TINY,
            **dict(
                image_model="chroma_radiance",
                in_channels=3,
                out_channels=3,
                patch_size=16,
                nerf_hidden_size=16,
                nerf_mlp_ratio=2,
                nerf_depth=1,
                nerf_max_freqs=8,
                nerf_tile_size=32,
                nerf_final_head_type="conv",
                nerf_embedder_dtype=torch.float32,
            ),
        },
        "chroma",
    ),
    "Lumina2": Family(
        "Lumina2",
        dict(
            image_model="lumina2",
            patch_size=2,
            in_channels=16,
            dim=64,
            cap_feat_dim=2304,
            n_layers=1,
            n_refiner_layers=1,
            n_heads=2,
            n_kv_heads=1,
            multiple_of=16,
            qk_norm=True,
            axes_dims=[8, 12, 12],  # sums to dim / n_heads
            axes_lens=[300, 512, 512],
        ),
        "lumina2",
    ),
    "QwenImage": Family(
        "QwenImage",
        dict(
            image_model="qwen_image",
            in_channels=64,  # packed 16 x 2 x 2
            out_channels=16,
            patch_size=2,
            num_layers=1,
            attention_head_dim=32,
            num_attention_heads=2,
            joint_attention_dim=3584,
            axes_dims_rope=[4, 14, 14],
        ),
        "qwen_image",
    ),
    "HunyuanImage21": Family(
        "HunyuanImage21",
        dict(
            image_model="hunyuan_video",
            in_channels=64,
            out_channels=64,
            patch_size=[1, 1],
            vec_in_dim=None,
            context_in_dim=3584,
            hidden_size=64,
            mlp_ratio=4.0,
            num_heads=2,
            depth=1,
            depth_single_blocks=1,
            axes_dim=[16, 16],
            theta=256,
            qkv_bias=True,
            byt5=False,
            guidance_embed=False,
            meanflow=False,
        ),
        "hunyuan_image",
    ),
    "WAN21_T2V": Family("WAN21_T2V", WAN_TINY, "wan"),
    "WAN22_T2V": Family("WAN22_T2V", {**WAN_TINY, "in_dim": 48, "out_dim": 48}, "wan"),
}


def build_model(family: str, seed: int) -> comfy.model_patcher.ModelPatcher:
    """The family's tiny random-weight MODEL on the CPU, identical for one seed."""
    spec = FAMILIES[family]
    detected = comfy.model_detection.model_config_from_unet_config(spec.unet_config)
    if type(detected).__name__ != spec.config:
        raise ValueError(f"{family}'s tiny unet_config is detected as {type(detected).__name__}, not {spec.config}")
    config = getattr(comfy.supported_models, spec.config)(spec.unet_config)
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*model.diffusion_model.parameters(), *model.diffusion_model.buffers()]:
            tensor.normal_(0.0, WEIGHT_STD, generator=generator)
    return comfy.model_patcher.ModelPatcher(
        model, load_device=comfy.model_management.get_torch_device(), offload_device=torch.device("cpu")
    )


# Stand-in text encoders ---------------------------------------------------------------------------------
FIRST_WORD_ID, WORD_IDS = 1000, 30000  # word ids: valid in every vocabulary here, clear of special tokens


@dataclass(frozen=True)
class Stream:
    """One tokenizer stream of a family's encoder, as ComfyUI's SDTokenizer lays it out."""

    key: str  # the stream's key in CLIP.tokenize's dict
    width: int  # output width of its encoder
    start: int | None = None  # start token
    end: int | None = None  # end token
    pad: int = 0
    chunk: int | None = None  # CLIP: fixed chunks of 77 (start, up to 75 words, end, pad)
    min_length: int = 1  # padded up to this many tokens
    prefix: tuple[int, ...] = ()  # template tokens before the prompt, cut off by the encoder
    suffix: tuple[int, ...] = ()  # template tokens after the prompt, kept

    def tokenize(self, words: list[str]) -> list[list[tuple[int, float]]]:
        ids = [FIRST_WORD_ID + zlib.crc32(word.encode()) % WORD_IDS for word in words]
        if self.chunk is None:
            chunks = [[*self.prefix, *([self.start] if self.start is not None else []), *ids, *self.suffix]]
        else:
            per_chunk = self.chunk - 2
            pieces = [ids[i : i + per_chunk] for i in range(0, len(ids), per_chunk)] or [[]]
            chunks = [[self.start, *piece] for piece in pieces]
        for chunk in chunks:
            if self.end is not None:
                chunk.append(self.end)
            chunk.extend([self.pad] * (max(self.chunk or 0, self.min_length) - len(chunk)))
        return [[(token, 1.0) for token in chunk] for chunk in chunks]

    def rows(self, encoder: str, chunk: list[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states [len - prefix, width], pooled [1, width]) of one chunk, seeded by its tokens."""
        ids = [token for token, *_ in chunk]
        seed = zlib.crc32(f"{encoder}/{self.key}/{ids}".encode())
        generator = torch.Generator().manual_seed(seed)
        hidden = torch.randn(len(ids) - len(self.prefix), self.width, generator=generator)
        return hidden, torch.randn(1, self.width, generator=generator)

    def prompt_rows(self, tokens: list[list[tuple]]) -> int:
        """Rows of the first chunk that the encoder attends to: up to and including the end token."""
        ids = [token for token, *_ in tokens[0]]
        return ids.index(self.end) + 1 - len(self.prefix)


CLIP_L = Stream("l", 768, start=49406, end=49407, pad=49407, chunk=77)
CLIP_G = Stream("g", 1280, start=49406, end=49407, pad=0, chunk=77)
IM_START, IM_END, NEWLINE = 151644, 151645, 198  # Qwen2.5 special tokens
QWEN_PREFIX = (IM_START, 8948, NEWLINE, IM_END, NEWLINE, IM_START, 872, NEWLINE)  # system (text left out), user


@dataclass(frozen=True)
class TextEncoder:
    streams: tuple[Stream, ...]
    layout: str  # how the streams make the conditioning: "sd3", "flux" or "single"
    attention_mask: bool = False  # emits attention_mask [1, N] (Lumina2's Gemma)
    zero_out_masked: bool = False  # rows after the end token are zeros (Wan's UMT5)


TEXT_ENCODERS = {
    "sd3": TextEncoder((CLIP_L, CLIP_G, Stream("t5xxl", 4096, end=1, min_length=77)), "sd3"),
    "flux": TextEncoder((CLIP_L, Stream("t5xxl", 4096, end=1, min_length=256)), "flux"),
    "chroma": TextEncoder((Stream("t5xxl", 4096, end=1),), "single"),
    "lumina2": TextEncoder((Stream("gemma2_2b", 2304, start=2),), "single", attention_mask=True),
    "qwen_image": TextEncoder(
        (Stream("qwen25_7b", 3584, pad=151643, prefix=QWEN_PREFIX, suffix=(IM_END, NEWLINE, IM_START, 77091, NEWLINE)),),
        "single",
    ),
    "hunyuan_image": TextEncoder((Stream("qwen25_7b", 3584, pad=151643, prefix=QWEN_PREFIX, suffix=(IM_END,)),), "single"),
    "wan": TextEncoder((Stream("umt5xxl", 4096, end=1, min_length=512),), "single", zero_out_masked=True),
}


def encode(encoder: str, tokens: dict) -> tuple[torch.Tensor, dict]:
    """(cross_attn [1, N, W], extras with pooled_output and the encoder's other keys) of stand-in tokens."""
    spec = TEXT_ENCODERS[encoder]
    streams = {stream.key: stream for stream in spec.streams}
    encoded = {
        key: [stream.rows(encoder, chunk) for chunk in tokens[key]] for key, stream in streams.items()
    }  # key -> [(hidden, pooled) per chunk]
    if spec.layout == "sd3":
        clip = torch.cat([torch.cat([l_rows, g_rows], dim=-1) for (l_rows, _), (g_rows, _) in zip(encoded["l"], encoded["g"])])
        clip = torch.nn.functional.pad(clip, (0, 4096 - clip.shape[-1]))
        cross = torch.cat([clip, *[hidden for hidden, _ in encoded["t5xxl"]]])
        pooled = torch.cat([encoded["l"][0][1], encoded["g"][0][1]], dim=-1)
        return cross[None], {"pooled_output": pooled}
    if spec.layout == "flux":
        return encoded["t5xxl"][0][0][None], {"pooled_output": encoded["l"][0][1]}
    (stream,) = spec.streams
    cross = encoded[stream.key][0][0][None]
    extras = {"pooled_output": None}
    if spec.zero_out_masked:
        cross[:, stream.prompt_rows(tokens[stream.key]) :] = 0
    if spec.attention_mask:
        extras["attention_mask"] = torch.ones(1, cross.shape[1], dtype=torch.long)
    return cross, extras


class StandInClip:
    """ComfyUI's CLIP as CLIPTextEncode and the Dataset Collector use it, for one family's encoder (the model's
    default layer, no tokenizer options, as CLIP.layer_idx and CLIP.tokenizer_options say)."""

    layer_idx = None
    tokenizer_options: dict = {}

    def __init__(self, family: str) -> None:
        self.encoder = FAMILIES[family].text_encoder

    def tokenize(self, text: str, return_word_ids: bool = False, **options) -> dict:
        """{stream: [[(token, 1.0), ...] per chunk]}; word ids and tokenizer options are not modelled."""
        return {stream.key: stream.tokenize(text.split()) for stream in TEXT_ENCODERS[self.encoder].streams}

    def encode_from_tokens_scheduled(self, tokens: dict, unprojected=False, add_dict: dict | None = None, show_pbar=True) -> list:
        cross, extras = encode(self.encoder, tokens)
        return [[cross, {**extras, **(add_dict or {})}]]


def prompt_text(text: str, tokens: int) -> str:
    """``text`` itself (tokens 0), or its words repeated or cut to exactly ``tokens`` words."""
    words = text.split()
    if tokens == 0:
        return text
    if not words:
        raise ValueError(f"a prompt of {tokens} tokens needs at least one word of text to repeat; the text is empty")
    return " ".join(words[i % len(words)] for i in range(tokens))


def conditioning(family: str, text: str, tokens: int = 0) -> list:
    """The family's CONDITIONING of ``text`` (or of it made ``tokens`` words long), as the stand-in CLIP gives it."""
    clip = StandInClip(family)
    return clip.encode_from_tokens_scheduled(clip.tokenize(prompt_text(text, tokens)))


# Real ComfyUI text encoders, tiny ---------------------------------------------------------------------------
REAL_TEXT_ENCODERS = {
    "sd3": (comfy.text_encoders.sd3_clip.SD3Tokenizer, comfy.text_encoders.sd3_clip.sd3_clip),
    "flux": (comfy.text_encoders.flux.FluxTokenizer, comfy.text_encoders.flux.flux_clip),
    "chroma": (comfy.text_encoders.pixart_t5.PixArtTokenizer, comfy.text_encoders.pixart_t5.pixart_te),
}
# one family per encoder: FluxSchnell has Flux's, ChromaRadiance Chroma's
REAL_ENCODER_FAMILIES = ["SD3", "Flux", "Chroma"]
TINY_LAYERS = {
    "clip_l_model_config": {"num_hidden_layers": 3},  # SD3 reads the penultimate layer: at least 3
    "clip_g_model_config": {"num_hidden_layers": 3},
    "t5xxl_model_config": {"num_layers": 1, "num_heads": 2, "d_kv": 16, "d_ff": 64},  # d_model stays 4096
}


def build_text_encoder(family: str, seed: int) -> comfy.sd.CLIP:
    """The family's own ComfyUI CLIP (real tokenizers, real widths), one layer or three, random weights."""
    tokenizer, encoder = REAL_TEXT_ENCODERS[FAMILIES[family].text_encoder]
    target = comfy.supported_models_base.ClipTarget(tokenizer, encoder())
    clip = comfy.sd.CLIP(target, model_options={"dtype": torch.float32, **TINY_LAYERS})
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in clip.cond_stage_model.parameters():
            parameter.normal_(0.0, WEIGHT_STD, generator=generator)
    return clip
