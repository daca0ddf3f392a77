"""The NoiseAR network (published layout and math) with teacher forcing, log-probability and sampling.

Shapes: B batch, T text tokens, D text width, d d_model, M patches, K = C*P*P values per patch.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import NoiseARConfig
from .patches import DecodingPlan, pad_eps, patchify, unpatchify

LOGVAR_MIN, LOGVAR_MAX = -20.0, 10.0  # published clamp before std = exp(logvar / 2)

# What `generator` may be: see `standard_normal`.
Generator = int | Sequence[int] | torch.Generator | Sequence[torch.Generator] | None
StepCallback = Callable[[int, int], None]  # (patches done, patches in all); may raise to interrupt


class NoiseARInputError(ValueError):
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


def grid_positions(rows: int, cols: int, d_model: int) -> torch.Tensor:
    """[1, rows*cols, d_model] in raster order: row sinusoid in the first half, column in the second."""
    row, col = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    half = d_model // 2
    return torch.cat([_sinusoid(row.flatten(), half), _sinusoid(col.flatten(), half)], dim=1)[None]


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

    def positions(self, grid: tuple[int, int]) -> torch.Tensor:
        """[1, M, d]: what is added to input token j, the one that predicts patch j of a (rows, cols) grid.

        A 1-D table covers its native grid and its top rows (a window of a shorter latent)."""
        c = self.config
        if c.positions == "2d":
            return grid_positions(*grid, c.d_model).to(self._anchor)
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
                f"text embedding has shape {list(text.shape)}; this {c.variant} prior expects [batch, tokens, {c.text_dim}]"
            )
        text = text.to(device=self._anchor.device, dtype=self._anchor.dtype)
        return self.dim_adapter(text) if c.has_text_adapter else text

    def _key_padding_mask(self, text_mask: torch.Tensor | None, text: torch.Tensor) -> torch.Tensor | None:
        """[B, T] mask (1/True = attend) -> MultiheadAttention's mask (True = ignore), or None."""
        if text_mask is None:
            return None
        if tuple(text_mask.shape) != tuple(text.shape[:2]):
            raise NoiseARInputError(f"text_mask has shape {list(text_mask.shape)}; expected {list(text.shape[:2])}")
        return ~text_mask.to(device=text.device, dtype=torch.bool)

    def _expand_text(self, text: torch.Tensor, batch: int) -> torch.Tensor:
        if text.shape[0] == batch:
            return text
        if text.shape[0] == 1:
            return text.expand(batch, *text.shape[1:])
        raise NoiseARInputError(f"text batch {text.shape[0]} does not match noise batch {batch}; give 1 or {batch}")

    # Teacher forcing (the published forward pass) --------------------------------------------------
    def forward(
        self, text: torch.Tensor, prefix: torch.Tensor, text_mask: torch.Tensor | None = None, grid: tuple[int, int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict patches 0..L from text [B,T,D] and the first L patch tokens ``prefix`` [B,L,K].

        ``grid`` (patch rows, columns) defaults to the config's. Returns (mu, logvar), each
        [B, L+1, K], logvar unclamped.
        """
        grid = grid or (self.config.grid_height, self.config.grid_width)
        batch, length = prefix.shape[0], prefix.shape[1] + 1
        memory = self._expand_text(self.encode_text(text), batch)
        ignore = self._key_padding_mask(self._expand_text(text_mask, batch) if text_mask is not None else None, memory)
        start = self.learnable_start_token_emb.expand(batch, 1, -1)
        x = torch.cat([start, self.latent_patch_encoder(prefix.to(start.dtype))], dim=1)
        x = x + self.positions(grid)[:, :length]
        causal = torch.triu(torch.full((length, length), float("-inf"), device=x.device, dtype=x.dtype), 1)
        for k in range(self.config.n_layers):
            x = self.self_attn_norm[k](x)
            x = self.self_attn_layers[k](x, x, x, attn_mask=causal, need_weights=False)[0] + x
            x = self.cross_attn_norm[k](x)
            x = self.cross_attn_layers[k](x, memory, memory, key_padding_mask=ignore, need_weights=False)[0] + x
            x = self.ffn_norm[k](x)
            x = self.ffn_layers[k](x) + x
        return self.prediction_head_mu(x), self.prediction_head_logvar(x)

    def log_prob(
        self,
        text: torch.Tensor,
        noise: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        mean_target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """log p(noise | text) in nats, [B]: sum over patches of the diagonal-Gaussian log density.

        Defined on the grids training sees: the native latent for a 1-D position table (the published
        priors; a sliding-window sample of another size is not scored), any grid of whole patches
        for a 2-D prior.

        ``mean_target`` [B,C,H,W] (training only): the value is unchanged, but the means' gradient comes
        from (mean_target - mu) instead of (noise - mu), and the log-variances' from the full residual with
        the means held fixed. With mean_target = noise - z for a part z of zero mean that is independent of
        the prompt and the earlier patches (golden noise minus its starting noise), the expected gradient
        is the same and its variance far smaller (a control variate).
        """
        noise = self._check_noise(noise)
        tokens = patchify(noise.to(self._anchor.dtype), self.config.patch_size)
        mu, logvar = self(text, tokens[:, :-1], text_mask, self._grid(noise))
        logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        density = -0.5 * ((tokens - mu) ** 2 * torch.exp(-logvar) + logvar + math.log(2 * math.pi))
        if mean_target is not None:
            target = patchify(self._check_noise(mean_target).to(tokens.dtype), self.config.patch_size)
            surrogate = -0.5 * (
                (target - mu) ** 2 * torch.exp(-logvar.detach()) + (tokens - mu.detach()) ** 2 * torch.exp(-logvar) + logvar
            )
            density = density.detach() + surrogate - surrogate.detach()  # value: density; gradient: surrogate's
        return density.float().sum(dim=(1, 2))

    def _check_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """Refuse a noise that log_prob cannot score: channels, and size (native only for "table")."""
        c = self.config
        if c.positions == "2d":
            fits = (
                noise.ndim == 4
                and noise.shape[1] == c.channels
                and noise.shape[2] % c.patch_size == 0
                and noise.shape[3] % c.patch_size == 0
                and noise.shape[2] > 0
                and noise.shape[3] > 0
            )
            expected = f"[batch, {c.channels}, H, W] with H and W multiples of {c.patch_size}"
        else:
            fits = noise.ndim == 4 and tuple(noise.shape[1:]) == (c.channels, c.latent_height, c.latent_width)
            expected = f"[batch, {c.channels}, {c.latent_height}, {c.latent_width}]"
        if not fits:
            raise NoiseARInputError(f"noise has shape {list(noise.shape)}; this prior models {expected}")
        return noise.to(self._anchor.device)

    def _grid(self, noise: torch.Tensor) -> tuple[int, int]:
        """(patch rows, patch columns) of a [B, C, H, W] noise."""
        return noise.shape[2] // self.config.patch_size, noise.shape[3] // self.config.patch_size

    # Sampling ----------------------------------------------------------------------------------------
    def _prepare_sampling(
        self, text: torch.Tensor, eps: torch.Tensor | None, generator: Generator
    ) -> tuple[torch.Tensor, DecodingPlan]:
        """Check the sampling inputs; eps [B,C,H,W] (drawn at the config's size when not given) ->
        patch tokens [B, rows*cols, K] of the padded eps on the model's device and dtype, and the plan."""
        c = self.config
        if eps is None:
            eps = standard_normal((text.shape[0], c.channels, c.latent_height, c.latent_width), generator)
        if eps.ndim != 4 or eps.shape[1] != c.channels or eps.shape[2] < 1 or eps.shape[3] < 1:
            raise NoiseARInputError(
                f"eps has shape {list(eps.shape)}; this prior samples [batch, {c.channels}, H, W] (any H, W >= 1 latent cells)"
            )
        plan = c.plan(eps.shape[2], eps.shape[3])
        eps = pad_eps(eps.to(self._anchor.device), plan)
        return patchify(eps.to(self._anchor.dtype), c.patch_size), plan

    def _draw_patch(self, mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor, temperature: float) -> torch.Tensor:
        """The published rule: mu + eps * temperature * exp(clamp(logvar) / 2)."""
        return mu + eps * (temperature * torch.exp(0.5 * logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)))

    def _finish(self, tokens: list[torch.Tensor], plan: DecodingPlan) -> torch.Tensor:
        """The decoded patch tokens (each [B,1,K], raster order) -> fp32 noise [B,C,height,width]."""
        p, missing = plan.patch_size, plan.rows * plan.cols - len(tokens)
        tokens = torch.cat(tokens + [torch.zeros_like(tokens[0]).expand(-1, missing, -1)], dim=1)
        return unpatchify(tokens, p, plan.rows * p, plan.cols * p)[:, :, : plan.height, : plan.width].float()

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
        """Draw noise [B,C,H,W] (fp32, model's device) given text [B or 1, T, D] with cached decoding.

        ``eps`` are the standard-normal draws, shape of the output: any latent size H, W >= 1 cell.
        Without it they come from :func:`standard_normal` with ``generator`` at the config's size.
        The latent is padded up to whole patches (cells beyond it get Gaussian draws seeded by eps,
        see :func:`pad_eps`) and cropped back. At the native size of a 1-D position table (the
        published priors) this is the published sampler; at other sizes each patch, in raster order,
        is predicted from the native window anchored as far up and left as possible that contains
        it, with that window's earlier patches as its prefix at the window's own positions (a grid
        narrower than the window is widened with padding patches; rows below it are never needed).
        So for sizes at least native on both sides, the top-left native window is the native sample
        of the cropped eps. A 2-D prior decodes any grid as one sequence. Self-attention keys/values
        are cached per window, text keys/values computed once; each patch costs at most one pass
        over a window's length, so the cost grows linearly with the number of patches.
        ``callback(patches done, patches decoded in all)``.
        """
        check_sampling_inputs(text, eps, temperature, text_mask)
        with eval_mode(self):
            eps_tokens, plan = self._prepare_sampling(text, eps, generator)
            batch = eps_tokens.shape[0]
            memory = self._expand_text(self.encode_text(text), batch)
            ignore = self._key_padding_mask(self._expand_text(text_mask, batch) if text_mask is not None else None, memory)
            text_kv = _TextKV(self, memory, ignore)
            positions, start = self.positions(plan.window), self.learnable_start_token_emb.expand(batch, 1, -1)
            decoders: dict[tuple[int, int], _CachedDecoder] = {}
            tokens, inputs = [], []  # per decoded patch: its token [B,1,K] and its embedding [B,1,d]
            for index in range(plan.patches):
                origin, local = plan.origin(index), plan.local(index)
                decoders = {key: decoder for key, decoder in decoders.items() if key[0] == origin[0]}  # rows done
                decoder = decoders.setdefault(origin, _CachedDecoder(self, text_kv, plan.window_length))
                new = range(decoder.position, local + 1)  # window positions not yet in its cache
                x = torch.cat([start if t == 0 else inputs[plan.member(origin, t - 1)] for t in new], dim=1)
                mu, logvar = decoder.step(x + positions[:, new.start : new.stop])
                tokens.append(self._draw_patch(mu, logvar, eps_tokens[:, index : index + 1], temperature))
                if callback is not None:
                    callback(index + 1, plan.patches)
                if index + 1 < plan.patches:
                    inputs.append(decoder.mlp(self.latent_patch_encoder, tokens[-1]))
            return _finite_noise(self._finish(tokens, plan))

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
        check_sampling_inputs(text, eps, temperature, text_mask)
        with eval_mode(self):
            eps_tokens, plan = self._prepare_sampling(text, eps, generator)
            tokens = []
            for index in range(plan.patches):
                origin, local = plan.origin(index), plan.local(index)
                prefix = [tokens[plan.member(origin, t)] for t in range(local)]
                prefix = torch.cat(prefix, dim=1) if prefix else eps_tokens[:, :0]
                mu, logvar = self(text, prefix, text_mask, plan.window)
                tokens.append(self._draw_patch(mu[:, -1:], logvar[:, -1:], eps_tokens[:, index : index + 1], temperature))
                if callback is not None:
                    callback(index + 1, plan.patches)
            return _finite_noise(self._finish(tokens, plan))


def _few_rows_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """F.linear for a handful of rows, [..., in] -> [..., out]; fp32 as bias + weight @ x^T.

    Same math; in fp32 on the CPU (MKL) this streams the weight once for all rows, where F.linear
    packs it first. In bf16/fp16, F.linear (oneDNN) is the faster path: at 1 row 10 % and at 4 rows
    40 % faster than the fp32 trick in bf16 on this project's CPU (docs/testing-and-benchmarks.md).
    Decoding a step is bound by this read.
    """
    if weight.dtype != torch.float32:
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1]).contiguous()  # rows.T must be a transposed view: contiguous is 5x slower
    return torch.addmm(bias[:, None], weight, rows.T).T.reshape(*x.shape[:-1], weight.shape[0])


class _TextKV:
    """The text's keys/values of every cross-attention layer, projected once per call and shared by all windows."""

    def __init__(self, model: NoiseAR, memory: torch.Tensor, ignore: torch.Tensor | None) -> None:
        d, self.heads = model.config.d_model, model.config.n_heads
        self.layers = []  # per layer: keys, values [B, h, T, dh]
        for cross in model.cross_attn_layers:
            _, w_kv = cross.in_proj_weight.split([d, 2 * d])
            _, b_kv = cross.in_proj_bias.split([d, 2 * d])
            keys, values = F.linear(memory, w_kv, b_kv).chunk(2, dim=-1)
            self.layers.append((split_heads(keys, self.heads), split_heads(values, self.heads)))
        # [B, 1, 1, T] boolean "may attend" mask for scaled_dot_product_attention
        self.attend = None if ignore is None else ~ignore[:, None, None, :]


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, d] -> [B, h, L, d/h]."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, h, L, d/h] -> [B, L, d]."""
    return x.transpose(1, 2).flatten(2)


class _CachedDecoder:
    """The positions of one sequence (a window) through the blocks, self-attention keys/values cached.

    Same math as `NoiseAR.forward` (in eval mode), written with the packed in_proj weights so that
    each step costs one read of every weight matrix for its few new rows.
    """

    def __init__(self, model: NoiseAR, text: _TextKV, length: int) -> None:
        c = model.config
        self.model, self.text, self.heads, self.position = model, text, c.n_heads, 0
        keys = text.layers[0][0]
        shape = (keys.shape[0], c.n_heads, length, c.d_model // c.n_heads)
        self.cache = [(keys.new_empty(shape), keys.new_empty(shape)) for _ in range(c.n_layers)]

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, n, d] (embeddings + positions of the next n tokens) -> (mu, logvar) [B, 1, K] of the last."""
        m, t, n = self.model, self.position, x.shape[1]
        # new token i (at t + i) attends to positions <= t + i; a single new token attends to all
        causal = (
            None
            if n == 1
            else (torch.arange(t + n, device=x.device)[None, :] <= torch.arange(t, t + n, device=x.device)[:, None])
        )
        last = m.config.n_layers - 1
        for k in range(m.config.n_layers):
            attn, keys, values = m.self_attn_layers[k], *self.cache[k]
            x = m.self_attn_norm[k](x)
            q, key, value = _few_rows_linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
            keys[:, :, t : t + n], values[:, :, t : t + n] = split_heads(key, self.heads), split_heads(value, self.heads)
            if k == last and n > 1:  # only the last position's output is read: the rest of the block for it alone
                x, q, causal = x[:, -1:], q[:, -1:], None
            out = F.scaled_dot_product_attention(
                split_heads(q, self.heads), keys[:, :, : t + n], values[:, :, : t + n], attn_mask=causal
            )
            x = _few_rows_linear(merge_heads(out), attn.out_proj.weight, attn.out_proj.bias) + x

            cross, (text_keys, text_values) = m.cross_attn_layers[k], self.text.layers[k]
            x = m.cross_attn_norm[k](x)
            d = m.config.d_model
            q = _few_rows_linear(x, cross.in_proj_weight[:d], cross.in_proj_bias[:d])
            out = F.scaled_dot_product_attention(split_heads(q, self.heads), text_keys, text_values, attn_mask=self.text.attend)
            x = _few_rows_linear(merge_heads(out), cross.out_proj.weight, cross.out_proj.bias) + x

            x = m.ffn_norm[k](x)
            x = self.mlp(m.ffn_layers[k], x) + x
        self.position += n
        return self.mlp(m.prediction_head_mu, x), self.mlp(m.prediction_head_logvar, x)

    @staticmethod
    def mlp(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """``layers(x)`` for a few rows, its Linear layers through :func:`_few_rows_linear`."""
        for layer in layers:
            x = _few_rows_linear(x, layer.weight, layer.bias) if isinstance(layer, nn.Linear) else layer(x)
        return x
