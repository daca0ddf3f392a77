"""One dataclass that describes a NoiseAR network, and how to read it back from a state dict."""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import asdict, dataclass, field, fields
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from .families import FAMILIES
from .patches import DecodingPlan, decoding_plan

POSITION_SCHEMES = ("table", "2d", "3d")
INT_FIELDS = (
    "patch_size",
    "channels",
    "latent_height",
    "latent_width",
    "d_model",
    "d_ff",
    "n_layers",
    "n_heads",
    "text_dim",
    "latent_frames",
    "patch_frames",
    "window",
    "window_frames",
    "text_tokens",
    "patch_hidden_dim",
)
ZERO_MEANS_ANY = ("window", "window_frames", "text_tokens", "patch_hidden_dim")  # int fields where 0 means "no bound"


@dataclass(frozen=True)
class Limits:
    """The largest checkpoint NoiseAR reads: generous for any real prior, small enough that a hostile file is
    refused before anything is allocated. The one place these bounds live.

    Published priors: patch 32, 4 channels, latent 128x128, d_model 2048, d_ff 4096, 1 layer, 1 head,
    text 2048 or 1024; 32 or 34 tensors, 113M values (432 MiB in fp32), |w| < 10.
    """

    fields: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType(
            {  # largest value of each int field
                "patch_size": 256,
                "channels": 1024,
                "latent_height": 16384,
                "latent_width": 16384,
                "d_model": 65536,
                "d_ff": 262144,
                "n_layers": 64,
                "n_heads": 4096,
                "text_dim": 65536,
                "latent_frames": 4096,
                "patch_frames": 64,
                "window": 4096,
                "window_frames": 4096,
                "text_tokens": 65536,
                "patch_hidden_dim": 262144,
            }
        )
    )
    values: int = 2**33  # parameters + buffers (32 GiB in fp32)
    weight_magnitude: float = 1e4  # largest |w| of any stored value
    tensors: int = 4096  # tensors in one file (64 layers make 1168; a .pth may add wrappers and optimizer state)
    config_bytes: int = 64 * 1024  # the JSON config in a safetensors file's metadata
    header_bytes: int = 16 * 2**20  # a safetensors header (names, shapes, offsets)
    pickle_bytes: int = 2**20  # the pickle part of a .pth (without its tensors' data; published: 3 KiB)
    pickle_ops: int = 2**18  # opcodes in that pickle (about 30 per tensor)
    message_items: int = 5  # problems listed in one error message before "... and N more"
    # One draw (one batch item), estimated before anything is allocated (noisear.cost): refused above these.
    draw_patches: int = 2**20  # patches of the decoded grid
    draw_seconds: float = 600.0  # estimated time on the device that draws (noisear.cost.DEVICE_SPEEDS)
    draw_bytes: int = 16 * 2**30  # estimated peak memory of the draw beyond the weights


LIMITS = Limits()


class NoiseARError(ValueError):
    """Bad input, settings or files that the user can fix; the message says what to do. Every error of the
    library derives from it; ``python -m noisear`` prints one as a single line and exits with status 2, anything
    else is a bug and keeps its traceback (noisear.cli)."""


class NoiseARConfigError(NoiseARError):
    """A config that cannot describe a NoiseAR network, or a state dict it cannot be read from."""


def listing(items: Iterable[str], limit: int | None = None) -> str:
    """'a, b, c ... and 7 more': at most ``limit`` items (LIMITS.message_items), each cut to 80 characters."""
    items, limit = list(items), limit or LIMITS.message_items
    shown = [item if len(item) <= 80 else item[:77] + "..." for item in items[:limit]]
    return ", ".join(shown) + (f" ... and {len(items) - limit} more" if len(items) > limit else "")


def printable(text: object) -> str:
    """``text`` with control, bidi-override and other invisible format characters (newlines included) written
    as escapes, so that a file or folder name cannot rewrite the terminal or reorder what is shown."""
    return "".join(
        (repr(ch)[1:-1] if ch.isascii() else f"\\u{ord(ch):04x}") if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch
        for ch in str(text)
    )


def quoted(value: Any, limit: int = 80) -> str:
    """repr of a value from a file, cut to ``limit`` characters (keys and values can be megabytes long)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class NoiseARConfig:
    """Shape of a NoiseAR prior. Defaults are the published SDXL checkpoint.

    The noise it models is ``[channels, latent_height, latent_width]`` (unit-variance latent space),
    cut into ``patch_size`` x ``patch_size`` patches read in raster order; a video prior ("3d" positions)
    models ``[channels, latent_frames, latent_height, latent_width]`` in ``patch_frames`` x ``patch_size`` x
    ``patch_size`` space-time patches, frames outer.
    """

    patch_size: int = field(
        default=32, metadata={"help": "patch side P in latent cells; the latent sides must be multiples of it"}
    )
    channels: int = field(default=4, metadata={"help": "latent channels C of the noise"})
    latent_height: int = field(
        default=128, metadata={"help": "latent height H of the noise (2-D positions: the height trained at)"}
    )
    latent_width: int = field(default=128, metadata={"help": "latent width W of the noise (2-D positions: the width trained at)"})
    d_model: int = field(default=2048, metadata={"help": "transformer width"})
    d_ff: int = field(default=4096, metadata={"help": "feed-forward width"})
    n_layers: int = field(default=1, metadata={"help": "transformer blocks"})
    n_heads: int = field(default=1, metadata={"help": "attention heads"})
    text_dim: int = field(default=2048, metadata={"help": "width D of the prompt embedding [B, T, D]"})
    dropout: float = field(default=0.15, metadata={"help": "dropout rate"})
    positions: str = field(
        default="table",
        metadata={
            "help": "'table' (published 1-D table), '2d' (row/column sinusoids; one prior for every grid) or '3d' "
            "(frame/row/column sinusoids: a video prior)"
        },
    )
    family: str = field(default="", metadata={"help": "the model family the prior serves (noisear.families), '' if unknown"})
    latent_frames: int = field(default=1, metadata={"help": "latent frames T of a video prior (the count trained at)"})
    patch_frames: int = field(default=1, metadata={"help": "frames per patch of a video prior"})
    window: int = field(
        default=0, metadata={"help": "most patch rows and columns of one decoding window (2-D and video priors); 0: unbounded"}
    )
    window_frames: int = field(default=0, metadata={"help": "most frames of one decoding window (video priors); 0: unbounded"})
    text_tokens: int = field(default=0, metadata={"help": "most text tokens the prior reads; 0: any number"})
    patch_hidden_dim: int = field(default=0, metadata={"help": "hidden width of the patch encoder; 0: 2*Pt*P*P as published"})

    # positions: "table" is the published scheme, a 1-D sinusoidal table stored in the checkpoint
    # for the native grid only; "2d" computes row/column sinusoids so one prior samples every grid
    # (any latent whose sides are multiples of patch_size); "3d" adds a frame sinusoid (video).
    # latent_height/width/frames are then the size the prior was trained at, not a limit.
    # family: a key of noisear.families.FAMILIES (the model family the prior serves), "" when unknown
    # (published checkpoints are recognised by their shapes, see `family_key`).
    # window / window_frames (2d, 3d): the most patch rows and columns / frames of one decoding window;
    # a larger latent is decoded with a sliding window, so the cost of a draw grows linearly. 0: unbounded.
    # text_tokens: the most text tokens the prior reads (0: any number).
    # patch_hidden_dim: hidden width of the patch encoder; 0: 2*Pt*P*P as published (a bottleneck for
    # latents of many channels, where `noisear train` chooses a wider one).

    def __post_init__(self) -> None:
        for name in INT_FIELDS:
            value, largest = getattr(self, name), LIMITS.fields[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise NoiseARConfigError(f"{name} must be an integer, got {type(value).__name__} {quoted(value)}")
            lowest = 0 if name in ZERO_MEANS_ANY else 1
            if not lowest <= value <= largest:
                raise NoiseARConfigError(f"{name} must be between {lowest} and {largest}, got {quoted(value)}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise NoiseARConfigError(f"dropout must be a number, got {type(self.dropout).__name__} {quoted(self.dropout)}")
        if not isinstance(self.positions, str):
            raise NoiseARConfigError(f"positions must be one of {POSITION_SCHEMES}, got {quoted(self.positions)}")
        if self.latent_height % self.patch_size or self.latent_width % self.patch_size:
            raise NoiseARConfigError(
                f"latent {self.latent_height}x{self.latent_width} is not a multiple of patch_size {self.patch_size}"
            )
        if self.d_model % self.n_heads:
            raise NoiseARConfigError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.positions not in POSITION_SCHEMES:
            raise NoiseARConfigError(f"positions must be one of {POSITION_SCHEMES}, got {quoted(self.positions)}")
        if self.positions == "2d" and self.d_model % 4:
            raise NoiseARConfigError(f"2-D positions need d_model divisible by 4, got {self.d_model}")
        if self.positions == "3d" and self.d_model % 2:
            raise NoiseARConfigError(f"video positions need an even d_model, got {self.d_model}")
        if self.positions != "3d" and (self.latent_frames, self.patch_frames, self.window_frames) != (1, 1, 0):
            raise NoiseARConfigError(
                f"latent_frames, patch_frames and window_frames describe video priors (positions '3d'); this prior "
                f"has positions {self.positions!r}, so they must stay 1, 1 and 0"
            )
        if self.latent_frames % self.patch_frames:
            raise NoiseARConfigError(f"latent_frames {self.latent_frames} is not a multiple of patch_frames {self.patch_frames}")
        if self.positions == "table" and (self.window or self.window_frames):
            raise NoiseARConfigError("a 1-D position table decodes in windows of its native grid; window must stay 0")
        self._check_family()
        if not 0.0 <= self.dropout < 1.0:  # also refuses NaN
            raise NoiseARConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.num_values > LIMITS.values:
            raise NoiseARConfigError(
                f"this config describes {self.num_values:,} values, more than any NoiseAR prior (limit {LIMITS.values:,})"
            )

    def _check_family(self) -> None:
        """``family`` names a known family whose latent and text this prior fits."""
        if not isinstance(self.family, str):
            raise NoiseARConfigError(f"family must be a string, got {quoted(self.family)}")
        if not self.family:
            return
        if self.family not in FAMILIES:
            raise NoiseARConfigError(f"family must be one of {', '.join(FAMILIES)} (or empty), got {quoted(self.family)}")
        family = FAMILIES[self.family]
        if self.channels != family.channels:
            raise NoiseARConfigError(
                f"a {family.title} prior models {family.channels}-channel latents, but channels is {self.channels}"
            )
        if self.text_dim != family.text_dim:
            raise NoiseARConfigError(f"{family.title} text is {family.text_dim} wide, but text_dim is {self.text_dim}")
        if self.positions == "3d" and not family.video:
            raise NoiseARConfigError(f"{family.title} makes images; a video prior (positions '3d') cannot serve it")

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
        """Values in one patch token, C*P*P (C*Pt*P*P for video)."""
        return self.channels * self.patch_frames * self.patch_size**2

    @property
    def video(self) -> bool:
        """Whether the prior models [C, T, H, W] video latents."""
        return self.positions == "3d"

    @property
    def patch(self) -> tuple[int, ...]:
        """Cells per patch along each latent axis: (P, P), or (Pt, P, P) for video."""
        return (self.patch_frames, self.patch_size, self.patch_size) if self.video else (self.patch_size, self.patch_size)

    @property
    def latent_size(self) -> tuple[int, ...]:
        """The size it was trained at (native for a table), cells per axis: (H, W) or (T, H, W)."""
        size = (self.latent_height, self.latent_width)
        return (self.latent_frames, *size) if self.video else size

    @property
    def family_key(self) -> str:
        """The family it serves: ``family``, or for a published checkpoint the one its shapes say; "" if unknown."""
        return self.family or {"SDXL": "sdxl", "Hunyuan-DiT": "hunyuan-dit"}.get(self.variant, "")

    @property
    def patch_hidden(self) -> int:
        """Width of the patch encoder's hidden layer: ``patch_hidden_dim``, else 2*Pt*P*P as published."""
        return self.patch_hidden_dim or 2 * self.patch_frames * self.patch_size**2

    @property
    def has_text_adapter(self) -> bool:
        """A ``dim_adapter`` Linear(text_dim -> d_model) exists when the widths differ (Hunyuan-DiT)."""
        return self.text_dim != self.d_model

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Key -> shape of every tensor in this network's state dict (parameters and buffers), computed
        without building it: what a checkpoint is checked against before any tensor is allocated.
        tests/test_model.py checks it against `NoiseAR(config).state_dict()`."""
        d, k, hidden = self.d_model, self.patch_dim, self.patch_hidden
        shapes: dict[str, tuple[int, ...]] = {"learnable_start_token_emb": (d,)}
        if self.positions == "table":
            shapes["pos_encoding"] = (1, self.num_patches + 1, d)
        if self.has_text_adapter:
            shapes.update({"dim_adapter.weight": (d, self.text_dim), "dim_adapter.bias": (d,)})
        shapes.update(
            {
                "latent_patch_encoder.0.weight": (hidden, k),
                "latent_patch_encoder.0.bias": (hidden,),
                "latent_patch_encoder.2.weight": (d, hidden),
                "latent_patch_encoder.2.bias": (d,),
            }
        )
        layer = {
            "self_attn_layers.{}.in_proj_weight": (3 * d, d),
            "self_attn_layers.{}.in_proj_bias": (3 * d,),
            "self_attn_layers.{}.out_proj.weight": (d, d),
            "self_attn_layers.{}.out_proj.bias": (d,),
            "cross_attn_layers.{}.in_proj_weight": (3 * d, d),
            "cross_attn_layers.{}.in_proj_bias": (3 * d,),
            "cross_attn_layers.{}.out_proj.weight": (d, d),
            "cross_attn_layers.{}.out_proj.bias": (d,),
            **{
                f"{norm}.{{}}.{part}": (d,)
                for norm in ("self_attn_norm", "cross_attn_norm", "ffn_norm")
                for part in ("weight", "bias")
            },
            "ffn_layers.{}.0.weight": (self.d_ff, d),
            "ffn_layers.{}.0.bias": (self.d_ff,),
            "ffn_layers.{}.3.weight": (d, self.d_ff),
            "ffn_layers.{}.3.bias": (d,),
        }
        for index in range(self.n_layers):
            shapes.update({key.format(index): shape for key, shape in layer.items()})
        for head in ("prediction_head_mu", "prediction_head_logvar"):
            shapes.update(
                {
                    f"{head}.0.weight": (2 * d, d),
                    f"{head}.0.bias": (2 * d,),
                    f"{head}.2.weight": (k, 2 * d),
                    f"{head}.2.bias": (k,),
                }
            )
        return shapes

    @property
    def num_values(self) -> int:
        """Parameters + buffers, from the shapes (no tensor is made)."""
        return sum(math.prod(shape) for shape in self.state_shapes().values())

    @property
    def variant(self) -> str:
        """'SDXL' or 'Hunyuan-DiT' for the published shapes, else 'own'."""
        published = (
            self.positions,
            self.patch_size,
            self.channels,
            self.latent_height,
            self.latent_width,
            self.d_model,
            self.d_ff,
            self.n_layers,
            self.n_heads,
        ) == ("table", 32, 4, 128, 128, 2048, 4096, 1, 1)
        if published and self.text_dim == 2048:
            return "SDXL"
        if published and self.text_dim == 1024:
            return "Hunyuan-DiT"
        return "own"

    @property
    def title(self) -> str:
        """How messages name the prior: 'SDXL' or 'Hunyuan-DiT' (published shapes), 'own <family title>', or 'own'."""
        if self.variant != "own":
            return self.variant
        return f"own {FAMILIES[self.family].title}" if self.family else "own"

    def plan(self, *size: int) -> DecodingPlan:
        """How a latent of ``size`` cells per axis ((H, W), or (T, H, W) for video) is decoded (see DecodingPlan)."""
        if self.positions == "table":
            return decoding_plan(size, self.patch, (self.grid_height, self.grid_width))
        window = (self.window_frames, self.window, self.window) if self.video else (self.window, self.window)
        return decoding_plan(size, self.patch, None, window)

    # Serialisation ---------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "NoiseARConfig":
        """Parse a config written by :meth:`to_json`: one flat JSON object of finite numbers and strings."""
        if not isinstance(text, str) or len(text) > LIMITS.config_bytes:
            raise NoiseARConfigError(
                f"config metadata must be a JSON text of at most {LIMITS.config_bytes} "
                f"characters, got {type(text).__name__} of {len(text)}"
            )

        def refuse_constant(name: str) -> None:
            raise NoiseARConfigError(f"config metadata holds {name}, not a finite number")

        def finite_float(literal: str) -> float:
            value = float(literal)
            if not math.isfinite(value):
                refuse_constant(quoted(literal))
            return value

        try:
            values = json.loads(text, parse_constant=refuse_constant, parse_float=finite_float)
        except (json.JSONDecodeError, ValueError) as err:  # ValueError: integers of more than 4300 digits
            if isinstance(err, NoiseARConfigError):
                raise
            raise NoiseARConfigError(f"config metadata is not valid JSON: {quoted(str(err))}") from None
        except RecursionError:
            raise NoiseARConfigError("config metadata is nested too deeply; it must be one flat JSON object") from None
        if not isinstance(values, dict):
            raise NoiseARConfigError(f"config metadata must be a JSON object, got a {type(values).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise NoiseARConfigError(
                f"config metadata has unknown fields {listing(map(quoted, unknown))}; known: {', '.join(known)}"
            )
        return cls(**values)

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Any], *, n_heads: int = 1, latent_height: int | None = None, latent_width: int | None = None
    ) -> "NoiseARConfig":
        """Read the shapes of a published-layout state dict (values: anything with a ``.shape``).

        The head count cannot be read from shapes (it is 1 in every published checkpoint). The grid
        is taken as square unless ``latent_height``/``latent_width`` are given. A state dict without
        ``pos_encoding`` can only be described by its config metadata (2-D positions).
        """

        def shape(key: str, ndim: int) -> tuple[int, ...]:
            if key not in state:
                raise NoiseARConfigError(f"not a NoiseAR state dict: missing '{key}'")
            found = tuple(state[key].shape)
            if len(found) != ndim:
                raise NoiseARConfigError(f"'{key}' has shape {list(found)}; expected {ndim} dimensions")
            return found

        (d_model,) = shape("learnable_start_token_emb", 1)
        hidden, patch_dim = shape("latent_patch_encoder.0.weight", 2)
        patch_size = math.isqrt(hidden // 2)
        if patch_size < 1 or 2 * patch_size**2 != hidden or patch_dim % (patch_size**2):
            raise NoiseARConfigError(f"latent_patch_encoder.0.weight has shape {[hidden, patch_dim]}; expected [2*P*P, C*P*P]")
        channels = patch_dim // patch_size**2
        num_patches = shape("pos_encoding", 3)[1] - 1
        if latent_height is None or latent_width is None:
            side = math.isqrt(max(num_patches, 0))
            if side * side != num_patches:
                raise NoiseARConfigError(
                    f"pos_encoding holds {num_patches} patches, not a square grid; the latent size must "
                    f"come from the checkpoint's config metadata"
                )
            latent_height = latent_width = side * patch_size
        n_layers = 0
        while f"self_attn_layers.{n_layers}.in_proj_weight" in state:
            n_layers += 1
        if n_layers == 0:
            raise NoiseARConfigError("not a NoiseAR state dict: missing 'self_attn_layers.0.in_proj_weight'")
        d_ff = shape("ffn_layers.0.0.weight", 2)[0]
        text_dim = shape("dim_adapter.weight", 2)[1] if "dim_adapter.weight" in state else d_model
        return cls(
            patch_size=patch_size,
            channels=channels,
            latent_height=latent_height,
            latent_width=latent_width,
            d_model=d_model,
            d_ff=d_ff,
            n_layers=n_layers,
            n_heads=n_heads,
            text_dim=text_dim,
        )
