"""Prompt-exact text parity in the real ComfyUI; run by tests/host/test_text_parity.py.

    cd $COMFYUI_PATH && $COMFYUI_PYTHON <repo>/tests/host/text_parity.py OUT.json [sdxl] [hunyuan]

Shared random weights (fixed seeds) in the real architectures: ComfyUI's SDXL CLIP-L + CLIP-bigG
(comfy/sdxl_clip.py and its config JSONs) and Hunyuan-DiT's 24-layer BERT (comfy/text_encoders/hydit.py;
its mT5 stream, which no prior reads, is made tiny). Per prompt, on what a NoiseAR node hands the prior:
- exact: NoiseAR Text Encode's prior_text vs ``reference``, diffusers' encode_prompt rule written out
  in transformers (tokenizer with padding to max_length 77 and truncation; CLIP penultimate states
  concatenated; BERT last state with the tokenizer's attention mask);
- train: prior_text read as an own prior reads it (text and mask) vs noisear.train.text_encoders on a
  diffusers-format folder written here (configs, ComfyUI's tokenizer files, the same weights);
- route: CLIPTextEncode's conditioning as a published prior reads it (first 77 tokens) vs reference;
- fp16: prior_text with the weights stored in fp16 (ComfyUI's default text-encoder dtype) vs reference.
Writes max / mean |difference|, shapes and warnings to OUT.json. ComfyUI's encoders run in fp32
(model_options dtype). Memory: one model at a time, weights streamed from safetensors; the peak is
ComfyUI's SDXL text encoders (time and memory: docs/comfyui.md, "Tests").
"""

from __future__ import annotations

import ctypes
import gc
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[2]
COMFY = Path.cwd()
sys.path.insert(0, str(COMFY))
sys.path.append(str(REPO))

from comfy.cli_args import args  # noqa: E402

args.cpu = True  # as the host suite runs ComfyUI (--cpu); set before comfy.model_management is imported
import comfy.sd  # noqa: E402
import comfy.sdxl_clip  # noqa: E402
import comfy.text_encoders.hydit as hydit  # noqa: E402
from comfy.supported_models_base import ClipTarget  # noqa: E402
from safetensors import safe_open  # noqa: E402
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

PARAGRAPH = (
    "A quiet harbour town at dawn, fishing boats resting on calm water, gulls circling above the "
    "old stone lighthouse, soft pink and gold light spilling over the rooftops, a baker opening "
    "his shop, steam rising from fresh bread, children running along the pier with a red kite, "
    "an old fisherman mending nets beside a blue door, wet cobblestones reflecting the sky, "
    "distant hills covered in pine forest, morning mist drifting between the masts, highly "
    "detailed painting, warm colours, cinematic composition, sharp focus, golden hour"
)
TINY_MT5 = {"d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 1}  # the stream no prior reads


def load_pack():
    """The pack as ComfyUI loads it: a package from its folder (its nodes/ must not shadow ComfyUI's nodes.py)."""
    spec = importlib.util.spec_from_file_location("noisear_pack", REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["noisear_pack"] = pack
    spec.loader.exec_module(pack)
    import noisear_pack.nodes.conditioning as conditioning
    import noisear_pack.nodes.definitions as definitions

    return conditioning, definitions


def prompts(count) -> dict[str, str]:
    """The prompt classes; ``count(text)`` is the tokenizer's token count without start and end tokens."""
    words, exact = PARAGRAPH.split(), []
    for word in words:  # greedily the paragraph's words while the count stays at most 75
        if count(" ".join(exact + [word])) <= 75:
            exact.append(word)
    exact_75 = " ".join(exact)
    assert count(exact_75) == 75, count(exact_75)
    assert count(PARAGRAPH) > 90
    return {
        "empty": "",
        "short": "a lighthouse on a cliff at sunset, dramatic clouds, detailed photo",
        "exactly 75 tokens": exact_75,
        "longer than 75": PARAGRAPH,
        "weighted": "(red:1.2) car",
        "non-ASCII": "一只小熊猫在树下看书，水彩画 café Straße",
    }


def stream_weights(module: torch.nn.Module, path: Path, prefixes: tuple[str, ...]) -> list[str]:
    """Copy a transformers safetensors file into ComfyUI's ``module`` tensor by tensor; returns the keys it lacked.

    A file key k goes to the first of prefix + k that ``module`` has (transformers 5 saves CLIP text
    models without the "text_model." that ComfyUI's keys carry; ComfyUI's BERT sits under "bert.").
    """
    target = module.state_dict()
    with torch.no_grad(), safe_open(str(path), "pt") as file:
        for key in file.keys():
            name = next((prefix + key for prefix in prefixes if prefix + key in target), None)
            if name is None:
                raise KeyError(f"{path.name}: {key} has no counterpart in ComfyUI's model")
            target.pop(name).copy_(file.get_tensor(key))
    return sorted(target)


def free() -> None:
    """Collect garbage and hand freed heap memory back to the system (glibc keeps it otherwise: GBs here)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def phase(name: str, start: list[float]) -> None:
    """Print the seconds since the last phase (the run is long on a shared machine; this says where)."""
    now = time.monotonic()
    proc = Path("/proc/self/status")  # Linux: the process's memory now and at its peak
    status = dict(line.split(":", 1) for line in proc.read_text().splitlines() if ":" in line) if proc.exists() else {}
    memory = f", memory {status['VmRSS'].strip()} (peak {status['VmHWM'].strip()})" if "VmRSS" in status else ""
    print(f"  [{now - start[0]:6.1f} s] {name}{memory}", flush=True)
    start[0] = now


def diff(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    d = (a.float() - b.float()).abs()
    return {"max": float(d.max()), "mean": float(d.mean())}


def encode_with_training_encoder(folder: Path, kind: str, texts: dict[str, str]) -> dict:
    """noisear.train.text_encoders' (text, mask) per prompt, the encoder freed afterwards."""
    encode = load_prompt_encoder(folder, kind)
    trained = {name: encode([text]) for name, text in texts.items()}
    del encode
    free()
    return trained


def compare(
    conditioning, definitions, clip, texts: dict[str, str], reference: dict, trained: dict, width: int, variant: str
) -> dict:
    """The figures of one family; ``reference`` / ``trained`` map prompt names to (text, mask)."""
    published = SimpleNamespace(config=SimpleNamespace(text_dim=width), published=True, variant=variant, name="test")
    own = SimpleNamespace(config=SimpleNamespace(text_dim=width), published=False, variant="own", name="test")
    import nodes as comfy_nodes  # ComfyUI's nodes.py: CLIPTextEncode itself

    out = {}
    for name, text in texts.items():
        route = comfy_nodes.CLIPTextEncode().encode(clip, text)[0]
        sampler, prior_text = definitions.NoiseARTextEncodeNode().encode(clip, text)
        exact = conditioning.text_from_conditioning(prior_text, published)
        own_text, own_mask, _ = conditioning.text_from_conditioning(prior_text, own)
        via_route = conditioning.text_from_conditioning(route, published)
        ref_text, ref_mask = reference[name]
        train_text, train_mask = trained[name]
        own_mask = torch.ones(own_text.shape[:2], dtype=torch.bool) if own_mask is None else own_mask
        out[name] = {
            "exact_vs_reference": diff(exact.text, ref_text),
            "exact_vs_train": diff(own_text, train_text),
            "reference_vs_train": diff(ref_text, train_text),
            "mask_equals_train": bool(torch.equal(own_mask, train_mask)),
            "mask_equals_reference": bool(torch.equal(own_mask, ref_mask)),
            "route_vs_reference": diff(via_route.text, ref_text),
            "conditioning_equals_clip_text_encode": bool(torch.equal(sampler[0][0], route[0][0])),
            "route_tokens": route[0][0].shape[1],
            "prior_text_shape": list(prior_text[0][0].shape),
            "exact_marker": prior_text[0][1].get(conditioning.EXACT) is True,
            "exact_warning": exact.warning,
            "route_warning": via_route.warning,
            "reference_abs_max": float(ref_text.abs().max()),
        }
        print(
            f"  {name}: exact {out[name]['exact_vs_reference']['max']:.2e}, train "
            f"{out[name]['exact_vs_train']['max']:.2e}, route {out[name]['route_vs_reference']['max']:.2e}",
            flush=True,
        )
    return out


def fp16_figure(conditioning, definitions, clip, text: str, reference: torch.Tensor, width: int) -> dict:
    """prior_text with the encoder's weights stored in fp16 (ComfyUI's default) vs the fp32 reference."""
    clip.cond_stage_model.to(torch.float16)
    published = SimpleNamespace(config=SimpleNamespace(text_dim=width), published=True, variant="x", name="test")
    prior_text = definitions.NoiseARTextEncodeNode().encode(clip, text)[1]
    return diff(conditioning.text_from_conditioning(prior_text, published).text, reference)


def sdxl(folder: Path, conditioning, definitions) -> dict:
    clock = [time.monotonic()]
    comfy_tokenizers = COMFY / "comfy" / "sd1_tokenizer"
    for name, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):  # as in SDXL's diffusers repo
        shutil.copytree(comfy_tokenizers, folder / name)
        for file in ("tokenizer_config.json", "special_tokens_map.json"):
            config = json.loads((folder / name / file).read_text())
            config["pad_token"] = pad
            if file == "tokenizer_config.json":
                config["model_max_length"] = 77
            (folder / name / file).write_text(json.dumps(config))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    texts = prompts(lambda text: len(tokenizer(text).input_ids) - 2)

    # diffusers' encode_prompt: per CLIP, tokens padded to 77 and truncated, penultimate hidden state; concatenated
    parts = {name: [] for name in texts}
    for seed, sub, model_class, config in (
        (0, "text_encoder", CLIPTextModel, "sd1_clip_config.json"),
        (1, "text_encoder_2", CLIPTextModelWithProjection, "clip_config_bigg.json"),
    ):
        torch.manual_seed(seed)
        model = model_class(CLIPTextConfig(**json.loads((COMFY / "comfy" / config).read_text()))).eval()
        tok = CLIPTokenizer.from_pretrained(folder / sub.replace("text_encoder", "tokenizer"))
        with torch.no_grad():
            for name, text in texts.items():
                ids = tok(
                    text, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
                ).input_ids
                parts[name].append(model(ids, output_hidden_states=True).hidden_states[-2])
        phase(f"{sub}: random weights and the reference", clock)
        model.save_pretrained(folder / sub)
        del model
        free()
        phase(f"{sub}: saved", clock)
    reference = {name: (torch.cat(p, dim=-1), torch.ones(1, 77, dtype=torch.bool)) for name, p in parts.items()}
    trained = encode_with_training_encoder(folder, "sdxl", texts)
    phase("noisear.train.text_encoders", clock)

    clip = comfy.sd.CLIP(
        ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel), model_options={"dtype": torch.float32}
    )
    lacking = {
        key: stream_weights(
            getattr(clip.cond_stage_model, f"clip_{key}").transformer, folder / sub / "model.safetensors", ("", "text_model.")
        )
        for key, sub in (("l", "text_encoder"), ("g", "text_encoder_2"))
    }
    with torch.no_grad():  # CLIP-L has no projection in transformers; only its pooled output (unused) reads it
        clip.cond_stage_model.clip_l.transformer.text_projection.weight.copy_(torch.eye(768))
    assert lacking == {"l": ["text_projection.weight"], "g": []}, lacking
    phase("ComfyUI's SDXL text encoders loaded", clock)
    figures = compare(conditioning, definitions, clip, texts, reference, trained, 2048, "SDXL")
    phase("ComfyUI compared", clock)
    fp16 = fp16_figure(conditioning, definitions, clip, texts["short"], reference["short"][0], 2048)
    del clip
    free()
    return {"prompts": figures, "fp16_short": fp16, "texts": texts}


def hunyuan(folder: Path, conditioning, definitions) -> dict:
    shutil.copytree(COMFY / "comfy" / "text_encoders" / "hydit_clip_tokenizer", folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "HunyuanDiTPipeline"}))
    tokenizer = BertTokenizer.from_pretrained(folder / "tokenizer")
    texts = prompts(lambda text: len(tokenizer(text).input_ids) - 2)

    clock = [time.monotonic()]
    torch.manual_seed(2)
    config = json.loads((COMFY / "comfy" / "text_encoders" / "hydit_clip.json").read_text())
    model = BertModel(BertConfig(**config), add_pooling_layer=False).eval()
    reference = {}
    with torch.no_grad():  # diffusers' HunyuanDiTPipeline.encode_prompt, first text encoder
        for name, text in texts.items():
            tokens = tokenizer(
                text, padding="max_length", max_length=77, truncation=True, return_attention_mask=True, return_tensors="pt"
            )
            reference[name] = (model(tokens.input_ids, attention_mask=tokens.attention_mask)[0], tokens.attention_mask.bool())
    phase("BERT: random weights and the reference", clock)
    model.save_pretrained(folder / "text_encoder")
    del model
    free()
    phase("BERT: saved", clock)

    trained = encode_with_training_encoder(folder, "hunyuan-dit", texts)
    phase("noisear.train.text_encoders", clock)
    spiece = (COMFY / "comfy" / "text_encoders" / "t5_pile_tokenizer" / "tokenizer.model").read_bytes()
    clip = comfy.sd.CLIP(
        ClipTarget(hydit.HyditTokenizer, hydit.HyditModel),
        tokenizer_data={"mt5xl.spiece_model": torch.ByteTensor(list(spiece))},
        model_options={"dtype": torch.float32, "mt5xl_model_config": TINY_MT5},
    )
    lacking = stream_weights(
        clip.cond_stage_model.hydit_clip.transformer, folder / "text_encoder" / "model.safetensors", ("bert.",)
    )
    assert lacking == [], lacking
    torch.manual_seed(3)
    with torch.no_grad():  # ComfyUI leaves layers uninitialised
        for parameter in clip.cond_stage_model.mt5xl.parameters():
            parameter.normal_(0, 0.02)
    phase("ComfyUI's Hunyuan-DiT text encoders loaded", clock)
    figures = compare(conditioning, definitions, clip, texts, reference, trained, 1024, "Hunyuan-DiT")
    phase("ComfyUI compared", clock)
    fp16 = fp16_figure(conditioning, definitions, clip, texts["short"], reference["short"][0], 1024)
    del clip
    free()
    return {"prompts": figures, "fp16_short": fp16, "texts": texts}


def main() -> None:
    out, families = Path(sys.argv[1]), sys.argv[2:] or ["sdxl", "hunyuan"]
    conditioning, definitions = load_pack()
    results = {}
    for family in families:
        start = time.monotonic()
        print(f"{family}:", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"noisear_{family}_") as folder:
            results[family] = {"sdxl": sdxl, "hunyuan": hunyuan}[family](Path(folder), conditioning, definitions)
        results[family]["seconds"] = round(time.monotonic() - start, 1)
    out.write_text(json.dumps(results, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
