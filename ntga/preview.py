"""PNG preview grids: clean images, their protected versions and the perturbation.

A data owner looks at ``preview.png`` to judge whether the protection is
visible; a researcher looks at the amplified difference to see its structure
(NTGA's perturbations are low-frequency, EM's are high-frequency). The grid is
built with numpy and labelled with Pillow's default font, so nothing here
needs a plotting library.

The building blocks (:func:`image_grid` for upscaled tiles, :func:`label_font`,
:func:`text_width`, :func:`fit_text`, :func:`draw_row_labels` for text and
:func:`save_png` for the atomic write) also draw the per-class contact sheet of
``python -m ntga.data --preview`` (:mod:`ntga.data.preview`).
"""

from __future__ import annotations

import math
import os
import secrets
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ntga.errors import UserInputError
from ntga.pixels import as_float, to_uint8

# Tiles are upscaled (nearest neighbour) until they are at least this many
# pixels on a side, so 8x8 digits are viewable without resampling blur.
MIN_TILE_PX = 64
# At most this many columns (images per row): ImageNet has 1000 classes and a
# preview with 2000 columns is useless.
MAX_COLUMNS = 20
BACKGROUND = 255
TEXT = (0, 0, 0)


def _as_uint8(images: np.ndarray, what: str) -> np.ndarray:
    """[n, H, W, C] uint8 or float in [0, 1] -> uint8 [n, H, W, 3]."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise UserInputError(f"{what}: expected images of shape [n, H, W, C] with C in (1, 3), got {images.shape}")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.floating):
            raise UserInputError(f"{what}: expected uint8 or float images in [0, 1], got dtype {images.dtype}")
        # Previews are for looking at: clip rather than refuse slightly out-of-range floats.
        images = to_uint8(np.nan_to_num(images))
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return images


def default_scale(height: int, width: int, min_tile: int = MIN_TILE_PX) -> int:
    """The integer upscale factor that makes a tile at least ``min_tile`` pixels on its longer side."""
    return max(1, math.ceil(min_tile / max(height, width, 1)))


def image_grid(rows: Sequence[np.ndarray], *, pad: int = 1, scale: int | None = None) -> np.ndarray:
    """Tiles rows of images into one RGB image.

    Args:
      rows: each an array [n_r, H, W, C] (uint8, or float in [0, 1]); C in (1, 3).
        All rows share H and W; rows may have different lengths (short rows
        leave blank tiles on the right).
      pad: background pixels between tiles and around the border (output pixels).
      scale: integer nearest-neighbour upscale factor; default: just enough for
        tiles of at least ``MIN_TILE_PX`` pixels.

    Returns:
      uint8 [rows * (H*scale + pad) + pad, cols * (W*scale + pad) + pad, 3] on a white background.
    """
    if not rows:
        raise UserInputError("image_grid: need at least one row of images")
    if pad < 0:
        raise UserInputError(f"image_grid: pad must be >= 0, got {pad}")
    converted = [_as_uint8(r, f"image_grid row {i}") for i, r in enumerate(rows)]
    height, width = converted[0].shape[1:3]
    for i, r in enumerate(converted):
        if r.shape[1:3] != (height, width):
            raise UserInputError(f"image_grid: row {i} has images of {r.shape[1:3]}, row 0 has {(height, width)}")
    scale = default_scale(height, width) if scale is None else int(scale)
    if scale < 1:
        raise UserInputError(f"image_grid: scale must be a positive integer, got {scale}")
    tile_h, tile_w = height * scale, width * scale
    cols = max(1, max(r.shape[0] for r in converted))
    grid = np.full((len(rows) * (tile_h + pad) + pad, cols * (tile_w + pad) + pad, 3), BACKGROUND, np.uint8)
    for i, r in enumerate(converted):
        if r.shape[0] == 0:
            continue
        big = r.repeat(scale, axis=1).repeat(scale, axis=2)  # nearest neighbour
        top = pad + i * (tile_h + pad)
        for j in range(r.shape[0]):  # a few dozen tiles at most: the loop is not a hot path
            left = pad + j * (tile_w + pad)
            grid[top : top + tile_h, left : left + tile_w] = big[j]
    return grid


def amplify_difference(x_clean: np.ndarray, x_poison: np.ndarray) -> tuple[np.ndarray, float]:
    """Maps the signed perturbation to [0, 1] around mid-grey, stretched to the full range.

    Returns ``(0.5 + delta / (2 * max|delta|), max|delta|)`` with delta in [0, 1] pixel
    units, so grey means unchanged, white/black the largest increase/decrease
    (the preview draws this scale under the row's label, in /255 units).
    One maximum over all shown images keeps their magnitudes comparable.
    """
    clean = as_float(np.asarray(x_clean), np.float64, clip=False)
    delta = as_float(np.asarray(x_poison), np.float64, clip=False) - clean
    peak = float(np.max(np.abs(delta))) if delta.size else 0.0
    if peak == 0.0:
        return np.full_like(delta, 0.5), 0.0
    return 0.5 + delta / (2.0 * peak), peak


def pick_examples(y: np.ndarray, per_class: int, max_columns: int = MAX_COLUMNS) -> np.ndarray:
    """Indices of the first ``per_class`` examples of each class, classes in ascending order.

    Stops adding classes once ``max_columns`` indices are taken (whole classes only,
    but always at least one class). Deterministic, so previews are reproducible.
    """
    y = np.asarray(y)
    chosen: list[int] = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)[:per_class]
        if chosen and len(chosen) + len(members) > max_columns:
            break
        chosen.extend(int(i) for i in members)
    return np.asarray(chosen, dtype=np.int64)


def label_font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``size`` pixels (the bitmap default on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 (no size argument, bitmap font)
        return ImageFont.load_default()


def text_width(draw: ImageDraw.ImageDraw, text: str, font) -> int:
    """Width in pixels of ``text`` drawn in ``font``."""
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """Truncates ``text`` with an ellipsis until it fits in ``width`` pixels."""
    if text_width(draw, text, font) <= width:
        return text
    while text and text_width(draw, text + "…", font) > width:
        text = text[:-1]
    return text + "…" if text else ""


def draw_row_labels(draw: ImageDraw.ImageDraw, labels: Sequence[str], font, *, top: int, tile_h: int, pad: int,
                    left: int = 4) -> list[int]:
    """Writes one label per row of an :func:`image_grid`, vertically centred on the row's tiles.

    Args:
      draw: drawing context of the canvas holding the grid.
      labels: text of each row, top to bottom.
      font: e.g. :func:`label_font`.
      top: canvas y of the grid's top edge; tile_h, pad: the grid's tile height and padding.
      left: canvas x of the labels.

    Returns:
      The y at which each label was drawn (for a second line below it).
    """
    ys = []
    for row, label in enumerate(labels):
        ink_top, ink_bottom = draw.textbbox((0, 0), label, font=font)[1::2]
        y = top + pad + row * (tile_h + pad) + (tile_h - (ink_bottom - ink_top)) // 2 - ink_top
        draw.text((left, y), label, fill=TEXT, font=font)
        ys.append(y)
    return ys


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Writes ``image`` as a PNG atomically: a reader never sees a half-written file.

    The folder of ``path`` must exist.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            image.save(f, format="PNG")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def draw_difference_scale(canvas: Image.Image, draw: ImageDraw.ImageDraw, font, *, left: int, top: int, width: int,
                          peak_255: float) -> None:
    """The difference row's colour scale: a black-grey-white bar from -max|d| through 0 to +max|d|.

    Each channel of a difference tile is read on this bar (grey: unchanged).
    """
    width = max(width, 24)
    ramp = np.linspace(0, 255, width).round().astype(np.uint8)
    bar = Image.fromarray(np.repeat(np.repeat(ramp[None, :, None], 8, axis=0), 3, axis=2))
    canvas.paste(bar, (left, top))
    draw.rectangle((left - 1, top - 1, left + width, top + 8), outline=TEXT)
    text_top = top + 10
    low, high = f"-{peak_255:.2g}", f"+{peak_255:.2g}"
    draw.text((left, text_top), low, fill=TEXT, font=font)
    draw.text((left + (width - text_width(draw, "0", font)) // 2, text_top), "0", fill=TEXT, font=font)
    draw.text((left + width - text_width(draw, high, font), text_top), high, fill=TEXT, font=font)


def save_preview(
    path: str | Path,
    x_clean: np.ndarray,
    x_poison: np.ndarray,
    y: np.ndarray,
    class_names: Sequence[str] | None = None,
    per_class: int = 2,
    *,
    title: str | None = None,
    scale: int | None = None,
) -> Path:
    """Writes a labelled three-row PNG: clean / poisoned / amplified signed difference.

    Args:
      path: the PNG to write.
      x_clean: [N, H, W, C] clean images (uint8, or float in [0, 1]).
      x_poison: [N, H, W, C] protected images, same shape.
      y: [N] integer labels used to pick ``per_class`` examples of each class.
      class_names: names for the column headers (indexed by label); labels are
        printed as numbers when omitted.
      per_class: examples shown per class.
      title: optional line printed above the grid (e.g. method and budget).
      scale: tile upscale factor (default: tiles of at least 64 px).

    Returns:
      The path written.
    """
    x_clean, x_poison, y = np.asarray(x_clean), np.asarray(x_poison), np.asarray(y)
    if x_clean.shape != x_poison.shape:
        raise UserInputError(f"save_preview: clean images {x_clean.shape} and poisoned images {x_poison.shape} differ in shape")
    if y.ndim != 1 or y.shape[0] != x_clean.shape[0]:
        raise UserInputError(f"save_preview: labels must be [N] with N = {x_clean.shape[0]}, got shape {y.shape}")
    if per_class < 1:
        raise UserInputError(f"save_preview: per_class must be >= 1, got {per_class}")
    idx = pick_examples(y, per_class)
    diff, peak = amplify_difference(x_clean[idx], x_poison[idx])
    height, width = x_clean.shape[1:3]
    scale = default_scale(height, width) if scale is None else scale
    pad = max(1, scale // 2)
    grid = image_grid([x_clean[idx], x_poison[idx], diff], pad=pad, scale=scale)

    font = label_font(12)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = probe.textbbox((0, 0), "Ag", font=font)[3] + 4
    peak_255 = peak * 255.0
    row_labels = ["clean", "poisoned", "difference", f"max |d| = {peak_255:.3g}/255"]
    margin_left = max(text_width(probe, s, font) for s in row_labels) + 8
    margin_top = line_h * (2 if title else 1) + 2
    margin_bottom = 2 * line_h + 14  # room for the difference row's colour scale below its labels
    canvas = Image.new("RGB", (margin_left + grid.shape[1], margin_top + grid.shape[0] + margin_bottom),
                       (BACKGROUND,) * 3)
    canvas.paste(Image.fromarray(grid), (margin_left, margin_top))
    draw = ImageDraw.Draw(canvas)

    if title:
        draw.text((4, 2), fit_text(draw, title, font, canvas.width - 8), fill=TEXT, font=font)
    tile_h, tile_w = height * scale, width * scale
    label_ys = draw_row_labels(draw, row_labels[:3], font, top=margin_top, tile_h=tile_h, pad=pad)
    draw.text((4, label_ys[2] + line_h), row_labels[3], fill=TEXT, font=font)  # under "difference"
    draw_difference_scale(canvas, draw, font, left=4, top=label_ys[2] + 2 * line_h + 2, width=margin_left - 12,
                          peak_255=peak_255)
    # One header per class, spanning that class's columns.
    labels = y[idx]
    col = 0
    while col < len(idx):
        span = next((k for k in range(col, len(idx)) if labels[k] != labels[col]), len(idx)) - col
        lab = int(labels[col])
        name = class_names[lab] if class_names is not None and 0 <= lab < len(class_names) else str(lab)
        left = margin_left + pad + col * (tile_w + pad)
        draw.text((left, margin_top - line_h), fit_text(draw, str(name), font, span * (tile_w + pad) - pad), fill=TEXT, font=font)
        col += span

    return save_png(canvas, path)
