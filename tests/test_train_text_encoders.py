"""Prompt encoders with tiny random CLIP/BERT models and tokenizers built here (nothing downloaded)."""

import json
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    BertConfig,
    BertModel,
    BertTokenizer,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from noisear.train.text_encoders import load_prompt_encoder  # noqa: E402

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def clip_tokenizer(folder):
    """Character-level CLIP BPE: every letter with and without the end-of-word marker, no merges."""
    folder.mkdir(parents=True)
    tokens = ["<|startoftext|>", "<|endoftext|>", "!"] + list(LETTERS) + [c + "</w>" for c in LETTERS]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer.save_pretrained(folder)
    return tokenizer


def clip_config(width, tokenizer):
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=3,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=width,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def test_sdxl_encoder_concatenates_penultimate_states_of_both_clips(tmp_path):
    torch.manual_seed(0)
    tokenizer = clip_tokenizer(tmp_path / "tokenizer")
    clip_tokenizer(tmp_path / "tokenizer_2")
    first = CLIPTextModel(clip_config(8, tokenizer)).eval()
    second = CLIPTextModelWithProjection(clip_config(12, tokenizer)).eval()
    first.save_pretrained(tmp_path / "text_encoder")
    second.save_pretrained(tmp_path / "text_encoder_2")
    encode = load_prompt_encoder(tmp_path)
    text, mask = encode(["a cat", "dog on a mat"])
    assert text.shape == (2, 77, 20) and mask.shape == (2, 77) and mask.all()
    ids = tokenizer(["a cat", "dog on a mat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = torch.cat(
            [
                first(ids, output_hidden_states=True).hidden_states[2],  # 3 layers: index 2 of 0..3
                second(ids, output_hidden_states=True).hidden_states[2],
            ],
            dim=-1,
        )
    torch.testing.assert_close(text, expected)


def test_hunyuan_dit_encoder_returns_bert_states_padded_to_77_with_mask(tmp_path):
    torch.manual_seed(0)
    (tmp_path / "tokenizer").mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "dog", "on", "mat"]
    (tmp_path / "tokenizer" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(tmp_path / "tokenizer" / "vocab.txt"))
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    model = BertModel(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=80,
        ),
        add_pooling_layer=False,
    ).eval()
    model.save_pretrained(tmp_path / "text_encoder")
    text, mask = load_prompt_encoder(tmp_path)(["a cat", "dog on a mat"])
    assert text.shape == (2, 77, 16)
    assert mask.sum(1).tolist() == [4, 6]  # [CLS] + words + [SEP]
    tokens = tokenizer(["a cat", "dog on a mat"], padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        expected = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
    torch.testing.assert_close(text, expected)


def test_unknown_folder_gives_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot tell"):
        load_prompt_encoder(tmp_path)
    with pytest.raises(FileNotFoundError, match="diffusers-format"):
        load_prompt_encoder(tmp_path, kind="sdxl")
