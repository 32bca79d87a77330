"""Pixel conventions in one place: [0, 1] floats for the attack, uint8 for storage.

The attack works on floats in [0, 1]; poison directories store uint8. Rounding
to the uint8 grid can push a perturbation just past its budget, so
:func:`quantize_to_budget` rounds *and* restores the budget, which is what the
released images must satisfy.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ntga.errors import UserInputError

__all__ = ["one_hot", "quantize_to_budget", "to_float", "to_uint8", "uint8_linf_cap"]


def _xp(x):
    """numpy for numpy inputs (host data stays on the host), jax.numpy otherwise."""
    return np if isinstance(x, (np.ndarray, np.generic)) else jnp


def to_float(x_uint8, dtype=np.float32):
    """uint8 pixels [...] -> floats in [0, 1] of ``dtype`` (``x / 255``)."""
    xp = _xp(x_uint8)
    return xp.asarray(x_uint8).astype(dtype) / xp.asarray(255, dtype=dtype)


def to_uint8(x):
    """Floats in [0, 1] [...] -> nearest uint8 pixels (clipped first; ties to even)."""
    xp = _xp(x)
    return xp.round(xp.clip(x, 0.0, 1.0) * 255.0).astype(xp.uint8)


def one_hot(labels, num_classes: int, dtype=np.float32) -> np.ndarray:
    """Integer labels [n] -> one-hot rows [n, num_classes] (numpy).

    Raises:
        UserInputError: labels that are not integers in ``[0, num_classes)``.
    """
    labels = np.asarray(labels)
    if num_classes < 1:
        raise UserInputError(f"num_classes={num_classes} is invalid; expected an integer >= 1")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserInputError(f"labels must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserInputError(
            f"labels range over [{labels.min()}, {labels.max()}]; accepted: integers in [0, {num_classes - 1}]")
    return np.eye(num_classes, dtype=dtype)[labels]


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
        raise UserInputError(f"norm={norm!r} is invalid; accepted: 'linf', 'l2'")
    # base + r is already in [0, 255] (x_adv was clipped and r moves toward base); the
    # clip only guards the integer cast.
    return jnp.clip(base + r.astype(jnp.int32), 0, 255).astype(jnp.uint8)
