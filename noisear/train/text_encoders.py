"""Prompt embeddings without ComfyUI, from a local diffusers-format model folder (never downloads).

- SDXL: ``tokenizer``/``text_encoder`` (CLIP-L) and ``tokenizer_2``/``text_encoder_2`` (CLIP-bigG with
  projection); the penultimate hidden state of each, 77 tokens, concatenated: [B, 77, 768 + 1280 = 2048]
  (what diffusers' ``encode_prompt(...)[0]`` gives and the published SDXL prior expects). The mask is
  all ones: the published prior attends every token, padding included.
- Hunyuan-DiT: ``tokenizer``/``text_encoder`` (BERT); last hidden state, padded to 77 tokens:
  [B, 77, 1024], with the tokenizer's attention mask.

A :class:`PromptEncoder` maps a list of prompts to (text [B,T,D] float32, text_mask [B,T] bool).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch

MAX_TOKENS = 77
PromptEncoder = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


def _need(folder: Path, *names: str) -> None:
    missing = [name for name in names if not (folder / name).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks the sub-folders {missing}; give the root of a diffusers-format "
            f"model folder (with model_index.json), downloaded beforehand"
        )


def _tokens(tokenizer, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    encoded = tokenizer(prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    return {key: value.to(device) for key, value in encoded.items() if key in ("input_ids", "attention_mask")}


def sdxl_encoder(model_dir: str | os.PathLike, device: str = "cpu", dtype: torch.dtype = torch.float32) -> PromptEncoder:
    """SDXL prompt encoder: [B, 77, 2048] from CLIP-L and CLIP-bigG penultimate hidden states."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(model_dir)
    _need(folder, "tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2")
    pairs = [
        (
            CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True),
            CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True, torch_dtype=dtype),
        ),
        (
            CLIPTokenizer.from_pretrained(folder / "tokenizer_2", local_files_only=True),
            CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2", local_files_only=True, torch_dtype=dtype),
        ),
    ]
    target = torch.device(device)
    for _, model in pairs:
        model.to(target).train(False)

    @torch.no_grad()
    def encode(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        states = []
        for tokenizer, model in pairs:
            ids = _tokens(tokenizer, list(prompts), target)["input_ids"]
            states.append(model(ids, output_hidden_states=True).hidden_states[-2])
        text = torch.cat(states, dim=-1).float()
        return text, torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)

    return encode


def hunyuan_dit_encoder(model_dir: str | os.PathLike, device: str = "cpu", dtype: torch.dtype = torch.float32) -> PromptEncoder:
    """Hunyuan-DiT prompt encoder: BERT last hidden state [B, 77, 1024] and its attention mask."""
    from transformers import AutoTokenizer, BertModel

    folder = Path(model_dir)
    _need(folder, "tokenizer", "text_encoder")
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    model = (
        BertModel.from_pretrained(folder / "text_encoder", local_files_only=True, torch_dtype=dtype, add_pooling_layer=False)
        .to(device)
        .train(False)
    )

    @torch.no_grad()
    def encode(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = _tokens(tokenizer, list(prompts), torch.device(device))
        text = model(**tokens).last_hidden_state.float()
        return text, tokens["attention_mask"].bool()

    return encode


def load_prompt_encoder(
    model_dir: str | os.PathLike, kind: str = "auto", device: str = "cpu", dtype: torch.dtype = torch.float32
) -> PromptEncoder:
    """``kind`` 'sdxl', 'hunyuan-dit' or 'auto' (text_encoder_2 present -> SDXL; a BERT text_encoder -> Hunyuan-DiT)."""
    folder = Path(model_dir)
    if kind == "auto":
        if (folder / "text_encoder_2").is_dir():
            kind = "sdxl"
        else:
            config = folder / "text_encoder" / "config.json"
            model_type = json.loads(config.read_text())["model_type"] if config.is_file() else None
            if model_type != "bert":
                raise ValueError(
                    f"cannot tell the model type of {folder}: no text_encoder_2 (SDXL) and no BERT "
                    f"text_encoder (Hunyuan-DiT); pass kind='sdxl' or 'hunyuan-dit'"
                )
            kind = "hunyuan-dit"
    if kind == "sdxl":
        return sdxl_encoder(folder, device, dtype)
    if kind == "hunyuan-dit":
        return hunyuan_dit_encoder(folder, device, dtype)
    raise ValueError(f"kind must be 'auto', 'sdxl' or 'hunyuan-dit', got {kind!r}")
