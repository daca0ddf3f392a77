"""Noise tensor <-> sequence of patch tokens in raster order, and the decoding plan of a latent size.

Images are [B, C, H, W] and cut into P x P patches (the published layout); videos are [B, C, T, H, W] and cut
into Pt x P x P space-time patches. Raster order: frames outer, then patch rows, then patch columns.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Iterator

import torch
from einops import rearrange


def patchify(noise: torch.Tensor, patch_size: int, patch_frames: int = 1) -> torch.Tensor:
    """[B, C, H, W] -> [B, M, C*P*P] (a token flattens (c, y, x)); [B, C, T, H, W] -> [B, M, C*Pt*P*P]
    (a token flattens (c, t, y, x))."""
    if noise.ndim == 4:
        return rearrange(noise, "b c (gh p) (gw q) -> b (gh gw) (c p q)", p=patch_size, q=patch_size)
    return rearrange(noise, "b c (gt f) (gh p) (gw q) -> b (gt gh gw) (c f p q)", f=patch_frames, p=patch_size, q=patch_size)


def unpatchify(tokens: torch.Tensor, patch: tuple[int, ...], size: tuple[int, ...]) -> torch.Tensor:
    """[B, M, K] -> [B, C, *size], the inverse of :func:`patchify`; ``patch`` and ``size`` per axis
    ((P, P) and (H, W), or (Pt, P, P) and (T, H, W)), each size a multiple of its patch."""
    grid = [s // p for s, p in zip(size, patch)]
    if len(size) == 2:
        return rearrange(tokens, "b (gh gw) (c p q) -> b c (gh p) (gw q)", gh=grid[0], gw=grid[1], p=patch[0], q=patch[1])
    return rearrange(
        tokens,
        "b (gt gh gw) (c f p q) -> b c (gt f) (gh p) (gw q)",
        gt=grid[0],
        gh=grid[1],
        gw=grid[2],
        f=patch[0],
        p=patch[1],
        q=patch[2],
    )


def whole_patches(size: tuple[int, ...], patch: tuple[int, ...]) -> tuple[int, ...]:
    """The top-left part of ``size`` that is whole patches: per axis of the last ``len(patch)`` ones, the side
    rounded down to a multiple of its patch (``size`` (H, W) or (T, H, W), or with channels in front, kept as they
    are); ``patch`` () keeps ``size``. What training reads of a latent the sampler pads up (:func:`pad_eps`)."""
    kept = len(size) - len(patch)
    return (*size[:kept], *(n // p * p for n, p in zip(size[kept:], patch)))


def top_left(noise: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """noise [..., *S] -> [..., *size]: the first ``size[i]`` entries of each of its last ``len(size)`` axes."""
    return noise[(..., *(slice(0, n) for n in size))]


def _ravel(coords: tuple[int, ...], shape: tuple[int, ...]) -> int:
    index = 0
    for coord, extent in zip(coords, shape):
        index = index * extent + coord
    return index


def _unravel(index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    coords = []
    for extent in reversed(shape):
        index, coord = divmod(index, extent)
        coords.append(coord)
    return tuple(reversed(coords))


@dataclass(frozen=True)
class Step:
    """One decoded patch: its grid raster ``index``, the ``origin`` of the window that predicts it (the
    decoder it uses), the window positions ``new`` fed to that decoder now (its cache holds those before),
    and the decoders ``dropped`` before this step (never used again in this order of work)."""

    index: int
    origin: tuple[int, ...]
    new: range
    dropped: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class DecodingPlan:
    """How a latent of ``size`` cells per axis ((H, W), or (T, H, W) for video) is decoded, patch by patch.

    The decoded ``grid`` (patches per axis) is the latent padded up to whole ``patch``es and, for a
    published 1-D position table, widened to at least the native window so that every patch keeps its
    native position (see `NoiseAR.sample`). Patch ``k`` (raster index in that grid) is predicted from the
    ``window`` (patches per axis) anchored as far back on every axis as possible that contains it, given
    that window's earlier patches. When the window covers the grid, the grid is one sequence. Only
    ``patches`` are decoded: nothing after the last visible patch is needed.
    """

    size: tuple[int, ...]  # latent cells per axis
    patch: tuple[int, ...]  # cells per patch, per axis
    grid: tuple[int, ...]  # decoded grid, whole patches per axis
    window: tuple[int, ...]  # patches per axis of one window
    mode: str  # "native", "sliding window", "2-D prior" or "video prior" (one sequence)

    @property
    def height(self) -> int:
        return self.size[-2]

    @property
    def width(self) -> int:
        return self.size[-1]

    @property
    def frames(self) -> int:
        """Latent frames (1 for an image)."""
        return self.size[0] if len(self.size) == 3 else 1

    @property
    def patch_size(self) -> int:
        return self.patch[-1]

    @property
    def rows(self) -> int:
        return self.grid[-2]

    @property
    def cols(self) -> int:
        return self.grid[-1]

    @property
    def padded_size(self) -> tuple[int, ...]:
        """Cells per axis of the decoded grid."""
        return tuple(g * p for g, p in zip(self.grid, self.patch))

    @property
    def visible(self) -> tuple[int, ...]:
        """Patches per axis that hold visible cells."""
        return tuple(-(-s // p) for s, p in zip(self.size, self.patch))

    @property
    def patches(self) -> int:
        """Patches decoded: raster indices 0 .. the last visible patch."""
        return _ravel(tuple(v - 1 for v in self.visible), self.grid) + 1

    @property
    def window_length(self) -> int:
        return math.prod(self.window)

    def origin(self, index: int) -> tuple[int, ...]:
        """Per axis, the first patch of the window that predicts patch ``index``."""
        return tuple(max(0, c - w + 1) for c, w in zip(_unravel(index, self.grid), self.window))

    def local(self, index: int) -> int:
        """Raster index of patch ``index`` inside its window (= its position in the window's sequence)."""
        coords, origin = _unravel(index, self.grid), self.origin(index)
        return _ravel(tuple(c - o for c, o in zip(coords, origin)), self.window)

    def member(self, origin: tuple[int, ...], local: int) -> int:
        """Grid raster index of the window's ``local``-th patch."""
        return _ravel(tuple(o + c for o, c in zip(origin, _unravel(local, self.window))), self.grid)

    def schedule(self) -> Iterator[Step]:
        """The order of work of cached decoding, the one place that decides it (the sampler and the cost
        estimate both follow it): a decoder per window origin; one that a later patch may still use is kept,
        one whose origin differs on any axis but the last from the current patch's is dropped."""
        positions: dict[tuple[int, ...], int] = {}  # live decoders: origin -> positions in its cache
        prefix: tuple[int, ...] | None = None  # the origin's axes but the last, shared by every live decoder
        for index in range(self.patches):
            origin, local = self.origin(index), self.local(index)
            dropped: tuple[tuple[int, ...], ...] = ()
            if origin[:-1] != prefix:  # every live decoder has the old prefix: drop them all at once
                dropped, prefix = tuple(positions), origin[:-1]
                positions.clear()
            start = positions.get(origin, 0)
            positions[origin] = local + 1
            yield Step(index, origin, range(start, local + 1), dropped)

    def describe(self) -> str:
        """'native', '2-D prior', 'video prior' or 'sliding window over R x C patches' (the patches covering
        the latent, T x R x C for a video)."""
        if self.mode == "sliding window":
            return f"sliding window over {' x '.join(map(str, self.visible))} patches"
        return self.mode


def decoding_plan(
    size: tuple[int, ...], patch: tuple[int, ...], native: tuple[int, int] | None, window: tuple[int, ...] | None = None
) -> DecodingPlan:
    """The plan for a latent of ``size`` cells per axis cut into ``patch``es.

    ``native``: (patch rows, columns) of a published 1-D position table, whose window is always the
    native grid (a narrower grid is widened). Otherwise (2-D and video positions) ``window`` bounds the
    patches per axis of one sequence (None or 0 on an axis: unbounded); a grid within it is one sequence.
    """
    grid = tuple(-(-s // p) for s, p in zip(size, patch))
    if native is not None:
        native_size = (native[0] * patch[0], native[1] * patch[1])
        mode = "native" if tuple(size) == native_size else "sliding window"
        rows, cols = grid[0], max(grid[1], native[1])  # a narrower grid is widened: position = row * native cols + col
        return DecodingPlan(tuple(size), tuple(patch), (rows, cols), (min(rows, native[0]), native[1]), mode)
    window = tuple(g if not w else min(g, w) for g, w in zip(grid, window or (0,) * len(grid)))
    mode = "sliding window" if window != grid else ("video prior" if len(grid) == 3 else "2-D prior")
    return DecodingPlan(tuple(size), tuple(patch), grid, window, mode)


def pad_eps(eps: torch.Tensor, plan: DecodingPlan) -> torch.Tensor:
    """eps [B, C, *size] -> [B, C, *padded_size]: the cells beyond the latent are standard-normal draws
    seeded by a hash of the item's own eps (deterministic, the same for an item alone or in a batch).

    The padded cells are never seen, but the patches they belong to are the prefix of later ones:
    with fresh Gaussian draws such a patch is an ordinary sample of the prior (zeros would give it
    the variance of mu alone, a mirror copy of eps repeated structure). Padding is drawn in fp32 whatever
    eps's dtype (at least fp32), so fp16 eps give the same noise as the same values in fp32.
    """
    channels, size = eps.shape[1], tuple(eps.shape[2:])
    shape = (channels, *plan.padded_size)
    if shape[1:] == size:
        return eps
    dtype, items = torch.promote_types(eps.dtype, torch.float32), []  # fp16/bf16 eps are padded in fp32
    for item in eps:
        data = item.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "little")
        padded = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(eps.device, dtype)
        padded[(slice(None), *(slice(0, s) for s in size))] = item
        items.append(padded)
    return torch.stack(items)
