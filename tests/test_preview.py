"""Tests for the PNG preview grids."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ntga import preview
from ntga.errors import UserInputError


def test_image_grid_places_upscaled_tiles():
    rng = np.random.default_rng(0)
    row0 = rng.integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    row1 = rng.integers(0, 256, (2, 4, 5, 1), dtype=np.uint8)
    grid = preview.image_grid([row0, row1], pad=2, scale=3)
    assert grid.dtype == np.uint8 and grid.shape == (2 * (12 + 2) + 2, 3 * (15 + 2) + 2, 3)
    tile = grid[2 + 14 : 2 + 14 + 12, 2 + 17 : 2 + 17 + 15]  # row 1, column 1
    np.testing.assert_array_equal(tile, np.repeat(row1[1].repeat(3, 0).repeat(3, 1), 3, axis=-1))
    np.testing.assert_array_equal(grid[2:14, 2:17], row0[0].repeat(3, 0).repeat(3, 1))
    assert np.all(grid[16:28, 2 + 34 : 2 + 34 + 15] == preview.BACKGROUND)  # short row leaves a blank tile
    assert np.all(grid[:2] == preview.BACKGROUND)


def test_image_grid_floats_and_default_scale():
    x = np.linspace(0, 1, 2 * 8 * 8).reshape(2, 8, 8, 1)
    grid = preview.image_grid([x], pad=0)
    assert grid.shape == (64, 128, 3)  # 8x8 digits are upscaled 8x
    assert grid[0, 0, 0] == 0 and grid[-1, -1, 0] == 255
    with pytest.raises(UserInputError, match="row 1 has images of"):
        preview.image_grid([x, np.zeros((1, 4, 4, 1))])
    with pytest.raises(UserInputError, match=r"C in \(1, 3\)"):
        preview.image_grid([np.zeros((1, 4, 4, 2))])


def test_amplify_difference_uses_the_full_range():
    clean = np.full((2, 3, 3, 1), 100, np.uint8)
    poison = clean.copy()
    poison[0, 0, 0, 0], poison[1, 1, 1, 0] = 104, 98
    diff, peak = preview.amplify_difference(clean, poison)
    assert peak == pytest.approx(4 / 255)
    assert diff[0, 0, 0, 0] == pytest.approx(1.0) and diff[1, 1, 1, 0] == pytest.approx(0.25)
    assert diff[0, 2, 2, 0] == pytest.approx(0.5)
    same, zero = preview.amplify_difference(clean, clean)
    assert zero == 0.0 and np.all(same == 0.5)


def test_pick_examples_is_per_class_and_capped():
    y = np.array([2, 0, 1, 0, 2, 0, 1])
    np.testing.assert_array_equal(preview.pick_examples(y, 2), [1, 3, 2, 6, 0, 4])
    np.testing.assert_array_equal(preview.pick_examples(y, 2, max_columns=4), [1, 3, 2, 6])
    np.testing.assert_array_equal(preview.pick_examples(np.arange(100) % 50, 1, max_columns=5), np.arange(5))


@pytest.mark.parametrize("c", [1, 3])
def test_save_preview_writes_a_labelled_png(tmp_path, c):
    rng = np.random.default_rng(1)
    clean = rng.integers(0, 256, (8, 8, 8, c), dtype=np.uint8)
    poison = np.clip(clean.astype(int) + rng.integers(-8, 9, clean.shape), 0, 255).astype(np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    path = preview.save_preview(tmp_path / "p.png", clean, poison, y, ["zero", "one", "two"], per_class=2, title="test")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        grid = np.asarray(im)
    # 6 tiles of 64 px plus padding, with room for labels on the left and top.
    assert grid.shape[1] > 6 * 64 and grid.shape[0] > 3 * 64
    assert np.any(grid[:, :40] < 128)  # some label text was drawn in the left margin
    with pytest.raises(UserInputError, match="differ in shape"):
        preview.save_preview(tmp_path / "q.png", clean, poison[:2], y, None)


def test_default_scale_reaches_the_minimum_tile():
    assert preview.default_scale(8, 8) == 8 and preview.default_scale(8, 8, 48) == 6
    assert preview.default_scale(5, 3, 48) == 10 and preview.default_scale(100, 20) == 1


def test_fit_text_truncates_with_an_ellipsis():
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font = preview.label_font(12)
    assert preview.fit_text(draw, "zero", font, 200) == "zero"
    short = preview.fit_text(draw, "a-much-longer-class-name", font, 60)
    assert short.endswith("…") and "a-much-longer-class-name".startswith(short[:-1])
    assert preview.text_width(draw, short, font) <= 60
    assert preview.fit_text(draw, "zero", font, 1) == ""


def test_draw_row_labels_centres_each_label_on_its_row():
    canvas = Image.new("RGB", (60, 2 + 2 * (40 + 2)), (255, 255, 255))
    preview.draw_row_labels(ImageDraw.Draw(canvas), ["Ag", "one"], preview.label_font(12), top=0, tile_h=40, pad=2)
    ink = np.flatnonzero(np.any(np.asarray(canvas)[..., 0] < 128, axis=1))
    first, second = ink[ink < 42], ink[ink >= 42]
    assert first.size and second.size
    assert abs((first.min() + first.max()) / 2 - (2 + 20)) <= 1.5  # centre of row 0's tiles
    assert abs((second.min() + second.max()) / 2 - (2 + 42 + 20)) <= 1.5


def test_save_png_replaces_atomically_and_cleans_up(tmp_path):
    path = tmp_path / "p.png"
    assert preview.save_png(Image.new("RGB", (3, 2), (1, 2, 3)), path) == path
    preview.save_png(Image.new("RGB", (4, 2), (9, 9, 9)), path)
    with Image.open(path) as im:
        assert im.size == (4, 2) and im.getpixel((0, 0)) == (9, 9, 9)
    with pytest.raises(OSError):
        preview.save_png(Image.new("CMYK", (2, 2)), path)  # PNG cannot hold CMYK
    with Image.open(path) as im:
        assert im.size == (4, 2)  # the old file survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]  # no temporary file left behind
