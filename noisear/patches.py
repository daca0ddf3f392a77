"""Noise tensor <-> sequence of patch tokens in the published raster order, and the decoding plan of a latent size."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from einops import rearrange


def patchify(noise: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, M, C*P*P]; patch rows outer, columns inner; a token flattens (c, y, x)."""
    return rearrange(noise, "b c (gh p) (gw q) -> b (gh gw) (c p q)", p=patch_size, q=patch_size)


def unpatchify(tokens: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """[B, M, C*P*P] -> [B, C, H, W], the inverse of :func:`patchify`."""
    return rearrange(
        tokens,
        "b (gh gw) (c p q) -> b c (gh p) (gw q)",
        gh=height // patch_size,
        gw=width // patch_size,
        p=patch_size,
        q=patch_size,
    )


@dataclass(frozen=True)
class DecodingPlan:
    """How a latent of ``height`` x ``width`` cells is decoded, patch by patch, in raster order.

    The decoded grid is ``rows`` x ``cols`` whole patches: the latent padded up to whole patches,
    and (for a 1-D position table) widened to at least the native window, so that every patch keeps
    its own native position (see `NoiseAR.sample`). Patch ``k`` (raster index in that grid) is
    predicted from the ``window_rows`` x ``window_cols`` window anchored as far up and left as
    possible that contains it, given that window's earlier patches; a 2-D prior's window is the
    whole grid. Only ``patches`` are decoded: nothing after the last visible patch is needed.
    """

    height: int  # latent cells
    width: int
    patch_size: int
    rows: int  # decoded grid, whole patches
    cols: int
    window_rows: int
    window_cols: int
    mode: str  # "native", "sliding window" or "2-D prior"

    @property
    def visible(self) -> tuple[int, int]:
        """(patch rows, patch columns) that hold visible cells."""
        return -(-self.height // self.patch_size), -(-self.width // self.patch_size)

    @property
    def patches(self) -> int:
        """Patches decoded: raster indices 0 .. the last visible patch."""
        return (self.visible[0] - 1) * self.cols + self.visible[1]

    @property
    def window(self) -> tuple[int, int]:
        """(rows, columns) of the window: the grid a window's sequence of positions covers."""
        return self.window_rows, self.window_cols

    @property
    def window_length(self) -> int:
        return self.window_rows * self.window_cols

    def origin(self, index: int) -> tuple[int, int]:
        """(row, column) of the top-left patch of the window that predicts patch ``index``."""
        row, col = divmod(index, self.cols)
        return max(0, row - self.window_rows + 1), max(0, col - self.window_cols + 1)

    def local(self, index: int) -> int:
        """Raster index of patch ``index`` inside its window (= its position in the window's sequence)."""
        (row, col), (top, left) = divmod(index, self.cols), self.origin(index)
        return (row - top) * self.window_cols + (col - left)

    def member(self, origin: tuple[int, int], local: int) -> int:
        """Grid raster index of the window's ``local``-th patch."""
        row, col = divmod(local, self.window_cols)
        return (origin[0] + row) * self.cols + origin[1] + col

    def describe(self) -> str:
        """'native', '2-D prior' or 'sliding window over R x C patches' (R x C: the patches covering the latent)."""
        if self.mode == "sliding window":
            return f"sliding window over {self.visible[0]} x {self.visible[1]} patches"
        return self.mode


def decoding_plan(height: int, width: int, patch_size: int, native: tuple[int, int] | None) -> DecodingPlan:
    """The plan for a latent of height x width cells: ``native`` (patch rows, columns) of a 1-D
    position table, or None for 2-D positions (any grid, one window)."""
    rows, cols = -(-height // patch_size), -(-width // patch_size)
    if native is None:
        return DecodingPlan(height, width, patch_size, rows, cols, rows, cols, "2-D prior")
    mode = "native" if (height, width) == (native[0] * patch_size, native[1] * patch_size) else "sliding window"
    cols = max(cols, native[1])  # a narrower grid is widened: position = row * native columns + column
    return DecodingPlan(height, width, patch_size, rows, cols, min(rows, native[0]), native[1], mode)


def pad_eps(eps: torch.Tensor, plan: DecodingPlan) -> torch.Tensor:
    """eps [B, C, H, W] -> [B, C, rows*P, cols*P]: the cells beyond the latent are standard-normal draws
    seeded by a hash of the item's own eps (deterministic, the same for an item alone or in a batch).

    The padded cells are never seen, but the patches they belong to are the prefix of later ones:
    with fresh Gaussian draws such a patch is an ordinary sample of the prior (zeros would give it
    the variance of mu alone, a mirror copy of eps repeated structure).
    """
    batch, channels, height, width = eps.shape
    shape = (channels, plan.rows * plan.patch_size, plan.cols * plan.patch_size)
    if shape[1:] == (height, width):
        return eps
    items = []
    for item in eps:
        data = item.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "little")
        padded = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(eps)
        padded[:, :height, :width] = item
        items.append(padded)
    return torch.stack(items)
