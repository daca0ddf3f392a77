"""Builders shared by tests and benchmarks: configs and published-layout state dicts with random weights.

The key names and shapes come from the published checkpoints' table of keys and shapes (read from the
authors' released model.pth files and code, github.com/HKUST-SAIL/NoiseAR), not from `noisear.model`, so a
model that loads these state dicts strictly has the published layout.
"""

from __future__ import annotations

import io
import math
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import save_file

from noisear import NoiseAR, NoiseARConfig

SDXL = NoiseARConfig()  # the published defaults: 2048-d text (CLIP-L + CLIP-bigG)
HUNYUAN_DIT = NoiseARConfig(text_dim=1024)  # BERT text through dim_adapter
PUBLISHED = {"SDXL": SDXL, "Hunyuan-DiT": HUNYUAN_DIT}
PUBLISHED_TEXT_TOKENS = 77

# 3 channels, 3x3 grid of 2x2 patches, 16-d model: the published layout at toy size.
TINY = NoiseARConfig(
    patch_size=2, channels=3, latent_height=6, latent_width=6, d_model=16, d_ff=24, n_layers=1, n_heads=1, text_dim=16
)


def published_shapes(config: NoiseARConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a published-layout state dict for ``config`` (layer index .0 becomes .k)."""
    d, patch_dim, hidden = config.d_model, config.channels * config.patch_size**2, 2 * config.patch_size**2
    patches = (config.latent_height // config.patch_size) * (config.latent_width // config.patch_size)
    shapes: dict[str, tuple[int, ...]] = {"learnable_start_token_emb": (d,), "pos_encoding": (1, patches + 1, d)}
    if config.text_dim != d:
        shapes.update({"dim_adapter.weight": (d, config.text_dim), "dim_adapter.bias": (d,)})
    shapes.update(
        {
            "latent_patch_encoder.0.weight": (hidden, patch_dim),
            "latent_patch_encoder.0.bias": (hidden,),
            "latent_patch_encoder.2.weight": (d, hidden),
            "latent_patch_encoder.2.bias": (d,),
        }
    )
    for k in range(config.n_layers):
        for attention in ("self_attn_layers", "cross_attn_layers"):
            shapes.update(
                {
                    f"{attention}.{k}.in_proj_weight": (3 * d, d),
                    f"{attention}.{k}.in_proj_bias": (3 * d,),
                    f"{attention}.{k}.out_proj.weight": (d, d),
                    f"{attention}.{k}.out_proj.bias": (d,),
                }
            )
        for norm in ("self_attn_norm", "cross_attn_norm", "ffn_norm"):
            shapes.update({f"{norm}.{k}.weight": (d,), f"{norm}.{k}.bias": (d,)})
        shapes.update(
            {
                f"ffn_layers.{k}.0.weight": (config.d_ff, d),
                f"ffn_layers.{k}.0.bias": (config.d_ff,),
                f"ffn_layers.{k}.3.weight": (d, config.d_ff),
                f"ffn_layers.{k}.3.bias": (d,),
            }
        )
    for head in ("prediction_head_mu", "prediction_head_logvar"):
        shapes.update(
            {
                f"{head}.0.weight": (2 * d, d),
                f"{head}.0.bias": (2 * d,),
                f"{head}.2.weight": (patch_dim, 2 * d),
                f"{head}.2.bias": (patch_dim,),
            }
        )
    return shapes


def random_state_dict(config: NoiseARConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Published-layout fp32 weights drawn at scales that keep every activation O(1).

    Matrices ~ N(0, 1/fan_in), biases and buffers ~ N(0, 0.1^2), norm gains ~ 1 + N(0, 0.1^2). The
    heads' last layers are drawn 4x smaller, so mu ~ N(0, 0.2^2) and std ~ 1 as in a prior trained on
    unit-variance noise. The position table is random too, so a model that re-computed it instead of
    loading it would differ.
    """
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in published_shapes(config).items():
        value = torch.randn(shape, generator=generator)
        if len(shape) == 2:
            last_head_layer = key.startswith("prediction_head_") and key.endswith(".2.weight")
            value *= (0.25 if last_head_layer else 1.0) / math.sqrt(shape[1])
        else:
            value *= 0.1
            if "_norm." in key and key.endswith(".weight"):
                value += 1.0
        state[key] = value
    return state


def model_from_state(config: NoiseARConfig, state: dict[str, torch.Tensor]) -> NoiseAR:
    """An eval-mode NoiseAR holding ``state`` (strict), sharing its storage."""
    with torch.device("meta"):
        model = NoiseAR(config)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def random_model(config: NoiseARConfig, seed: int = 0) -> NoiseAR:
    """An eval-mode NoiseAR with :func:`random_state_dict` weights."""
    return model_from_state(config, random_state_dict(config, seed))


def random_text(config: NoiseARConfig, batch: int = 1, tokens: int = PUBLISHED_TEXT_TOKENS, seed: int = 1) -> torch.Tensor:
    """[batch, tokens, text_dim] standard-normal stand-in for a prompt embedding."""
    return torch.randn(batch, tokens, config.text_dim, generator=torch.Generator().manual_seed(seed))


def random_eps(config: NoiseARConfig, batch: int = 1, seed: int = 2) -> torch.Tensor:
    """[batch, C, H, W] standard-normal draws."""
    shape = (batch, config.channels, config.latent_height, config.latent_width)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def write_pth(state: dict[str, torch.Tensor], path: Path, *, wrapper: str | None = None, prefix: str = "") -> Path:
    """torch.save ``state`` as a training script might: optionally nested under ``wrapper`` and key-prefixed."""
    payload: dict = {prefix + key: value for key, value in state.items()}
    if wrapper is not None:
        payload = {wrapper: payload, "epoch": 3}
    torch.save(payload, path)
    return path


def write_safetensors(
    state: dict[str, torch.Tensor], path: Path, config: NoiseARConfig | None = None, metadata: dict[str, str] | None = None
) -> Path:
    """A .safetensors file as `noisear.save` writes it (config in the metadata) or with given metadata."""
    if metadata is None:
        metadata = {} if config is None else {"noisear_config": config.to_json()}
    save_file(state, str(path), metadata=metadata)
    return path


class PlantsMarker:
    """Unpickling this calls open(path, 'w'): a stand-in for any code a hostile pickle could run."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def hostile_pth(tmp_path: Path) -> tuple[Path, Path]:
    """A model.pth that runs code when unpickled, and the file that code would create."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "model.pth"
    torch.save({**random_state_dict(TINY), "payload": PlantsMarker(marker)}, path)
    return path, marker


class _FakeStorage:
    """Stands for a storage in :func:`write_crafted_pth`: pickled as torch's ('storage', type, key, 'cpu', numel)."""

    def __init__(self, key: str, numel: int) -> None:
        self.key, self.numel = key, numel


class _CraftedTensor:
    """Pickled as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())."""

    def __init__(self, storage: _FakeStorage, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.args = (storage, 0, tuple(size), tuple(stride), False, OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


def write_crafted_pth(
    path: Path, tensors: dict[str, tuple[tuple[int, ...], tuple[int, ...], int]], record_bytes: int = 16
) -> Path:
    """A zip .pth whose pickle declares what the caller says, not what torch.save would write.

    ``tensors``: key -> (size, stride, claimed storage numel) of float32 tensors, each on its own
    record of ``record_bytes`` zero bytes. Lets tests declare stride-0 views or storages bigger
    than their records, as a hostile file can.
    """

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel) if isinstance(obj, _FakeStorage) else None

    state = {
        key: _CraftedTensor(_FakeStorage(str(i), numel), size, stride)
        for i, (key, (size, stride, numel)) in enumerate(tensors.items())
    }
    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(state)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/byteorder", "little")
        for i in range(len(tensors)):
            archive.writestr(f"archive/data/{i}", bytes(record_bytes))
        archive.writestr("archive/version", "3\n")
    return path
