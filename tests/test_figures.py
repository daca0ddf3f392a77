"""Figures: the labelled grid puts each image, enlarged pixel for pixel, in its row and column with the row's
name written beside it; the comparison plot is a PNG, or nothing (with a note) when matplotlib is absent."""

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from noisear.figures import Comparison, comparison_plot, labelled_grid

CELL, PAD = 12, 4  # tiles of 12 px from 3x3 images: each pixel becomes a 4x4 block


def tile_at(canvas: Image.Image, rows: int, columns: int, r: int, c: int) -> np.ndarray:
    """Tile (r, c), located from the bottom-right corner: tiles and their padding end the picture."""
    pixels = np.asarray(canvas)
    top = canvas.height - (rows - r) * (CELL + PAD)
    left = canvas.width - (columns - c) * (CELL + PAD)
    return pixels[top : top + CELL, left : left + CELL]


def test_every_image_is_in_its_cell_enlarged_pixel_for_pixel():
    images = torch.rand(3, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    grey = torch.rand(3, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    canvas = labelled_grid([("colour", images), ("grey", grey)], cell=CELL, padding=PAD)
    for r, row in enumerate([images, grey.expand(-1, 3, -1, -1)]):
        for c, image in enumerate(row):
            expected = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8).repeat(4, 0).repeat(4, 1)
            np.testing.assert_array_equal(tile_at(canvas, 2, 3, r, c), expected)


def test_each_row_name_is_written_left_of_its_row():
    images = torch.zeros(2, 1, 3, 3)
    canvas = labelled_grid([("Gaussian", images), ("", images)], cell=CELL, padding=PAD)
    pixels = np.asarray(canvas.convert("L"))
    label_width = canvas.width - 2 * (CELL + PAD)
    bands = [
        pixels[canvas.height - (2 - r) * (CELL + PAD) : canvas.height - (2 - r) * (CELL + PAD) + CELL, :label_width]
        for r in range(2)
    ]
    assert (bands[0] < 128).sum() > 10  # ink where the name is
    assert (bands[1] == 255).all()  # an empty name leaves the margin blank


def test_column_names_and_title_add_lines_above_the_rows():
    rows = [("a", torch.zeros(3, 1, 3, 3))]
    plain = labelled_grid(rows, cell=CELL, padding=PAD)
    named = labelled_grid(rows, columns=["0", "1", "2"], title="seed 1", cell=CELL, padding=PAD)
    assert named.height > plain.height and named.width == plain.width
    above = np.asarray(named.convert("L"))[: named.height - (CELL + PAD), named.width - 3 * (CELL + PAD) :]
    assert (above < 128).any()


def test_bad_image_shapes_are_refused_with_the_expected_shape():
    with pytest.raises(ValueError, match=r"\[N, 1 or 3, H, W\]"):
        labelled_grid([("x", torch.zeros(2, 4, 3, 3))])
    with pytest.raises(ValueError, match="at least one row"):
        labelled_grid([])


PANELS = {
    "FD": [Comparison("Gaussian", 17.4, 1.1), Comparison("NoiseAR T=1", 14.8, 1.0, 14.7, 0.7)],
    "alignment": [Comparison("Gaussian", 0.94, 0.02), Comparison("NoiseAR T=1", 0.96, 0.01, 0.97, 0.01)],
}


def test_comparison_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = comparison_plot(tmp_path / "plot.png", PANELS, lower_is_better=["FD"], title="t", note="3 seeds")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > image.height > 100


def test_comparison_plot_without_matplotlib_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import now raises ImportError
    assert comparison_plot(tmp_path / "plot.png", PANELS) is None
    assert not (tmp_path / "plot.png").exists()
