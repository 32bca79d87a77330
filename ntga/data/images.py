"""Decoding one image file to uint8 pixels, and stacking many into ``[N, H, W, C]``.

Mode conversions (Pillow modes), chosen so no pixel value is invented:

* ``L`` (8-bit grey) is kept: C = 1.
* ``1`` (bilevel) becomes 0/255 grey; ``LA``/``La`` drop the alpha channel.
* ``I;16*`` (16-bit grey PNG/TIFF; ``I`` from PNG in older Pillow) is scaled
  to 8 bits with ``round(v * 255 / 65535)``.
* ``RGB`` is kept: C = 3. ``RGBA``/``RGBa``/``RGBX`` drop alpha (no compositing
  onto a background: the colour values are the data); ``P``/``PA`` (palette),
  ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` convert to RGB with Pillow's conversion.
* ``I`` (32-bit int) and ``F`` (float) are refused: their range is unknown.

Speed: for 8-bit baseline/progressive JPEGs with 1 or 3 components (nearly
every JPEG dataset) the frame header is read here and the bytes go straight to
Pillow's libjpeg decoder (``Image.frombytes(..., "jpeg", ...)``) with the same
decoder arguments ``Image.open`` would use, so pixels are identical (tested)
for about 30% less CPU per image on CIFAR-10's 32x32 JPEGs, where Pillow's
Python-level header parsing costs as much as the decoding itself. Anything else, and any JPEG the
fast path cannot decode, goes through ``Image.open``, which also produces the
error message.

A dataset is greyscale (C = 1) if every image is; if any image is colour, the
grey ones are repeated into three identical channels (C = 3). Colour datasets
often contain a few grey JPEGs (ImageNet does), and refusing them would be
unhelpful; turning colour images grey would destroy data.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from ntga.data.limits import DecodeBudget
from ntga.errors import UserInputError

_GREY = {"L"}
_TO_GREY = {"1", "LA", "La"}
_RGB = {"RGB"}
_TO_RGB = {"RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}


_JPEG_FRAMES = {0xC0, 0xC1, 0xC2}  # baseline, extended sequential, progressive (Huffman)
_JPEG_NO_LENGTH = {0x01, *range(0xD0, 0xD8)}  # TEM, RSTn: markers without a length field
# Lossless, hierarchical and arithmetic frames: left to Image.open. (0xC4 DHT,
# 0xC8 JPG and 0xCC DAC sit in the same range but are ordinary segments.)
_JPEG_OTHER_FRAMES = set(range(0xC3, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_frame(data: bytes) -> tuple[str, int, int] | None:
    """``(mode, width, height)`` from a plain 8-bit JPEG's frame header, else None."""
    if not data.startswith(b"\xff\xd8"):
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            i += 2
            continue
        if marker in _JPEG_FRAMES:
            if i + 10 > n or data[i + 4] != 8:
                return None
            h = int.from_bytes(data[i + 5 : i + 7], "big")
            w = int.from_bytes(data[i + 7 : i + 9], "big")
            layers = data[i + 9]
            if layers not in (1, 3) or not 0 < w * h <= (Image.MAX_IMAGE_PIXELS or 1 << 62):
                return None
            return ("L" if layers == 1 else "RGB"), w, h
        if marker in _JPEG_OTHER_FRAMES or marker in (0xD9, 0xDA):
            return None  # other frame types, or no frame before the scan: let Image.open decide
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def decode_image(data: bytes, where: str, budget: DecodeBudget | None = None) -> np.ndarray:
    """Decodes image bytes to uint8 ``[H, W]`` (grey) or ``[H, W, 3]`` (colour).

    Args:
      data: the file's bytes.
      where: the file, for messages.
      budget: charged with the declared size from the image header *before* the
        pixels are decoded (see :mod:`ntga.data.limits`).

    Raises:
      UserInputError: ``where`` is not a decodable image, has an unsupported mode,
        or is larger than the budget allows.
    """
    budget = budget or DecodeBudget()
    frame = _jpeg_frame(data)
    if frame is not None:
        mode, w, h = frame
        budget.charge_image(h, w, 1 if mode == "L" else 3, where)
        try:
            return np.asarray(Image.frombytes(mode, (w, h), data, "jpeg", mode, ""))
        except (OSError, ValueError):
            pass  # corrupt or unusual: Image.open below decodes it or explains why not
    try:
        with Image.open(io.BytesIO(data)) as im:
            if frame is None:  # a JPEG whose fast path failed was charged from its frame header already
                w, h = im.size
                budget.charge_image(h, w, 3 if im.mode in _RGB or im.mode in _TO_RGB else 1, where)
            im.load()
            mode = im.mode
            if mode in _GREY or mode in _RGB:
                return np.asarray(im)
            if mode in _TO_GREY:
                return np.asarray(im.convert("L"))
            if mode in _TO_RGB:
                return np.asarray(im.convert("RGB"))
            # Older Pillow opens 16-bit grey PNGs as "I"; for PNG that mode can only mean 16 bits.
            if mode.startswith("I;16") or (mode == "I" and im.format == "PNG"):
                v = np.asarray(im).astype(np.uint32)
                return ((v * 255 + 32767) // 65535).astype(np.uint8)
    except UserInputError:
        raise  # the decode budget's own message (UserInputError is a ValueError)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UserInputError(f"cannot decode {where} as an image ({type(err).__name__}: {err})") from None
    raise UserInputError(
        f"{where}: unsupported pixel mode {mode!r}; use 8-bit greyscale or RGB images (or 16-bit greyscale)"
    )


class ImageStack:
    """Collects decoded images of one size and stacks them; reports the first odd-sized file."""

    def __init__(self):
        self._images: list[np.ndarray] = []
        self._size: tuple[int, int] | None = None
        self._first: str | None = None
        self.colour = False

    def add(self, img: np.ndarray, where: str) -> None:
        size = img.shape[:2]
        if self._size is None:
            self._size, self._first = size, where
        elif size != self._size:
            raise UserInputError(
                f"{where} is {size[1]}x{size[0]} (width x height) but {self._first} is "
                f"{self._size[1]}x{self._size[0]}; all images must have one size (resize them first)"
            )
        self.colour |= img.ndim == 3
        self._images.append(img)

    def stack(self, indices: list[int] | np.ndarray, colour: bool) -> np.ndarray:
        """Images ``indices`` as uint8 ``[n, H, W, C]``, C = 3 if ``colour`` else 1."""
        h, w = self._size
        out = np.empty((len(indices), h, w, 3 if colour else 1), np.uint8)
        for i, j in enumerate(indices):  # a plain copy loop: measured faster than np.stack here
            img = self._images[j]
            out[i] = img if img.ndim == 3 else img[:, :, None]  # grey fills all channels when colour
        return out

    def __len__(self) -> int:
        return len(self._images)
