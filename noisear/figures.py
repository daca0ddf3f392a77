"""Figures of an evaluation (the output side of noisear.train.evaluate, used by ``noisear eval`` and the toy
demo): a labelled image grid (Pillow) and a plot of each source against its variance-matched Gaussian with
error bars (matplotlib, the optional ``[plot]`` extra).

Both are generic: the grid takes rows of (name, images), the plot takes per-metric lists of
:class:`Comparison` (a source's mean and std over seeds, and those of its matched control).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

PLOT_SKIPPED = "plot skipped: matplotlib is not installed (pip install matplotlib, or pip install 'comfyui-noisear[plot]')"
INK, PAPER = (20, 20, 20), (255, 255, 255)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (a bitmap one without FreeType)


def _tile(image: torch.Tensor, cell: int) -> Image.Image:
    """[C,h,w] in [0,1] (C 1 or 3) -> RGB tile of height ``cell`` (nearest when enlarging: pixels stay crisp)."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"grid images must be [N, 1 or 3, H, W], got an item of shape {list(image.shape)}")
    pixels = (image.detach().float().cpu().clamp(0, 1).expand(3, -1, -1).permute(1, 2, 0).numpy() * 255).round()
    tile = Image.fromarray(pixels.astype(np.uint8), "RGB")
    width = max(1, round(tile.width * cell / tile.height))
    return tile.resize((width, cell), Image.Resampling.NEAREST if cell >= tile.height else Image.Resampling.LANCZOS)


def labelled_grid(
    rows: Sequence[tuple[str, torch.Tensor]],
    columns: Sequence[str] | None = None,
    cell: int = 48,
    padding: int = 4,
    title: str | None = None,
    font_size: int = 14,
) -> Image.Image:
    """One row per (name, images [N,C,h,w] in [0,1]) with its name written on the left; optional column
    names on top and a title. Rows may hold different numbers of images; every tile is ``cell`` px high."""
    if not rows:
        raise ValueError("labelled_grid needs at least one row")
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max(probe.textlength(name, font=font) for name, _ in rows)
    tiles = [[_tile(image, cell) for image in images] for _, images in rows]
    tile_width = max(tile.width for row in tiles for tile in row)
    columns_used = max(len(row) for row in tiles)
    left = int(text_width) + 3 * padding
    top = padding + (font_size + padding if title else 0) + (font_size + padding if columns else 0)
    width = left + columns_used * (tile_width + padding)
    height = top + len(rows) * (cell + padding)
    canvas = Image.new("RGB", (width, height), PAPER)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((padding, padding), title, fill=INK, font=font)
    if columns:
        for c, name in enumerate(columns[:columns_used]):
            centre = left + c * (tile_width + padding) + tile_width / 2
            draw.text((centre, top - padding), name, fill=INK, font=font, anchor="mb")
    for r, ((name, _), row) in enumerate(zip(rows, tiles)):
        y = top + r * (cell + padding)
        draw.text((left - 2 * padding, y + cell / 2), name, fill=INK, font=font, anchor="rm")
        for c, tile in enumerate(row):
            canvas.paste(tile, (left + c * (tile_width + padding), y))
    return canvas


@dataclass(frozen=True)
class Comparison:
    """One source on one metric: mean and std over seeds, and the same for its variance-matched Gaussian
    (None for a source without a control, e.g. the Gaussian baseline itself)."""

    source: str
    mean: float
    std: float
    matched_mean: float | None = None
    matched_std: float | None = None


def comparison_plot(
    path: str | Path,
    panels: dict[str, Sequence[Comparison]],
    lower_is_better: Sequence[str] = (),
    title: str = "",
    note: str = "",
) -> Path | None:
    """Write a PNG with one panel per metric: each source (filled dot) and its matched Gaussian (open
    square) as mean +- std error bars, joined by a line. Returns the path, or None (nothing written) when
    matplotlib is not installed: the caller then reports :data:`PLOT_SKIPPED`."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError:
        return None
    sources = list(dict.fromkeys(c.source for comparisons in panels.values() for c in comparisons))
    y = {name: len(sources) - 1 - i for i, name in enumerate(sources)}
    figure = Figure(figsize=(3.2 + 3.4 * len(panels), 0.9 + 0.36 * len(sources)), layout="constrained")
    axes = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (metric, comparisons) in zip(axes, panels.items()):
        for c in comparisons:  # the control a little below its source, so that equal values stay visible
            if c.matched_mean is not None:
                ax.plot([c.matched_mean, c.mean], [y[c.source] - 0.15, y[c.source] + 0.15], color="0.75", lw=1, zorder=1)
                ax.errorbar(
                    c.matched_mean,
                    y[c.source] - 0.15,
                    xerr=c.matched_std or 0,
                    fmt="s",
                    mfc="white",
                    mec="0.35",
                    ecolor="0.35",
                    ms=5,
                    capsize=2,
                    zorder=2,
                )
            ax.errorbar(
                c.mean,
                y[c.source] + (0.15 if c.matched_mean is not None else 0),
                xerr=c.std,
                fmt="o",
                color="tab:blue",
                ms=5,
                capsize=2,
                zorder=3,
            )
        ax.set_title(f"{metric} ({'lower' if metric in lower_is_better else 'higher'} is better)", fontsize=10)
        ax.grid(axis="x", color="0.92")
        ax.tick_params(labelsize=8)
    axes[0].set_yticks(range(len(sources)), list(reversed(sources)))
    axes[0].set_ylim(-0.7, len(sources) - 0.3)
    legend = [
        Line2D([], [], marker="o", ls="", color="tab:blue", label="source"),
        Line2D([], [], marker="s", ls="", mfc="white", mec="0.35", label="Gaussian scaled to the source's std"),
    ]
    figure.legend(handles=legend, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    if title or note:
        figure.suptitle("\n".join(filter(None, [title, note])), fontsize=9)
    path = Path(path)
    figure.savefig(path, dpi=120)
    return path
