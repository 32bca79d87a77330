"""Image Shortcut Squeezing: dataset-level input transforms (Liu et al., ICML 2023).

Each function maps training images [N, H, W, C] (uint8 [0, 255] or float
[0, 1]) to images of the same shape, once, before training. They are numpy /
Pillow functions rather than jitted JAX because they run once per dataset and
JPEG must use the real codec (a differentiable JPEG approximation would not
squeeze what the real one squeezes).

APBench settings (lafeat/apbench): grayscale of the training images only,
JPEG quality 10, bit-depth reduction to 2 bits, Gaussian blur kernel 3 with
sigma 0.1.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ntga.errors import UserInputError
from ntga.pixels import as_float, as_uint8, check_images

# ITU-R BT.601 luma weights: what Pillow's convert("L") and torchvision's
# Grayscale use, so results match the pipelines the published numbers came from.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float64)

# Images per numpy chunk: bounds the float temporaries for CIFAR-sized sets.
_CHUNK = 4096


def grayscale(x: np.ndarray) -> np.ndarray:
    """Replaces every pixel by its luma, replicated over the channels.

    The channel count is kept (3 stays 3) so the victim's input shape does not
    change between the clean and the squeezed run.

    Args:
        x: [N, H, W, C] uint8 or float [0, 1], C in {1, 3}.

    Returns:
        [N, H, W, C] of the input's kind (uint8 rounded to nearest).
    """
    x = check_images(x, "breaker 'grayscale'", strict=False)
    channels = x.shape[-1]
    if channels == 1:
        return x
    if channels != 3:
        raise UserInputError(f"breaker 'grayscale': needs 1 or 3 channels (RGB), got {channels}")
    luma = np.tensordot(x.astype(np.float64), LUMA_WEIGHTS, axes=([3], [0]))[..., None]
    if x.dtype == np.uint8:
        luma = np.clip(np.rint(luma), 0, 255).astype(np.uint8)
    else:
        luma = luma.astype(np.float32)
    return np.repeat(luma, channels, axis=3)


def jpeg(x: np.ndarray, quality: int = 10) -> np.ndarray:
    """Encodes and decodes every image with Pillow's JPEG codec.

    Args:
        x: [N, H, W, C] uint8 or float [0, 1] (floats are rounded to uint8 first,
            as any JPEG file would), C in {1, 3}.
        quality: libjpeg quality 1..100 (APBench: 10). Pillow's default chroma
            subsampling (4:2:0) is kept, as in PIL-based training pipelines.

    Returns:
        [N, H, W, C] uint8.
    """
    x = as_uint8(check_images(x, "breaker 'jpeg'", strict=False))
    channels = x.shape[-1]
    if channels not in (1, 3):
        raise UserInputError(f"breaker 'jpeg': needs 1 or 3 channels, got {channels}")
    out = np.empty_like(x)
    # A loop over images is unavoidable here: the codec is a C library that
    # works one image at a time. It runs once per dataset, not per step.
    for i, img in enumerate(x):
        pil = Image.fromarray(img[..., 0] if channels == 1 else img, mode="L" if channels == 1 else "RGB")
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as decoded:
            arr = np.asarray(decoded.convert("L" if channels == 1 else "RGB"), np.uint8)
        out[i] = arr[..., None] if channels == 1 else arr
    return out


def bit_depth_reduction(x: np.ndarray, bits: int = 2) -> np.ndarray:
    """Quantises every channel to ``2**bits`` evenly spaced levels in [0, 255].

    Level j is round(j * 255 / (2**bits - 1)), j = 0..2**bits-1, so 0 and 255
    stay representable and the output has at most 2**bits distinct values.

    Args:
        x: [N, H, W, C] uint8 or float [0, 1].
        bits: 1..8 (APBench: 2).

    Returns:
        [N, H, W, C] uint8.
    """
    x = check_images(x, "breaker 'bdr'", strict=False)
    top = (1 << int(bits)) - 1
    out = np.empty(x.shape, np.uint8)
    for start in range(0, x.shape[0], _CHUNK):
        unit = as_float(x[start : start + _CHUNK]).astype(np.float64)
        level = np.rint(unit * top)
        out[start : start + _CHUNK] = np.rint(level * (255.0 / top)).astype(np.uint8)
    return out


def gaussian_kernel_1d(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian weights [size] centred on the middle tap."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    w = np.exp(-0.5 * (offsets / sigma) ** 2)
    return w / w.sum()


def gaussian_blur(x: np.ndarray, kernel: int = 3, sigma: float = 0.1) -> np.ndarray:
    """Separable Gaussian blur of every channel with reflected borders.

    Reflect padding matches torchvision's GaussianBlur, which APBench uses.
    With APBench's sigma 0.1 the off-centre taps weigh ~2e-22, so this is
    almost the identity: that is the published setting (its accuracy column
    tracks "no defense"), kept as the default for comparability; raise sigma
    for a real blur.

    Args:
        x: [N, H, W, C] uint8 or float [0, 1].
        kernel: odd tap count >= 1 (APBench: 3).
        sigma: standard deviation in pixels, > 0 (APBench: 0.1).

    Returns:
        [N, H, W, C] float32 in [0, 1] (not re-quantised, so a mild blur is
        not rounded away).
    """
    x = check_images(x, "breaker 'blur'", strict=False)
    weights = gaussian_kernel_1d(int(kernel), float(sigma)).astype(np.float32)
    half = int(kernel) // 2
    _, height, width, _ = x.shape
    if half >= min(height, width):
        raise UserInputError(
            f"breaker 'blur': kernel {kernel} is too large for {height}x{width} images "
            f"(reflect padding needs kernel // 2 < {min(height, width)})"
        )
    out = np.empty(x.shape, np.float32)
    for start in range(0, x.shape[0], _CHUNK):
        img = as_float(x[start : start + _CHUNK])
        # Separable: rows then columns; each pass is a weighted sum of shifts.
        pad = np.pad(img, ((0, 0), (half, half), (0, 0), (0, 0)), mode="reflect")
        img = sum(w * pad[:, i : i + height] for i, w in enumerate(weights))
        pad = np.pad(img, ((0, 0), (0, 0), (half, half), (0, 0)), mode="reflect")
        img = sum(w * pad[:, :, i : i + width] for i, w in enumerate(weights))
        out[start : start + _CHUNK] = np.clip(img, 0.0, 1.0)
    return out
