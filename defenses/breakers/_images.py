"""Pixel conventions shared by the breakers.

Dataset-level breakers (``prepare``) receive the training images either as
uint8 in [0, 255] (what a poison directory stores) or as float in [0, 1] (what
an earlier float-producing breaker in a ``+`` chain returned), and return one
of the same two forms. Training-time breakers see float images in [0, 1].
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ntga.errors import UserInputError


def as_unit_float(x: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] or float [0, 1] images -> float32 in [0, 1] (numpy)."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    return np.clip(x.astype(np.float32), 0.0, 1.0)


def as_uint8(x: np.ndarray) -> np.ndarray:
    """uint8 images pass through; float [0, 1] images are rounded to uint8."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x
    return np.clip(np.rint(x.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def check_images(x: np.ndarray, who: str) -> np.ndarray:
    """Validates a training-image array [N, H, W, C] and returns it as an ndarray."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise UserInputError(f"breaker {who!r}: expected training images [N, H, W, C], got shape {x.shape}")
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise UserInputError(
            f"breaker {who!r}: expected uint8 [0, 255] or float [0, 1] images, got dtype {x.dtype}"
        )
    return x


def soft_labels(y: jnp.ndarray, num_classes: int, dtype=jnp.float32) -> jnp.ndarray:
    """Integer labels [B] -> one-hot [B, k]; soft labels [B, k] pass through (cast to dtype)."""
    if y.ndim == 1:
        return jnp.asarray(y[:, None] == jnp.arange(num_classes)[None, :], dtype)
    return y.astype(dtype)
