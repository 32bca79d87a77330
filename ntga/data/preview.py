"""A PNG contact sheet: a few images per class, one labelled row per class.

Tiles, labels and the atomic write come from :mod:`ntga.preview`, which also
draws the poison previews; this module only decides what goes in which row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ntga.errors import UserInputError
from ntga.preview import BACKGROUND, default_scale, draw_row_labels, image_grid, label_font, save_png, text_width

_GAP = 2
_MIN_TILE = 48  # small images (8x8 digits) are upscaled (nearest) to stay legible
_FONT_PX = 10


def grid_rows(labels: np.ndarray, num_classes: int, per_class: int) -> list[np.ndarray]:
    """For each class, the positions of its first ``per_class`` examples in ``labels``."""
    return [np.flatnonzero(labels == k)[:per_class] for k in range(num_classes)]


def write_preview(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: tuple[str, ...],
    path: str | Path,
    per_class: int = 8,
    max_classes: int = 20,
) -> Path:
    """Writes a labelled grid of ``per_class`` images for each class to a PNG.

    Args:
      images: uint8 ``[n, H, W, C]``.
      labels: int ``[n]`` in ``[0, len(class_names))``.
      class_names: row labels.
      path: output ``.png``; its folder must exist. Written atomically.
      per_class: columns.
      max_classes: rows; only the first classes are shown for larger label sets.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise UserInputError(f"--preview {path}: folder {path.parent} does not exist")
    if per_class < 1:
        raise UserInputError(f"--per-class must be a positive integer, got {per_class}")
    names = tuple(class_names[:max_classes])
    h, w = images.shape[1:3]
    scale = default_scale(h, w, _MIN_TILE)
    grid = image_grid([images[picks] for picks in grid_rows(labels, len(names), per_class)], pad=_GAP, scale=scale)
    font = label_font(_FONT_PX)
    label_w = 8 + max(text_width(ImageDraw.Draw(Image.new("L", (1, 1))), n, font) for n in names)
    # Always per_class columns wide, even when no class has that many examples.
    sheet = Image.new("RGB", (label_w + per_class * (w * scale + _GAP) + _GAP, grid.shape[0]), (BACKGROUND,) * 3)
    sheet.paste(Image.fromarray(grid), (label_w, 0))
    draw_row_labels(ImageDraw.Draw(sheet), names, font, top=0, tile_h=h * scale, pad=_GAP)
    return save_png(sheet, path)
