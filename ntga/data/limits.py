"""A bound on what decoding a dataset may allocate, checked before the pixels are decoded.

Compressed sources can expand enormously: a 470 KB zip of six 9000x9000 PNGs
decodes to about 1 GB, and a few MB of gzip can declare gigabytes of IDX
pixels. Every loader therefore reads each image's or array's declared size
from its header first and charges it to a :class:`DecodeBudget`, which refuses
(with the flag that raises the limit) an image side or a running total above
the :class:`DecodeLimits`. The defaults sit far above the datasets this
project targets (CIFAR-10 decodes to 184 MB) and well below this machine's
24 GiB of memory, since the pipeline makes float copies of the pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ntga.errors import UserInputError

DEFAULT_MAX_SIDE = 4096
DEFAULT_MAX_DECODED_GB = 4.0


@dataclass(frozen=True)
class DecodeLimits:
    """Largest image side (pixels) and largest total of decoded pixel bytes (GB = 1e9 bytes)."""

    max_side: int = DEFAULT_MAX_SIDE
    max_decoded_gb: float = DEFAULT_MAX_DECODED_GB

    def __post_init__(self):
        if not (isinstance(self.max_side, int) and self.max_side >= 1):
            raise UserInputError(f"--max-image-side must be a positive integer, got {self.max_side!r}")
        if not self.max_decoded_gb > 0:
            raise UserInputError(f"--max-decoded-gb must be a positive number, got {self.max_decoded_gb!r}")

    @property
    def max_bytes(self) -> int:
        return int(self.max_decoded_gb * 1e9)


class DecodeBudget:
    """Running total of one dataset's declared decoded size, checked against :class:`DecodeLimits`."""

    def __init__(self, limits: DecodeLimits | None = None, source: str = "the dataset"):
        self.limits = limits or DecodeLimits()
        self.source = source
        self.used = 0

    def check_side(self, height: int, width: int, where: str) -> None:
        side = max(height, width)
        if side > self.limits.max_side:
            raise UserInputError(
                f"{where} is {width}x{height} pixels (width x height), above the limit of "
                f"{self.limits.max_side} pixels per side; resize the images, or raise the limit with "
                f"--max-image-side {side}")

    def charge_image(self, height: int, width: int, channels: int, where: str) -> None:
        """Charges one image of the declared size; refuses a side above the limit."""
        self.check_side(height, width, where)
        self.charge(height * width * channels, where)

    def charge_array(self, shape: tuple[int, ...], where: str, itemsize: int = 1) -> None:
        """Charges an array ``[N, H, W(, C)]`` (or labels ``[N]``) of the declared shape before it is read."""
        if len(shape) >= 3:
            self.check_side(int(shape[1]), int(shape[2]), where)
        self.charge(math.prod(int(d) for d in shape) * itemsize, where)  # Python ints: cannot wrap around

    def charge(self, nbytes: int, where: str) -> None:
        self.used += int(nbytes)
        if self.used > self.limits.max_bytes:
            raise UserInputError(
                f"decoding {self.source} would take more than {self.limits.max_decoded_gb:g} GB of memory "
                f"(reached at {where}); if this machine has the memory, raise the limit with "
                f"--max-decoded-gb {max(2 * self.limits.max_decoded_gb, self.used / 1e9 * 1.5):.3g}")
