"""Seeing a noise: a fixed colour mapping to an IMAGE, and per-channel statistics as text.

Colour mapping (fixed, never re-normalised per call, so a smaller std looks greyer): latent
channel c feeds colour c mod 3 (R, G, B, R, ...); each colour is the sum of its channels divided by
the square root of their count, so unit-variance noise gives each colour unit variance. A pixel is
0.5 + colour / 6, clipped to [0, 1]: unit noise spans the full range (+-3 std), noise of std 0.5
(NoiseAR's default temperature) stays between about 0.25 and 0.75. Each latent cell becomes a
ZOOM x ZOOM block of pixels, fewer where the picture would pass MAX_SIDE pixels (1 for pixel-space latents of
1024 px). A video latent [B, C, T, H, W] shows its frames side by side, first frame on the left.
"""

from __future__ import annotations

import torch

COLOURS = 3
SPAN = 6.0  # std units mapped onto the [0, 1] pixel range
ZOOM = 4
MAX_SIDE = 1024  # pixels: the zoom is lowered (to 1 at least) to keep the picture's longer side within it


def colour_matrix(channels: int) -> torch.Tensor:
    """[3, channels]: row k sums the channels c with c % 3 == k, scaled by 1/sqrt(their count)."""
    matrix = torch.zeros(COLOURS, channels)
    for c in range(channels):
        matrix[c % COLOURS, c] = 1.0
    counts = matrix.sum(dim=1, keepdim=True).clamp_min(1.0)
    return matrix / counts.sqrt()


def noise_to_image(noise: torch.Tensor, zoom: int | None = None) -> torch.Tensor:
    """[B, C, H, W] noise -> ComfyUI IMAGE [B, H*zoom, W*zoom, 3], fp32 in [0, 1] on the CPU; [B, C, T, H, W] ->
    [B, H*zoom, T*W*zoom, 3] (frames side by side). ``zoom`` defaults to ZOOM within MAX_SIDE."""
    noise = noise.detach().to("cpu", torch.float32)
    if noise.ndim == 5:
        noise = noise.permute(0, 1, 3, 2, 4).flatten(3)  # [B, C, H, T*W]
    if zoom is None:
        zoom = max(1, min(ZOOM, MAX_SIDE // max(noise.shape[2:])))
    colours = torch.einsum("kc,bchw->bhwk", colour_matrix(noise.shape[1]), noise)
    image = (0.5 + colours / SPAN).clamp(0.0, 1.0)
    return image.repeat_interleave(zoom, dim=1).repeat_interleave(zoom, dim=2)


def channel_stats(noise: torch.Tensor) -> str:
    """Per-channel mean and std over the batch and all positions, plus the whole noise, one line each."""
    noise = noise.detach().to("cpu", torch.float32)
    per_channel = noise.transpose(0, 1).flatten(1)  # [C, B*H*W]
    lines = [f"noise {list(noise.shape)}: mean {noise.mean().item():+.4f}  std {noise.std().item():.4f}"]
    lines += [
        f"  channel {c}: mean {values.mean().item():+.4f}  std {values.std().item():.4f}" for c, values in enumerate(per_channel)
    ]
    return "\n".join(lines)
