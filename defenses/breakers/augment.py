"""Training-time mixing augmentations: Cutout, Mixup, CutMix.

Each factory returns a pure, jit-friendly ``transform(key, x, y) -> (x, y)``:

    x: [B, H, W, C] float images in [0, 1] (raw pixels, before standardisation)
    y: [B] integer labels or [B, k] soft labels
    returns x of the same shape/dtype in [0, 1]; y unchanged (cutout) or as
    soft labels [B, k] (mixup, cutmix), whose rows sum to 1.

Randomness is per batch (one mixing coefficient and one partner permutation)
as in the papers' reference code; cut positions are per example. No Python
loops over examples: masks come from broadcast comparisons with iotas.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from defenses.breakers._labels import soft_labels

Transform = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def box_mask(top: jax.Array, left: jax.Array, height: jax.Array, width: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """Per-example boolean masks of axis-aligned boxes, clipped to the image.

    Args:
        top, left: [B] integer corners (may lie outside the image).
        height, width: [B] or scalar integer box sides.
        shape: (H, W).

    Returns:
        [B, H, W, 1] bool, True inside the box.
    """
    rows = jnp.arange(shape[0])[None, :]
    cols = jnp.arange(shape[1])[None, :]
    top, left = jnp.asarray(top)[:, None], jnp.asarray(left)[:, None]
    height = jnp.broadcast_to(jnp.asarray(height), top.shape[:1])[:, None]
    width = jnp.broadcast_to(jnp.asarray(width), left.shape[:1])[:, None]
    in_rows = (rows >= top) & (rows < top + height)  # [B, H]
    in_cols = (cols >= left) & (cols < left + width)  # [B, W]
    return (in_rows[:, :, None] & in_cols[:, None, :])[..., None]


def make_cutout(size: int = 16) -> Transform:
    """Cutout (DeVries & Taylor, 2017): one ``size`` x ``size`` hole per image, filled with 0.

    The hole's centre is uniform over the image and the hole is clipped at the
    borders, as in the reference implementation, so holes near an edge are
    smaller. Labels are unchanged.
    """

    def transform(key, x, y):
        batch, height, width, _ = x.shape
        k_row, k_col = jax.random.split(key)
        cy = jax.random.randint(k_row, (batch,), 0, height)
        cx = jax.random.randint(k_col, (batch,), 0, width)
        hole = box_mask(cy - size // 2, cx - size // 2, size, size, (height, width))
        return jnp.where(hole, jnp.zeros((), x.dtype), x), y

    return transform


def make_mixup(num_classes: int, alpha: float = 1.0) -> Transform:
    """Mixup (Zhang et al., ICLR 2018): x <- lam x + (1-lam) x[perm], same for one-hot y.

    lam ~ Beta(alpha, alpha), one per batch; perm is a random permutation of
    the batch.
    """

    def transform(key, x, y):
        k_lam, k_perm = jax.random.split(key)
        y = soft_labels(y, num_classes, x.dtype)
        lam = jax.random.beta(k_lam, alpha, alpha, dtype=x.dtype)
        perm = jax.random.permutation(k_perm, x.shape[0])
        x_mix = lam * x + (1 - lam) * x[perm]
        y_mix = lam * y + (1 - lam) * y[perm]
        return x_mix, y_mix

    return transform


def make_cutmix(num_classes: int, alpha: float = 1.0) -> Transform:
    """CutMix (Yun et al., ICCV 2019): paste a box from a partner image; labels by area.

    lam ~ Beta(alpha, alpha); the box has sides H*sqrt(1-lam) x W*sqrt(1-lam)
    (truncated to whole pixels), a uniform centre per example, and is clipped
    to the image. Each example's label weight is its exact remaining area
    fraction, so clipping is accounted for.
    """

    def transform(key, x, y):
        batch, height, width, _ = x.shape
        k_lam, k_perm, k_row, k_col = jax.random.split(key, 4)
        y = soft_labels(y, num_classes, x.dtype)
        lam = jax.random.beta(k_lam, alpha, alpha, dtype=x.dtype)
        ratio = jnp.sqrt(1.0 - lam)
        cut_h = jnp.floor(height * ratio).astype(jnp.int32)
        cut_w = jnp.floor(width * ratio).astype(jnp.int32)
        cy = jax.random.randint(k_row, (batch,), 0, height)
        cx = jax.random.randint(k_col, (batch,), 0, width)
        box = box_mask(cy - cut_h // 2, cx - cut_w // 2, cut_h, cut_w, (height, width))
        perm = jax.random.permutation(k_perm, batch)
        x_mix = jnp.where(box, x[perm], x)
        pasted = jnp.mean(box.astype(x.dtype), axis=(1, 2, 3))  # [B] area fraction taken from the partner
        y_mix = (1 - pasted)[:, None] * y + pasted[:, None] * y[perm]
        return x_mix, y_mix

    return transform
