"""NoiseAR Compare Grid: a batch of images as one labelled picture, a row per noise and a column per image, so
that noises can be judged by eye (the A/B workflows). The drawing is the library's `labelled_grid`."""

from __future__ import annotations

import numpy as np
import torch

from noisear.figures import labelled_grid

from .widgets import NoiseARNodeError

NODE = "NoiseAR Compare Grid"


def grid_spacing(cell: int) -> tuple[int, int]:
    """(font size, padding) in px for tiles ``cell`` px high: labels stay readable next to large images."""
    font_size = max(14, cell // 20)
    return font_size, max(4, font_size // 3)


def labels(text: str) -> list[str]:
    """One label per line; blank lines before the first and after the last are dropped."""
    return text.strip("\n").splitlines() if text.strip() else []


def compare_grid(images: torch.Tensor, row_labels: str, column_labels: str) -> torch.Tensor:
    """ComfyUI IMAGE [B, H, W, C] in [0, 1], row after row (B = rows x columns, rows = the lines of
    ``row_labels``) -> one IMAGE [1, H', W', 3]: each row's name on its left, the column names on top."""
    rows, columns = labels(row_labels), labels(column_labels)
    if not rows:
        raise NoiseARNodeError(f"{NODE}: row_labels is empty; write one label per line, one line per row of images")
    count = images.shape[0]
    if count % len(rows):
        raise NoiseARNodeError(
            f"{NODE}: {count} images do not split into {len(rows)} rows ({len(rows)} lines in row_labels); give one "
            "line per row and join the rows' images in order (LatentBatch or ImageBatch, first row first)"
        )
    per_row = count // len(rows)
    if columns and len(columns) != per_row:
        raise NoiseARNodeError(
            f"{NODE}: {len(columns)} column labels for rows of {per_row} images ({count} images in {len(rows)} rows); "
            "give one line per column, or none"
        )
    if not torch.isfinite(images).all():
        raise NoiseARNodeError(f"{NODE}: the images hold NaN or inf values (the sampler or the VAE diverged)")
    tiles = images[..., :3].permute(0, 3, 1, 2)  # [B, C, H, W] for labelled_grid
    font_size, padding = grid_spacing(images.shape[1])
    grid = labelled_grid(
        [(name, tiles[r * per_row : (r + 1) * per_row]) for r, name in enumerate(rows)],
        columns=columns or None,
        cell=images.shape[1],
        padding=padding,
        font_size=font_size,
    )
    return torch.from_numpy(np.asarray(grid, dtype=np.float32) / 255.0).unsqueeze(0)
