"""Noise tensor <-> sequence of patch tokens, in the published raster order."""
from __future__ import annotations

import torch
from einops import rearrange


def patchify(noise: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, M, C*P*P]; patch rows outer, columns inner; a token flattens (c, y, x)."""
    return rearrange(noise, "b c (gh p) (gw q) -> b (gh gw) (c p q)", p=patch_size, q=patch_size)


def unpatchify(tokens: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """[B, M, C*P*P] -> [B, C, H, W], the inverse of :func:`patchify`."""
    return rearrange(tokens, "b (gh gw) (c p q) -> b c (gh p) (gw q)",
                     gh=height // patch_size, gw=width // patch_size, p=patch_size, q=patch_size)
