"""One dataclass that describes a NoiseAR network, and how to read it back from a state dict."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Mapping

import torch

from .patches import DecodingPlan, decoding_plan


POSITION_SCHEMES = ("table", "2d")


class NoiseARConfigError(ValueError):
    """A config that cannot describe a NoiseAR network, or a state dict it cannot be read from."""


@dataclass(frozen=True)
class NoiseARConfig:
    """Shape of a NoiseAR prior. Defaults are the published SDXL checkpoint.

    The noise it models is ``[channels, latent_height, latent_width]`` (unit-variance latent space),
    cut into ``patch_size`` x ``patch_size`` patches read in raster order.
    """

    patch_size: int = 32
    channels: int = 4
    latent_height: int = 128
    latent_width: int = 128
    d_model: int = 2048
    d_ff: int = 4096
    n_layers: int = 1
    n_heads: int = 1
    text_dim: int = 2048
    dropout: float = 0.15
    positions: str = "table"

    # positions: "table" is the published scheme, a 1-D sinusoidal table stored in the checkpoint
    # for the native grid only; "2d" computes row/column sinusoids so one prior samples every grid
    # (any latent whose sides are multiples of patch_size). latent_height/width are then the size
    # the prior was trained at, not a limit.

    def __post_init__(self) -> None:
        for name in ("patch_size", "channels", "latent_height", "latent_width", "d_model", "d_ff",
                     "n_layers", "n_heads", "text_dim"):
            if int(getattr(self, name)) < 1:
                raise NoiseARConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.latent_height % self.patch_size or self.latent_width % self.patch_size:
            raise NoiseARConfigError(
                f"latent {self.latent_height}x{self.latent_width} is not a multiple of patch_size "
                f"{self.patch_size}")
        if self.d_model % self.n_heads:
            raise NoiseARConfigError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.positions not in POSITION_SCHEMES:
            raise NoiseARConfigError(f"positions must be one of {POSITION_SCHEMES}, got {self.positions!r}")
        if self.positions == "2d" and self.d_model % 4:
            raise NoiseARConfigError(f"2-D positions need d_model divisible by 4, got {self.d_model}")
        if not 0.0 <= self.dropout < 1.0:
            raise NoiseARConfigError(f"dropout must be in [0, 1), got {self.dropout}")

    # Derived sizes -------------------------------------------------------------------------
    @property
    def grid_height(self) -> int:
        """Patch rows."""
        return self.latent_height // self.patch_size

    @property
    def grid_width(self) -> int:
        """Patch columns."""
        return self.latent_width // self.patch_size

    @property
    def num_patches(self) -> int:
        """M, the number of autoregressive steps."""
        return self.grid_height * self.grid_width

    @property
    def patch_dim(self) -> int:
        """Values in one patch token, C*P*P."""
        return self.channels * self.patch_size ** 2

    @property
    def patch_hidden(self) -> int:
        """Width of the patch encoder's hidden layer, 2*P*P as published."""
        return 2 * self.patch_size ** 2

    @property
    def has_text_adapter(self) -> bool:
        """A ``dim_adapter`` Linear(text_dim -> d_model) exists when the widths differ (Hunyuan-DiT)."""
        return self.text_dim != self.d_model

    @property
    def variant(self) -> str:
        """'SDXL' or 'Hunyuan-DiT' for the published shapes, else 'own'."""
        published = (self.positions, self.patch_size, self.channels, self.latent_height, self.latent_width,
                     self.d_model, self.d_ff, self.n_layers, self.n_heads) == ("table", 32, 4, 128, 128, 2048, 4096, 1, 1)
        if published and self.text_dim == 2048:
            return "SDXL"
        if published and self.text_dim == 1024:
            return "Hunyuan-DiT"
        return "own"

    def plan(self, height: int, width: int) -> DecodingPlan:
        """How a latent of height x width cells is decoded: native, sliding window or 2-D (see DecodingPlan)."""
        return decoding_plan(height, width, self.patch_size,
                             None if self.positions == "2d" else (self.grid_height, self.grid_width))

    # Serialisation ---------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "NoiseARConfig":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise NoiseARConfigError(f"config metadata is not valid JSON: {err}") from None
        if not isinstance(values, dict):
            raise NoiseARConfigError("config metadata must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise NoiseARConfigError(f"config metadata has unknown fields {unknown}; known: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], *, n_heads: int = 1,
                        latent_height: int | None = None, latent_width: int | None = None) -> "NoiseARConfig":
        """Read the shapes of a published-layout state dict.

        The head count cannot be read from shapes (it is 1 in every published checkpoint). The grid
        is taken as square unless ``latent_height``/``latent_width`` are given. A state dict without
        ``pos_encoding`` can only be described by its config metadata (2-D positions).
        """
        def shape(key: str) -> tuple[int, ...]:
            if key not in state:
                raise NoiseARConfigError(f"not a NoiseAR state dict: missing '{key}'")
            return tuple(state[key].shape)

        d_model = shape("learnable_start_token_emb")[0]
        hidden, patch_dim = shape("latent_patch_encoder.0.weight")
        patch_size = math.isqrt(hidden // 2)
        if 2 * patch_size ** 2 != hidden or patch_dim % (patch_size ** 2):
            raise NoiseARConfigError(
                f"latent_patch_encoder.0.weight has shape {[hidden, patch_dim]}; expected [2*P*P, C*P*P]")
        channels = patch_dim // patch_size ** 2
        num_patches = shape("pos_encoding")[1] - 1
        if latent_height is None or latent_width is None:
            side = math.isqrt(num_patches)
            if side * side != num_patches:
                raise NoiseARConfigError(
                    f"pos_encoding holds {num_patches} patches, not a square grid; the latent size must "
                    f"come from the checkpoint's config metadata")
            latent_height = latent_width = side * patch_size
        n_layers = 0
        while f"self_attn_layers.{n_layers}.in_proj_weight" in state:
            n_layers += 1
        if n_layers == 0:
            raise NoiseARConfigError("not a NoiseAR state dict: missing 'self_attn_layers.0.in_proj_weight'")
        d_ff = shape("ffn_layers.0.0.weight")[0]
        text_dim = shape("dim_adapter.weight")[1] if "dim_adapter.weight" in state else d_model
        return cls(patch_size=patch_size, channels=channels, latent_height=latent_height,
                   latent_width=latent_width, d_model=d_model, d_ff=d_ff, n_layers=n_layers,
                   n_heads=n_heads, text_dim=text_dim)
