"""NoiseAR Compare Grid: a batch of IMAGEs, row after row, becomes one labelled IMAGE with every image unchanged in
its cell; labels that do not fit the batch are refused saying what to give."""

import numpy as np
import pytest
import torch

from nodes.compare_grid import compare_grid, grid_spacing
from nodes.definitions import NODE_CLASS_MAPPINGS
from nodes.widgets import NoiseARNodeError

H, W = 24, 32  # wider than high, as a 1216 x 832 image


def batch(count: int) -> torch.Tensor:
    """ComfyUI IMAGE [count, H, W, 3], values on the 8-bit grid so that the grid keeps them exactly."""
    return torch.randint(0, 256, (count, H, W, 3), generator=torch.Generator().manual_seed(count)).float() / 255


def cell(grid: torch.Tensor, rows: int, columns: int, r: int, c: int) -> torch.Tensor:
    """Cell (r, c) of a grid [1, H', W', 3], located from the bottom-right corner (cells and padding end it)."""
    _, padding = grid_spacing(H)
    top = grid.shape[1] - (rows - r) * (H + padding)
    left = grid.shape[2] - (columns - c) * (W + padding)
    return grid[0, top : top + H, left : left + W]


def test_each_image_lands_unchanged_in_its_row_and_column():
    images = batch(6)
    grid = compare_grid(images, "KSampler\nNoiseAR KSampler", "seed 1\nseed 2\nseed 3")
    font_size, padding = grid_spacing(H)
    assert grid.shape[0] == 1 and grid.shape[3] == 3
    assert grid.shape[1] == padding + font_size + padding + 2 * (H + padding)  # column labels, then two rows
    for r in range(2):
        for c in range(3):
            torch.testing.assert_close(cell(grid, 2, 3, r, c), images[3 * r + c], rtol=0, atol=0)


def test_labels_are_drawn_left_of_the_rows_and_above_the_columns():
    images = torch.ones(4, H, W, 3)  # white cells: any dark pixel is ink
    grid = compare_grid(images, "Gaussian\nNoiseAR", "a\nb")
    ink = grid[0].mean(dim=-1).numpy() < 0.5
    _, padding = grid_spacing(H)
    margin = grid.shape[2] - 2 * (W + padding)
    header = grid.shape[1] - 2 * (H + padding)
    assert margin > 0 and ink[header:, :margin].sum() > 20  # row names
    assert ink[:header, margin:].sum() > 5  # column names


def test_without_column_labels_the_grid_has_no_header():
    images = batch(4)
    grid = compare_grid(images, "one row", "")
    _, padding = grid_spacing(H)
    assert grid.shape[1] == padding + H + padding
    torch.testing.assert_close(cell(grid, 1, 4, 0, 3), images[3], rtol=0, atol=0)


def test_large_images_get_larger_labels():
    assert grid_spacing(24) == (14, 4) and grid_spacing(1024) == (51, 17)


@pytest.mark.parametrize(
    "count, rows, columns, message",
    [
        (6, "", "", "row_labels is empty"),
        (6, "\n \n", "", "row_labels is empty"),
        (6, "a\nb\nc\nd", "", "6 images do not split into 4 rows"),
        (6, "a\nb", "x\ny", "2 column labels for rows of 3 images"),
    ],
)
def test_labels_that_do_not_fit_the_batch_are_refused(count, rows, columns, message):
    with pytest.raises(NoiseARNodeError, match=message):
        compare_grid(batch(count), rows, columns)


def test_non_finite_images_are_refused():
    images = batch(2)
    images[1, 0, 0, 0] = float("nan")
    with pytest.raises(NoiseARNodeError, match="NaN or inf"):
        compare_grid(images, "a", "")


def test_the_node_takes_an_alpha_channel_and_returns_one_rgb_image():
    node = NODE_CLASS_MAPPINGS["NoiseARCompareGrid"]()
    rgba = torch.cat([batch(2), torch.zeros(2, H, W, 1)], dim=-1)
    (grid,) = node.grid(rgba, "a\nb", "")
    assert grid.shape[0] == 1 and grid.shape[3] == 3
    np.testing.assert_array_equal(cell(grid, 2, 1, 1, 0).numpy(), rgba[1, ..., :3].numpy())
