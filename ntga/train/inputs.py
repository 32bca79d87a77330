"""Image helpers shared by the trainer and the breakers: per-channel
standardisation and the standard random crop + horizontal flip.

All functions take raw images in pixel units ([0, 1] floats) shaped
[B, H, W, C] and are pure and jittable; randomness comes only from ``key``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of images in pixel units.

    Accumulated in float64 over chunks so a 50k x 32 x 32 x 3 uint8 array never
    exists as one float copy.

    Args:
        x: images [N, H, W, C], uint8 (scaled by 1/255) or float in [0, 1].
        chunk: images per accumulation step.

    Returns:
        mean [C] and std [C] as float32; a constant channel gets std 1 so
        standardising it gives zeros instead of NaN.
    """
    # Times 1/255 in float64, not ntga.pixels.to_float's division: the two can differ in the last
    # bit, and these statistics standardise every victim's input, so they keep their own arithmetic.
    scale = 1.0 / 255.0 if x.dtype == np.uint8 else 1.0
    c = x.shape[-1]
    total = np.zeros(c)
    total_sq = np.zeros(c)
    for start in range(0, x.shape[0], chunk):
        part = x[start:start + chunk].astype(np.float64).reshape(-1, c) * scale
        total += part.sum(axis=0)
        total_sq += np.square(part).sum(axis=0)
    count = x.shape[0] * x.shape[1] * x.shape[2]
    mean = total / count
    var = np.maximum(total_sq / count - np.square(mean), 0.0)
    std = np.sqrt(var)
    std = np.where(std < 1e-6, 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)


def standardize(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """(x - mean) / std per channel; x [..., C] in pixel units, mean/std [C]."""
    # Explicit broadcasting: the test suite makes implicit rank promotion an error.
    shape = (1,) * (x.ndim - 1) + (-1,)
    return (x - mean.reshape(shape)) / std.reshape(shape)


def crop_padding(height: int) -> int:
    """Padding for random crops: the CIFAR convention of 4 pixels per 32, at least 1."""
    return max(1, int(round(4 * height / 32)))


def random_crop(key: jax.Array, x: jax.Array, pad: int) -> jax.Array:
    """Zero-pads by ``pad`` (black, like torchvision) and crops back at a random offset per image.

    Args:
        key: PRNG key.
        x: images [B, H, W, C].
        pad: padding on each side.

    Returns:
        images [B, H, W, C].
    """
    b, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(key, (b, 2), 0, 2 * pad + 1)

    def crop_one(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    return jax.vmap(crop_one)(padded, offsets)


def random_flip(key: jax.Array, x: jax.Array) -> jax.Array:
    """Flips each image [B, H, W, C] left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0],))
    return jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)


def random_crop_flip(key: jax.Array, x: jax.Array) -> jax.Array:
    """The standard CIFAR augmentation: random crop (padding scaled to H) + horizontal flip."""
    k_crop, k_flip = jax.random.split(key)
    return random_flip(k_flip, random_crop(k_crop, x, crop_padding(x.shape[1])))
