"""An independent, deliberately plain NoiseAR, written from notes on the paper (arXiv 2506.01337) and the authors' code.

It works directly on a published-layout state dict with elementary tensor ops (explicit attention
math, hand-written LayerNorm and GELU, no torch.nn modules) and samples the published way: the
whole prefix is recomputed at every step and the last position is read. Sizes are read from the
tensors; nothing is imported from `noisear`. Used only to check `noisear.model`.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Normal

LN_EPS = 1e-5  # torch.nn.LayerNorm default, used by the published network


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + LN_EPS) * weight + bias


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU, torch.nn.GELU's default."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def silu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def linear(x: torch.Tensor, state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return x @ state[f"{name}.weight"].T + state[f"{name}.bias"]


def attention(
    queries_from: torch.Tensor,
    keys_from: torch.Tensor,
    state: dict[str, torch.Tensor],
    name: str,
    n_heads: int,
    score_bias: torch.Tensor,
) -> torch.Tensor:
    """Multi-head attention with the packed in_proj of nn.MultiheadAttention, written out.

    queries_from [B, Lq, d], keys_from [B, Lk, d]; score_bias broadcasts to [B, h, Lq, Lk] (0 or -inf).
    """
    weight, bias = state[f"{name}.in_proj_weight"], state[f"{name}.in_proj_bias"]
    d = weight.shape[1]
    q = queries_from @ weight[:d].T + bias[:d]
    k = keys_from @ weight[d : 2 * d].T + bias[d : 2 * d]
    v = keys_from @ weight[2 * d :].T + bias[2 * d :]

    def heads(x: torch.Tensor) -> torch.Tensor:  # [B, L, d] -> [B, h, L, d/h]
        return x.reshape(x.shape[0], x.shape[1], n_heads, d // n_heads).permute(0, 2, 1, 3)

    q, k, v = heads(q), heads(k), heads(v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // n_heads) + score_bias
    weights = torch.softmax(scores, dim=-1)
    out = (weights @ v).permute(0, 2, 1, 3).reshape(q.shape[0], -1, d)
    return out @ state[f"{name}.out_proj.weight"].T + state[f"{name}.out_proj.bias"]


def patch_size_of(state: dict[str, torch.Tensor]) -> int:
    """P from latent_patch_encoder.0.weight [2*P*P, C*P*P]."""
    return math.isqrt(state["latent_patch_encoder.0.weight"].shape[0] // 2)


def to_tokens(noise: torch.Tensor, patch: int) -> torch.Tensor:
    """[B,C,H,W] -> [B,M,C*P*P]: reshape [B,C,H/P,P,W/P,P], permute to [B,H/P,W/P,C,P,P], flatten."""
    b, c, h, w = noise.shape
    x = noise.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


def from_tokens(tokens: torch.Tensor, patch: int, channels: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`to_tokens`."""
    b = tokens.shape[0]
    x = tokens.reshape(b, height // patch, width // patch, channels, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels, height, width)


def forward(
    state: dict[str, torch.Tensor],
    text: torch.Tensor,
    prefix: torch.Tensor,
    n_heads: int = 1,
    text_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher forcing: text [B,T,D], prefix tokens [B,L,K] -> (mu, logvar) [B, L+1, K], unclamped."""
    if "dim_adapter.weight" in state:
        text = linear(text, state, "dim_adapter")
    batch, length = prefix.shape[0], prefix.shape[1] + 1
    start = state["learnable_start_token_emb"].reshape(1, 1, -1).expand(batch, 1, -1)
    embedded = linear(silu(linear(prefix, state, "latent_patch_encoder.0")), state, "latent_patch_encoder.2")
    x = torch.cat([start, embedded], dim=1) + state["pos_encoding"][:, :length]
    future = torch.ones(length, length, dtype=torch.bool).triu(1)
    causal = torch.zeros(length, length, dtype=x.dtype).masked_fill(future, float("-inf"))
    text_bias = torch.zeros(batch, 1, 1, text.shape[1], dtype=x.dtype)
    if text_mask is not None:
        text_bias = text_bias.masked_fill(~text_mask.bool()[:, None, None, :], float("-inf"))
    k = 0
    while f"self_attn_layers.{k}.in_proj_weight" in state:
        x = layer_norm(x, state[f"self_attn_norm.{k}.weight"], state[f"self_attn_norm.{k}.bias"])
        x = attention(x, x, state, f"self_attn_layers.{k}", n_heads, causal) + x
        x = layer_norm(x, state[f"cross_attn_norm.{k}.weight"], state[f"cross_attn_norm.{k}.bias"])
        x = attention(x, text, state, f"cross_attn_layers.{k}", n_heads, text_bias) + x
        x = layer_norm(x, state[f"ffn_norm.{k}.weight"], state[f"ffn_norm.{k}.bias"])
        x = linear(gelu(linear(x, state, f"ffn_layers.{k}.0")), state, f"ffn_layers.{k}.3") + x
        k += 1
    mu = linear(gelu(linear(x, state, "prediction_head_mu.0")), state, "prediction_head_mu.2")
    logvar = linear(gelu(linear(x, state, "prediction_head_logvar.0")), state, "prediction_head_logvar.2")
    return mu, logvar


def std_of(logvar: torch.Tensor) -> torch.Tensor:
    """Published: std = exp(0.5 * clamp(logvar, -20, 10))."""
    return torch.exp(0.5 * torch.clamp(logvar, -20.0, 10.0))


def sample(
    state: dict[str, torch.Tensor],
    text: torch.Tensor,
    eps: torch.Tensor,
    temperature: float = 0.5,
    n_heads: int = 1,
    text_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Published sampler: eps [B,C,H,W] -> noise [B,C,H,W]; patch j = mu_j + eps_j * temperature * std_j."""
    patch = patch_size_of(state)
    eps_tokens = to_tokens(eps, patch)
    tokens = eps_tokens[:, :0]
    for j in range(eps_tokens.shape[1]):
        mu, logvar = forward(state, text, tokens, n_heads, text_mask)
        new = mu[:, -1:] + eps_tokens[:, j : j + 1] * (temperature * std_of(logvar[:, -1:]))
        tokens = torch.cat([tokens, new], dim=1)
    return from_tokens(tokens, patch, *eps.shape[1:])


def patch_log_probs(
    state: dict[str, torch.Tensor],
    text: torch.Tensor,
    noise: torch.Tensor,
    n_heads: int = 1,
    text_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """[B, M]: log N(patch_j; mu_j, std_j^2) summed over the patch's values, via torch.distributions."""
    tokens = to_tokens(noise, patch_size_of(state))
    mu, logvar = forward(state, text, tokens[:, :-1], n_heads, text_mask)
    return Normal(mu, std_of(logvar)).log_prob(tokens).sum(dim=-1)


def sample_windows(
    state: dict[str, torch.Tensor],
    text: torch.Tensor,
    eps: torch.Tensor,
    window_rows: int,
    window_cols: int,
    temperature: float = 0.5,
    n_heads: int = 1,
) -> torch.Tensor:
    """Sliding-window sampling, written plainly: eps [B,C,H,W] of whole patches, at least window_cols wide.

    Patches are drawn in raster order; patch (r, c) is the published sampler's next patch for the
    window of window_rows (fewer if the grid is shorter) x window_cols patches that contains it,
    anchored as far up and left as possible, given that window's patches drawn so far (the window's
    whole prefix recomputed, positions 0.. of the window's own sequence).
    """
    patch = patch_size_of(state)
    batch, channels, height, width = eps.shape
    rows, cols = height // patch, width // patch
    window_rows = min(window_rows, rows)
    assert cols >= window_cols
    eps_grid = to_tokens(eps, patch).reshape(batch, rows, cols, -1)
    drawn: dict[tuple[int, int], torch.Tensor] = {}
    for r in range(rows):
        for c in range(cols):
            top, left = max(0, r - window_rows + 1), max(0, c - window_cols + 1)
            window = [(i, j) for i in range(top, top + window_rows) for j in range(left, left + window_cols)]
            prefix = [drawn[cell] for cell in window if cell < (r, c)]
            assert all(cell in drawn for cell in window[: len(prefix)])  # the window's prefix, in its order
            tokens = torch.stack(prefix, dim=1) if prefix else eps_grid[:, 0, :0]
            mu, logvar = forward(state, text, tokens, n_heads)
            drawn[r, c] = mu[:, -1] + eps_grid[:, r, c] * (temperature * std_of(logvar[:, -1]))
    tokens = torch.stack([drawn[r, c] for r in range(rows) for c in range(cols)], dim=1)
    return from_tokens(tokens, patch, channels, height, width)
