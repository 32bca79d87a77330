"""A PNG contact sheet: a few images per class, one labelled row per class."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ntga.errors import UserInputError

_GAP = 2
_MIN_TILE = 48  # small images (8x8 digits) are upscaled (nearest) to stay legible


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
    h, w, c = images.shape[1:]
    scale = max(1, -(-_MIN_TILE // max(h, w)))
    th, tw = h * scale, w * scale
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    label_w = 8 + int(max(measure.textlength(n, font=font) for n in names))
    rows = grid_rows(labels, len(names), per_class)
    size = (label_w + per_class * (tw + _GAP) + _GAP, len(rows) * (th + _GAP) + _GAP)
    sheet = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, picks) in enumerate(zip(names, rows, strict=True)):
        y = _GAP + r * (th + _GAP)
        top, bottom = measure.textbbox((0, 0), name, font=font)[1::2]
        draw.text((4, y + (th - (bottom - top)) // 2 - top), name, fill="black", font=font)
        for col, i in enumerate(picks):
            tile = images[i] if c == 3 else np.repeat(images[i], 3, axis=-1)
            tile = Image.fromarray(np.ascontiguousarray(tile)).resize((tw, th), Image.NEAREST)
            sheet.paste(tile, (label_w + _GAP + col * (tw + _GAP), y))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            sheet.save(f, format="PNG")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
