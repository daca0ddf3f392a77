"""The NoiseAR network (published layout and math) with teacher forcing, log-probability and sampling.

Shapes: B batch, T text tokens, D text width, d d_model, M patches, K = C*P*P values per patch (C*Pt*P*P for
a video prior). Latents are [B, C, H, W], or [B, C, T, H, W] for video (and for image models whose latents carry a
singleton time axis, such as Qwen-Image: an image prior takes those with T = 1 and gives the same rank back).
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Callable, Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import cost
from .config import NoiseARConfig, NoiseARError
from .patches import DecodingPlan, pad_eps, patchify, unpatchify

LOGVAR_MIN, LOGVAR_MAX = -20.0, 10.0  # published clamp before std = exp(logvar / 2)

# What `generator` may be: see `standard_normal`.
Generator = int | Sequence[int] | torch.Generator | Sequence[torch.Generator] | None
StepCallback = Callable[[int, int], None]  # (patches done, patches in all); may raise to interrupt


class NoiseARInputError(NoiseARError):
    """Inputs that do not fit the prior (embedding width, eps shape, mask shape)."""


def _sinusoid(position: torch.Tensor, dim: int) -> torch.Tensor:
    """[L] positions -> [L, dim]: sin on even dims, cos on odd dims, base 10000 (fp64 inside)."""
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64, device=position.device) * (-math.log(10000.0) / dim))
    angle = position.to(torch.float64)[:, None] * inv_freq
    table = torch.zeros(len(position), dim, dtype=torch.float64, device=position.device)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle)[:, : dim // 2]
    return table.float()


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """[1, length, d_model]: the published 1-D table."""
    if torch.get_default_device().type == "meta":  # a loading shell: the table comes from the checkpoint
        return torch.empty(1, length, d_model)
    return _sinusoid(torch.arange(length, device="cpu"), d_model)[None].to(torch.get_default_device())


def grid_positions(grid: tuple[int, ...], d_model: int) -> torch.Tensor:
    """[1, prod(grid), d_model] in raster order. (rows, cols): row sinusoid in the first half, column in the
    second. (frames, rows, cols): frame sinusoid in the first d - 2s dims, row and column in s each, s = 2*(d//6)."""
    coords = torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij")
    side = d_model // 2 if len(grid) == 2 else 2 * (d_model // 6)
    widths = [d_model - side * (len(grid) - 1)] + [side] * (len(grid) - 1)
    return torch.cat([_sinusoid(axis.flatten(), width) for axis, width in zip(coords, widths)], dim=1)[None]


def standard_normal(shape: Sequence[int], generator: Generator = None) -> torch.Tensor:
    """Standard-normal draws of ``shape`` = [B, ...], fp32 on the CPU, the same on every device.

    ``generator``: an int seed (ComfyUI's RandomNoise convention: one CPU generator, item i is its
    i-th [1, ...] draw, so a batch equals its items drawn with batch_index); a sequence of B seeds
    or B generators (item i is drawn from its own, so it equals that seed sampled alone); one
    torch.Generator (CPU); or None (torch's global RNG).
    """
    batch, item_shape = shape[0], (1, *shape[1:])
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    if isinstance(generator, int):
        shared = torch.Generator().manual_seed(generator)
        return torch.cat([torch.randn(item_shape, generator=shared) for _ in range(batch)])
    per_item = list(generator)
    if len(per_item) != batch:
        raise NoiseARInputError(f"got {len(per_item)} seeds/generators for a batch of {batch}; give one per item")
    draws = []
    for item in per_item:
        item_generator = item if isinstance(item, torch.Generator) else torch.Generator().manual_seed(int(item))
        draws.append(torch.randn(item_shape, generator=item_generator))
    return torch.cat(draws)


TEMPERATURE_MAX = 10.0  # published 0.5; 1 samples the prior as trained; far above is no longer noise


def check_sampling_inputs(
    text: torch.Tensor, eps: torch.Tensor | None, temperature: float, text_mask: torch.Tensor | None
) -> None:
    """Refuse inputs that would turn into NaN noise: non-finite text or eps, a temperature that is not a
    number in [0, TEMPERATURE_MAX], a mask that leaves an item no token. Shapes are checked later."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not 0.0 <= temperature <= TEMPERATURE_MAX:
        raise NoiseARInputError(
            f"temperature must be a number from 0 to {TEMPERATURE_MAX:g} (0.5 as published), got {temperature!r}"
        )
    if not isinstance(text, torch.Tensor) or not text.is_floating_point():
        raise NoiseARInputError(
            f"text must be a floating-point tensor [batch, tokens, width], got {getattr(text, 'dtype', type(text).__name__)}"
        )
    if not torch.isfinite(text).all():
        raise NoiseARInputError(
            "the text embedding holds NaN or infinite values (an fp16 text encoder overflowing?); encode the "
            "prompt again, in fp32 or bf16"
        )
    if eps is not None and (not eps.is_floating_point() or not torch.isfinite(eps).all()):
        raise NoiseARInputError(
            "eps must be finite standard-normal draws; it holds NaN or infinite values (or is not floating point)"
        )
    if text.ndim == 3 and text.shape[1] == 0:
        raise NoiseARInputError(
            "the text has no tokens, so no prompt would shape the noise; encode a prompt (an empty prompt still "
            "gives the encoder's start/end tokens)"
        )
    if text_mask is not None and text_mask.ndim == 2 and not text_mask.bool().any(dim=1).all():
        raise NoiseARInputError(
            "text_mask leaves an item without any token to attend to; every item needs at least one True (attend) entry"
        )


def _finite_noise(noise: torch.Tensor) -> torch.Tensor:
    """The sampled noise, refused if not finite (finite but huge text or weights can still overflow)."""
    if not torch.isfinite(noise).all():
        raise NoiseARInputError(
            "the prior produced NaN or infinite noise from these inputs (text embedding "
            "values too large for its dtype?); check the conditioning, or use fp32"
        )
    return noise


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run in eval mode (no dropout) and restore the previous mode afterwards."""
    was_training = module.training
    module.train(False)
    try:
        yield
    finally:
        module.train(was_training)


# Building blocks of the attention layers ---------------------------------------------------------------

LinearFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x [..., in], weight, bias) -> [..., out]
TextKV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: the text's cross-attention keys, values [B, h, T, d/h]


def _few_rows_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """F.linear for a handful of rows, [..., in] -> [..., out]; fp32 as bias + weight @ x^T.

    Same math; in fp32 on the CPU (MKL) this streams the weight once for all rows, where F.linear
    packs it first. In bf16/fp16, F.linear (oneDNN) is the faster path: at 1 row 10 % and at 4 rows
    40 % faster than the fp32 trick in bf16 on this project's CPU (docs/testing-and-benchmarks.md).
    Decoding a step is bound by this read. Both take x as contiguous rows [N, in]: on a strided 3-D x
    (as :func:`merge_heads` gives) F.linear would multiply and add the bias in two separate roundings.
    """
    rows = x.reshape(-1, x.shape[-1]).contiguous()  # rows.T below must be a transposed view: contiguous is 5x slower
    if weight.dtype != torch.float32:
        return F.linear(rows, weight, bias).reshape(*x.shape[:-1], weight.shape[0])
    return torch.addmm(bias[:, None], weight, rows.T).T.reshape(*x.shape[:-1], weight.shape[0])


def _sequence_first_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """F.linear on x [B, L, in] read sequence-first ([L, B, in], as nn.MultiheadAttention reads its
    inputs) -> [B, L, out]. Rows in the same order through the same call round the same: teacher
    forcing is bit for bit the published network with its nn.MultiheadAttention layers."""
    return F.linear(x.transpose(0, 1), weight, bias).transpose(0, 1)


class Linears(NamedTuple):
    """How each kind of linear layer is computed. The choices below are the same math, rounded in a different order."""

    attention: LinearFn  # the attention layers' projections of the rows being computed
    mlp: LinearFn  # the feed-forward layers and the output heads
    text: LinearFn  # the text's cross-attention keys/values, once per call


# Teacher forcing: every row at once, as the published network computes them.
TEACHER_FORCING = Linears(attention=_sequence_first_linear, mlp=F.linear, text=_sequence_first_linear)
# Cached decoding: a few new rows a step, each weight matrix read once for all of them.
CACHED_DECODING = Linears(attention=_few_rows_linear, mlp=_few_rows_linear, text=F.linear)


def mlp(layers: nn.Sequential, x: torch.Tensor, linear: LinearFn) -> torch.Tensor:
    """``layers(x)``, its nn.Linear layers computed by ``linear``."""
    for layer in layers:
        x = linear(x, layer.weight, layer.bias) if isinstance(layer, nn.Linear) else layer(x)
    return x


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, d] -> [B, h, L, d/h]."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, h, L, d/h] -> [B, L, d], stored sequence-first: :func:`_sequence_first_linear` then projects
    one contiguous [L*B, d] matrix, as nn.MultiheadAttention does."""
    return x.permute(2, 0, 1, 3).flatten(2).transpose(0, 1)


def causal_mask(start: int, count: int, device: torch.device) -> torch.Tensor:
    """[count, start + count] bool: new row i (at position start + i) may attend to positions <= start + i."""
    return torch.arange(start + count, device=device)[None, :] <= torch.arange(start, start + count, device=device)[:, None]


class KVCache:
    """Self-attention keys/values of one sequence, per layer [B, h, length, d/h]; the first ``position`` are filled."""

    def __init__(self, config: NoiseARConfig, batch: int, length: int, like: torch.Tensor) -> None:
        shape = (batch, config.n_heads, length, config.d_model // config.n_heads)
        self.layers = [(like.new_empty(shape), like.new_empty(shape)) for _ in range(config.n_layers)]
        self.position = 0  # advanced by the caller once every layer has its new rows

    def extend(self, k: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store layer k's new keys/values [B, h, n, d/h] after ``position`` -> all its keys/values so far."""
        cached_keys, cached_values = self.layers[k]
        end = self.position + keys.shape[2]
        cached_keys[:, :, self.position : end], cached_values[:, :, self.position : end] = keys, values
        return cached_keys[:, :, :end], cached_values[:, :, :end]


class NoiseAR(nn.Module):
    """p(noise | text) as a product of diagonal Gaussians over patches, each given the earlier ones.

    Attribute names are the published state-dict keys, so `load_state_dict` takes `model.pth` as is.
    """

    def __init__(self, config: NoiseARConfig) -> None:
        super().__init__()
        self.config = c = config
        start = torch.randn(c.d_model, device="cpu") * 0.1  # fixed, never trained; CPU: see sinusoidal_positions
        self.register_buffer("learnable_start_token_emb", start.to(torch.get_default_device()))
        if c.positions == "table":
            self.register_buffer("pos_encoding", sinusoidal_positions(c.num_patches + 1, c.d_model))
        if c.has_text_adapter:
            self.dim_adapter = nn.Linear(c.text_dim, c.d_model)
        self.latent_patch_encoder = nn.Sequential(
            nn.Linear(c.patch_dim, c.patch_hidden), nn.SiLU(), nn.Linear(c.patch_hidden, c.d_model)
        )

        def attention() -> nn.MultiheadAttention:
            return nn.MultiheadAttention(c.d_model, c.n_heads, dropout=c.dropout, batch_first=True)

        def norms() -> nn.ModuleList:
            return nn.ModuleList(nn.LayerNorm(c.d_model) for _ in range(c.n_layers))

        self.self_attn_layers = nn.ModuleList(attention() for _ in range(c.n_layers))
        self.cross_attn_layers = nn.ModuleList(attention() for _ in range(c.n_layers))
        self.self_attn_norm, self.cross_attn_norm, self.ffn_norm = norms(), norms(), norms()
        self.ffn_layers = nn.ModuleList(
            nn.Sequential(
                nn.Linear(c.d_model, c.d_ff),
                nn.GELU(),
                nn.Dropout(c.dropout),
                nn.Linear(c.d_ff, c.d_model),
                nn.Dropout(c.dropout),
            )
            for _ in range(c.n_layers)
        )
        self.prediction_head_mu = self._head()
        self.prediction_head_logvar = self._head()
        self.reset_parameters()

    def _head(self) -> nn.Sequential:
        d = self.config.d_model
        return nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, self.config.patch_dim))

    def reset_parameters(self) -> None:
        """Published initialisation: an untrained model already outputs roughly N(0, I)."""
        if self._anchor.is_meta:  # a shell for load_state_dict(assign=True); drawing on meta costs seconds
            return
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.MultiheadAttention):
                nn.init.xavier_uniform_(module.in_proj_weight)
                nn.init.zeros_(module.in_proj_bias)
                nn.init.xavier_uniform_(module.out_proj.weight)
                nn.init.zeros_(module.out_proj.bias)
        for head in (self.prediction_head_mu, self.prediction_head_logvar):
            nn.init.uniform_(head[2].weight, -1e-3, 1e-3)
            nn.init.zeros_(head[2].bias)

    # Inputs --------------------------------------------------------------------------------------
    @property
    def _anchor(self) -> torch.Tensor:
        """A tensor that always exists, for the model's device and dtype."""
        return self.learnable_start_token_emb

    def positions(self, grid: tuple[int, ...]) -> torch.Tensor:
        """[1, M, d]: what is added to input token j, the one that predicts patch j of a (rows, cols) grid
        ((frames, rows, cols) for video).

        A 1-D table covers its native grid and its top rows (a window of a shorter latent)."""
        c = self.config
        if c.positions != "table":
            return grid_positions(tuple(grid), c.d_model).to(self._anchor)
        if grid[1] != c.grid_width or not 1 <= grid[0] <= c.grid_height:
            raise NoiseARInputError(
                f"this prior's position table covers a {c.grid_height} x {c.grid_width} patch grid "
                f"(latent {c.latent_height} x {c.latent_width} cells) and its top rows; got a {grid[0]} x {grid[1]} grid"
            )
        return self.pos_encoding[:, : grid[0] * grid[1]]

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """[B, T, text_dim] prompt embedding of the diffusion model -> [B, T, d_model]."""
        c = self.config
        if text.ndim != 3 or text.shape[-1] != c.text_dim:
            raise NoiseARInputError(
                f"text embedding has shape {list(text.shape)}; this {c.title} prior expects [batch, tokens, {c.text_dim}]"
            )
        text = text.to(device=self._anchor.device, dtype=self._anchor.dtype)
        return self.dim_adapter(text) if c.has_text_adapter else text

    def _text_attend(self, text_mask: torch.Tensor | None, text: torch.Tensor) -> torch.Tensor | None:
        """[B or 1, T] mask (1/True = attend) for the text [B, T, d] -> [B, 1, 1, T] bool (True = may attend), or None."""
        if text_mask is None:
            return None
        text_mask = self._expand_text(text_mask, text.shape[0])
        if tuple(text_mask.shape) != tuple(text.shape[:2]):
            raise NoiseARInputError(f"text_mask has shape {list(text_mask.shape)}; expected {list(text.shape[:2])}")
        return text_mask.to(device=text.device, dtype=torch.bool)[:, None, None, :]

    def _expand_text(self, text: torch.Tensor, batch: int) -> torch.Tensor:
        if text.shape[0] == batch:
            return text
        if text.shape[0] == 1:
            return text.expand(batch, *text.shape[1:])
        per_item = f" or one per item (batch {batch})" if batch > 1 else ""
        raise NoiseARInputError(
            f"text batch {text.shape[0]} does not match noise batch {batch}; give one text (batch 1) for every item{per_item}"
        )

    def attended_text(self, text: torch.Tensor, text_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Drop the tokens that no item attends to: text [B, T, D] and mask [B or 1, T] -> text [B, T', D] and a
        mask [B or 1, T'], or None when every item attends to every token left.

        Padding therefore never reaches the network: the same prompt padded to any length gives the same
        tokens (and, for one item, bit for bit the same noise and log-probability)."""
        if text_mask is None:
            return text, None
        if text_mask.ndim != 2 or text_mask.shape[1] != text.shape[1]:
            raise NoiseARInputError(f"text_mask has shape {list(text_mask.shape)}; expected {list(text.shape[:2])}")
        keep = text_mask.bool().any(dim=0).to(text.device)
        text, text_mask = text[:, keep], text_mask[:, keep.to(text_mask.device)]
        return text, None if bool(text_mask.bool().all()) else text_mask

    def _check_text_length(self, tokens: int) -> None:
        limit = self.config.text_tokens
        if limit and tokens > limit:
            raise NoiseARInputError(
                f"the text has {tokens} tokens (padding excluded); this {self.config.title} prior reads at most {limit}: "
                f"shorten the prompt, or use a prior trained with a larger text limit (noisear train --text-tokens)"
            )

    # The network: one block for teacher forcing and cached decoding ----------------------------------
    def block(
        self,
        k: int,
        x: torch.Tensor,
        causal: torch.Tensor,
        text_kv: TextKV,
        text_attend: torch.Tensor | None,
        linears: Linears,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Layer ``k`` on the n new rows x [B, n, d] -> [B, n, d] (``last_only``: [B, 1, d], the last row's).

        Self-attention over the rows in ``cache`` (if any, which then keeps the new rows' keys/values)
        and the new ones, with ``causal`` [n, keys] (True = may attend, see :func:`causal_mask`);
        cross-attention over ``text_kv`` with ``text_attend`` [B, 1, 1, T] or None; feed-forward. Each
        part normalises its input first and adds its output to it. Attention dropout is applied as
        nn.MultiheadAttention applies it (to the attention probabilities, in training only).
        """
        d, heads = self.config.d_model, self.config.n_heads
        attention, cross = self.self_attn_layers[k], self.cross_attn_layers[k]

        x = self.self_attn_norm[k](x)
        q, keys, values = linears.attention(x, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
        q, keys, values = split_heads(q, heads), split_heads(keys, heads), split_heads(values, heads)
        if cache is not None:
            keys, values = cache.extend(k, keys, values)
        if last_only:  # only the last row is read: the rest of the block for it alone
            x, q, causal = x[:, -1:], q[:, :, -1:], causal[-1:]
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=causal, dropout_p=attention.dropout if self.training else 0.0
        )
        x = linears.attention(merge_heads(out), attention.out_proj.weight, attention.out_proj.bias) + x

        x = self.cross_attn_norm[k](x)
        q = split_heads(linears.attention(x, cross.in_proj_weight[:d], cross.in_proj_bias[:d]), heads)
        out = F.scaled_dot_product_attention(
            q, *text_kv[k], attn_mask=text_attend, dropout_p=cross.dropout if self.training else 0.0
        )
        x = linears.attention(merge_heads(out), cross.out_proj.weight, cross.out_proj.bias) + x

        x = self.ffn_norm[k](x)
        return mlp(self.ffn_layers[k], x, linears.mlp) + x

    def text_keys_values(self, text: torch.Tensor, linears: Linears) -> TextKV:
        """The encoded text [B, T, d] -> per layer its cross-attention keys and values, each [B, h, T, d/h]."""
        d, heads, layers = self.config.d_model, self.config.n_heads, []
        for cross in self.cross_attn_layers:
            keys, values = linears.text(text, cross.in_proj_weight[d:], cross.in_proj_bias[d:]).chunk(2, dim=-1)
            layers.append((split_heads(keys, heads), split_heads(values, heads)))
        return layers

    def predict(self, x: torch.Tensor, linears: Linears) -> tuple[torch.Tensor, torch.Tensor]:
        """The last block's output [B, n, d] -> (mu, logvar), each [B, n, K], logvar unclamped."""
        return mlp(self.prediction_head_mu, x, linears.mlp), mlp(self.prediction_head_logvar, x, linears.mlp)

    # Teacher forcing (the published forward pass) --------------------------------------------------
    def forward(
        self, text: torch.Tensor, prefix: torch.Tensor, text_mask: torch.Tensor | None = None, grid: tuple[int, ...] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict patches 0..L from text [B,T,D] and the first L patch tokens ``prefix`` [B,L,K].

        ``grid`` (patch rows, columns; frames first for video) defaults to the config's. Returns (mu, logvar), each
        [B, L+1, K], logvar unclamped.
        """
        grid = tuple(grid or (self.config.grid_height, self.config.grid_width))
        batch, length = prefix.shape[0], prefix.shape[1] + 1
        memory = self._expand_text(self.encode_text(text), batch)
        text_kv, text_attend = self.text_keys_values(memory, TEACHER_FORCING), self._text_attend(text_mask, memory)
        start = self.learnable_start_token_emb.expand(batch, 1, -1)
        x = torch.cat([start, self.latent_patch_encoder(prefix.to(start.dtype))], dim=1)
        x = x + self.positions(grid)[:, :length]
        causal = causal_mask(0, length, x.device)
        for k in range(self.config.n_layers):
            x = self.block(k, x, causal, text_kv, text_attend, TEACHER_FORCING)
        return self.predict(x, TEACHER_FORCING)

    def log_prob(
        self,
        text: torch.Tensor,
        noise: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        mean_target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """log p(noise | text) in nats, [B]: sum over patches of the diagonal-Gaussian log density.

        Defined on the grids training sees: the native latent for a 1-D position table (the published
        priors; a sliding-window sample of another size is not scored), any grid of whole patches within
        one decoding window for a 2-D or video prior. ``noise`` is [B, C, H, W] ([B, C, T, H, W] for video; an
        image prior also scores a one-frame [B, C, 1, H, W], as it samples one).

        ``mean_target`` (training only, shaped like noise): the value is unchanged, but the means' gradient
        comes from (mean_target - mu) instead of (noise - mu), and the log-variances' from the full residual
        with the means held fixed. With mean_target = noise - z for a part z of zero mean that is independent
        of the prompt and the earlier patches (golden noise minus its starting noise), the expected gradient
        is the same and its variance far smaller (a control variate).
        """
        c = self.config
        text, text_mask = self.attended_text(text, text_mask)
        self._check_text_length(text.shape[1])
        noise, grid = self._check_noise(noise)
        tokens = patchify(noise.to(self._anchor.dtype), c.patch_size, c.patch_frames)
        mu, logvar = self(text, tokens[:, :-1], text_mask, grid)
        logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        density = -0.5 * ((tokens - mu) ** 2 * torch.exp(-logvar) + logvar + math.log(2 * math.pi))
        if mean_target is not None:
            target = patchify(self._check_noise(mean_target)[0].to(tokens.dtype), c.patch_size, c.patch_frames)
            surrogate = -0.5 * (
                (target - mu) ** 2 * torch.exp(-logvar.detach()) + (tokens - mu.detach()) ** 2 * torch.exp(-logvar) + logvar
            )
            density = density.detach() + surrogate - surrogate.detach()  # value: density; gradient: surrogate's
        return density.float().sum(dim=(1, 2))

    def _check_noise(self, noise: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Refuse a noise that log_prob cannot score (rank, channels, size); -> the noise on the model's
        device (an image prior's one-frame [B, C, 1, H, W], as Qwen-Image's, as the image) and its patch grid."""
        c = self.config
        if not c.video and noise.ndim == 5 and noise.shape[2] == 1:
            noise = noise[:, :, 0]
        rank = 5 if c.video else 4
        if c.positions == "table":
            fits = noise.ndim == 4 and tuple(noise.shape[1:]) == (c.channels, c.latent_height, c.latent_width)
            expected = f"[batch, {c.channels}, {c.latent_height}, {c.latent_width}]"
        else:
            size = tuple(noise.shape[2:])
            fits = (
                noise.ndim == rank
                and noise.shape[1] == c.channels
                and all(n > 0 and n % p == 0 for n, p in zip(size, c.patch))
                and c.plan(*size).mode != "sliding window"
            )
            axes = "T, H, W" if c.video else "H, W"
            window = f" and at most {c.window} patches per side" if c.window else ""
            window += f", {c.window_frames} patch frames" if c.window_frames else ""
            expected = f"[batch, {c.channels}, {axes}] in whole {' x '.join(map(str, c.patch))}-cell patches{window}"
        if not fits:
            raise NoiseARInputError(f"noise has shape {list(noise.shape)}; this prior scores {expected}")
        return noise.to(self._anchor.device), tuple(n // p for n, p in zip(noise.shape[2:], c.patch))

    # Sampling ----------------------------------------------------------------------------------------
    def _latent(self, eps: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """eps as this prior's rank: [B, C, H, W] for an image prior (a [B, C, 1, H, W] latent of an image
        model such as Qwen-Image is squeezed: True is returned so the noise gets its time axis back),
        [B, C, T, H, W] for a video prior. A video latent meets an image prior (or the reverse): error."""
        c = self.config
        if eps.ndim == 5 and not c.video:
            if eps.shape[2] != 1:
                raise NoiseARInputError(
                    f"eps has shape {list(eps.shape)}, a video latent of {eps.shape[2]} frames; this {c.title} prior is an "
                    f"image prior. Use a video prior (trained on video latents), or an image latent"
                )
            return eps[:, :, 0], True
        if eps.ndim == 4 and c.video:
            raise NoiseARInputError(
                f"eps has shape {list(eps.shape)}, an image latent; this {c.title} prior is a video prior and samples "
                f"[batch, {c.channels}, frames, H, W] (a one-frame video has frames = 1)"
            )
        rank = 5 if c.video else 4
        if eps.ndim != rank or eps.shape[1] != c.channels or any(n < 1 for n in eps.shape[2:]):
            axes = "frames, H, W" if c.video else "H, W"
            raise NoiseARInputError(
                f"eps has shape {list(eps.shape)}; this prior samples [batch, {c.channels}, {axes}] (any H, W >= 1 latent cells)"
            )
        return eps, False

    def draw_cost(self, size: Sequence[int], text_tokens: int) -> cost.DrawCost:
        """The estimated cost of drawing one item of a latent of ``size`` cells ((H, W) or (T, H, W))."""
        return cost.estimate(self.config, tuple(size), text_tokens, self._anchor.element_size())

    def _draw_patch(self, mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor, temperature: float) -> torch.Tensor:
        """The published rule: mu + eps * temperature * exp(clamp(logvar) / 2)."""
        return mu + eps * (temperature * torch.exp(0.5 * logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)))

    def _finish(self, tokens: list[torch.Tensor], plan: DecodingPlan) -> torch.Tensor:
        """The decoded patch tokens (each [B,1,K], raster order) -> fp32 noise [B, C, *plan.size]."""
        missing = math.prod(plan.grid) - len(tokens)
        tokens = torch.cat(tokens + [torch.zeros_like(tokens[0]).expand(-1, missing, -1)], dim=1)
        noise = unpatchify(tokens, plan.patch, plan.padded_size)
        return noise[(slice(None), slice(None), *(slice(0, n) for n in plan.size))].float()

    def _prepare_sampling(
        self,
        text: torch.Tensor,
        eps: torch.Tensor | None,
        temperature: float,
        text_mask: torch.Tensor | None,
        generator: Generator,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, DecodingPlan, Callable[[torch.Tensor], torch.Tensor]]:
        """The checks and preparation both samplers share -> (text, mask, eps_tokens, plan, restore).

        Padding tokens are dropped from the text; eps [B, C, *size] (drawn at the config's size when not given)
        becomes the patch tokens [B, M, K] of the padded eps on the model's device and dtype; ``restore(noise)``
        gives the noise the caller's rank. Shapes and the estimated cost (noisear.cost) are checked before
        anything the size of the latent is allocated or scanned; a draw over the bound is refused."""
        check_sampling_inputs(text, None, temperature, text_mask)
        text, text_mask = self.attended_text(text, text_mask)
        self._check_text_length(text.shape[1])
        c, squeezed = self.config, False
        if eps is not None:
            eps, squeezed = self._latent(eps)
        plan = c.plan(*(eps.shape[2:] if eps is not None else c.latent_size))
        problem = cost.problem(self.draw_cost(plan.size, text.shape[1]), self._anchor.device.type)
        if problem:
            raise NoiseARInputError(problem)
        if eps is None:
            eps = standard_normal((text.shape[0], c.channels, *c.latent_size), generator)
        check_sampling_inputs(text, eps, temperature, text_mask)
        eps = pad_eps(eps.to(self._anchor.device), plan)
        eps_tokens = patchify(eps.to(self._anchor.dtype), c.patch_size, c.patch_frames)
        return text, text_mask, eps_tokens, plan, (lambda noise: noise[:, :, None] if squeezed else noise)

    @torch.no_grad()
    def sample(
        self,
        text: torch.Tensor,
        eps: torch.Tensor | None = None,
        *,
        generator: Generator = None,
        temperature: float = 0.5,
        text_mask: torch.Tensor | None = None,
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        """Draw noise shaped like eps (fp32, model's device) given text [B or 1, T, D] with cached decoding.

        ``eps`` are the standard-normal draws, shape of the output: [B, C, H, W] (or [B, C, T, H, W], see the
        module docstring) of any size of at least one cell. Without it they come from :func:`standard_normal`
        with ``generator`` at the config's size. Tokens no item attends to (``text_mask``) are dropped first.
        The latent is padded up to whole patches (cells beyond it get Gaussian draws seeded by eps, see
        :func:`pad_eps`) and cropped back. At the native size of a 1-D position table (the published priors)
        this is the published sampler; at other sizes each patch, in raster order, is predicted from the
        native window anchored as far up and left as possible that contains it, with that window's earlier
        patches as its prefix at the window's own positions (a grid narrower than the window is widened with
        padding patches; rows below it are never needed). So for sizes at least native on both sides, the
        top-left native window is the native sample of the cropped eps. A 2-D or video prior decodes a grid
        within its window as one sequence, and a larger one with a sliding window of that size. Self-attention
        keys/values are cached per window (DecodingPlan.schedule decides which), text keys/values computed
        once; each patch costs at most one pass over a window's length, so the cost grows linearly with the
        number of patches. A draw estimated over noisear.cost's bound is refused before anything is allocated.
        ``callback(patches done, patches decoded in all)``.
        """
        text, text_mask, eps_tokens, plan, restore = self._prepare_sampling(text, eps, temperature, text_mask, generator)
        with eval_mode(self):
            batch = eps_tokens.shape[0]
            memory = self._expand_text(self.encode_text(text), batch)
            text_kv, text_attend = self.text_keys_values(memory, CACHED_DECODING), self._text_attend(text_mask, memory)
            positions, start = self.positions(plan.window), self.learnable_start_token_emb.expand(batch, 1, -1)
            decoders: dict[tuple[int, ...], _CachedDecoder] = {}
            tokens, inputs = [], []  # per decoded patch: its token [B,1,K] and its embedding [B,1,d]
            for step in plan.schedule():
                for key in step.dropped:
                    del decoders[key]
                if step.origin not in decoders:
                    decoders[step.origin] = _CachedDecoder(self, text_kv, text_attend, plan.window_length)
                x = torch.cat([start if t == 0 else inputs[plan.member(step.origin, t - 1)] for t in step.new], dim=1)
                mu, logvar = decoders[step.origin].step(x + positions[:, step.new.start : step.new.stop])
                tokens.append(self._draw_patch(mu, logvar, eps_tokens[:, step.index : step.index + 1], temperature))
                if callback is not None:
                    callback(step.index + 1, plan.patches)
                if step.index + 1 < plan.patches:
                    inputs.append(mlp(self.latent_patch_encoder, tokens[-1], CACHED_DECODING.mlp))
            return restore(_finite_noise(self._finish(tokens, plan)))

    @torch.no_grad()
    def sample_naive(
        self,
        text: torch.Tensor,
        eps: torch.Tensor | None = None,
        *,
        generator: Generator = None,
        temperature: float = 0.5,
        text_mask: torch.Tensor | None = None,
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        """The published algorithm, per window: the window's whole prefix recomputed for every patch.

        Same plan and result as :meth:`sample` (at the native size: the published sampler). Reference for tests.
        """
        text, text_mask, eps_tokens, plan, restore = self._prepare_sampling(text, eps, temperature, text_mask, generator)
        with eval_mode(self):
            tokens = []
            for index in range(plan.patches):
                origin, local = plan.origin(index), plan.local(index)
                prefix = [tokens[plan.member(origin, t)] for t in range(local)]
                prefix = torch.cat(prefix, dim=1) if prefix else eps_tokens[:, :0]
                mu, logvar = self(text, prefix, text_mask, plan.window)
                tokens.append(self._draw_patch(mu[:, -1:], logvar[:, -1:], eps_tokens[:, index : index + 1], temperature))
                if callback is not None:
                    callback(index + 1, plan.patches)
            return restore(_finite_noise(self._finish(tokens, plan)))


class _CachedDecoder:
    """The positions of one sequence (a window) through the blocks, self-attention keys/values cached.

    Each step runs the blocks on its new rows only, with :data:`CACHED_DECODING`'s products: one read
    of every weight matrix for those few rows.
    """

    def __init__(self, model: NoiseAR, text_kv: TextKV, text_attend: torch.Tensor | None, length: int) -> None:
        self.model, self.text_kv, self.text_attend = model, text_kv, text_attend
        keys = text_kv[0][0]
        self.cache = KVCache(model.config, keys.shape[0], length, keys)

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, n, d] (embeddings + positions of the next n tokens) -> (mu, logvar) [B, 1, K] of the last."""
        m, n = self.model, x.shape[1]
        causal = causal_mask(self.cache.position, n, x.device)
        for k in range(m.config.n_layers):
            last_only = k == m.config.n_layers - 1
            x = m.block(k, x, causal, self.text_kv, self.text_attend, CACHED_DECODING, self.cache, last_only)
        self.cache.position += n
        return m.predict(x, CACHED_DECODING)
