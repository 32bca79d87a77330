"""Rounding to uint8 within the budget, and measuring perturbations.

Rounding to the uint8 grid can push a perturbation just past its budget, so
:func:`quantize_to_budget` rounds *and* restores the budget, which is what the
released images must satisfy; :func:`perturbation_norms` measures it in float64
on the stored arrays (``ntga.budget.check_budget`` compares it with eps).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ntga.errors import UserInputError
from ntga.pixels._ball import check_norm, unknown_norm
from ntga.pixels._convert import to_uint8, unit_float64

__all__ = ["perturbation_norms", "quantize_to_budget", "uint8_linf_cap"]


def uint8_linf_cap(eps: float) -> int:
    """Largest per-pixel uint8 change within an L-inf budget ``eps`` (e.g. 8/255 -> 8, 0.3 -> 76).

    The ``1e-9`` absorbs float error in budgets such as ``8/255``, whose product with
    255 can land just below the integer.
    """
    return int(math.floor(255.0 * eps + 1e-9))


def quantize_to_budget(x_adv: jax.Array, x_block: jax.Array, eps: float, norm: str) -> jax.Array:
    """Rounds attacked images to uint8 so that they still satisfy the budget.

    The budget is measured against the clean images as stored, ``to_uint8(x_block)``
    (identical to ``x_block`` for images that came from uint8). L-inf: the rounded
    per-pixel change is clipped to :func:`uint8_linf_cap`. L2 (per image, over all
    pixels): when rounding pushed an image's change past ``eps``, its float change
    is scaled to just inside the ball and rounded toward zero, which cannot grow
    any entry, so the norm stays within ``eps``. Pure and jittable (vmap over blocks).

    Args:
      x_adv: [n, H, W, C] attacked floats in [0, 1].
      x_block: [n, H, W, C] clean floats in [0, 1].
      eps: budget in [0, 1] pixel units.
      norm: "linf" or "l2".

    Returns:
      [n, H, W, C] uint8 poisoned images.
    """
    base = to_uint8(jnp.asarray(x_block)).astype(jnp.int32)
    # Change in uint8 units relative to the stored clean image.
    d = 255.0 * jnp.clip(jnp.asarray(x_adv), 0.0, 1.0) - base.astype(jnp.asarray(x_adv).dtype)
    r = jnp.round(d)
    if norm == "linf":
        cap = uint8_linf_cap(eps)
        r = jnp.clip(r, -cap, cap)
    elif norm == "l2":
        axes = tuple(range(1, d.ndim))
        radius = 255.0 * eps
        # A relative margin of 1e-6 covers float32 error in the norms, so a check in
        # float64 by the data's user never sees the budget exceeded.
        margin = 1.0 - 1e-6
        r_norm = jnp.sqrt(jnp.sum(r * r, axis=axes, keepdims=True))
        d_norm = jnp.sqrt(jnp.sum(d * d, axis=axes, keepdims=True))
        scale = jnp.minimum(1.0, radius * margin / jnp.maximum(d_norm, 1e-30))
        shrunk = jnp.trunc(d * scale)
        r = jnp.where(r_norm > radius * margin, shrunk, r)
    else:
        raise unknown_norm(norm)
    # base + r is already in [0, 255] (x_adv was clipped and r moves toward base); the
    # clip only guards the integer cast.
    return jnp.clip(base + r.astype(jnp.int32), 0, 255).astype(jnp.uint8)


def perturbation_norms(x_clean: np.ndarray, x_poison: np.ndarray, norm: str, chunk: int = 4096) -> np.ndarray:
    """Per-image perturbation norms in [0, 1] pixel units.

    Args:
      x_clean, x_poison: [N, ...] uint8, or float in [0, 1]; same shape.
      norm: "linf" (max |delta|) or "l2" (sqrt of the sum of squares over all pixels of one image).
      chunk: images per float64 conversion.

    Returns:
      float64 [N].
    """
    check_norm(norm)
    x_clean, x_poison = np.asarray(x_clean), np.asarray(x_poison)
    if x_clean.shape != x_poison.shape or x_clean.ndim < 1:
        raise UserInputError(f"clean images {x_clean.shape} and poisoned images {x_poison.shape} must have the same shape [N, ...]")
    out = np.empty(x_clean.shape[0], np.float64)
    # Chunked so a 50k-image CIFAR set never needs a float64 copy of the whole array.
    for start in range(0, x_clean.shape[0], chunk):
        sl = slice(start, start + chunk)
        delta = (unit_float64(x_poison[sl], "poisoned images")
                 - unit_float64(x_clean[sl], "clean images")).reshape(len(out[sl]), -1)
        out[sl] = np.abs(delta).max(axis=1, initial=0.0) if norm == "linf" else np.sqrt(np.sum(delta * delta, axis=1))
    return out
