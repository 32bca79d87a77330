"""Label conventions shared by the breakers: integer classes or soft label rows.

(Their pixel conventions, uint8 [0, 255] or float [0, 1] images, are
:mod:`ntga.pixels`': ``as_float``, ``as_uint8``, ``check_images``.)
"""

from __future__ import annotations

import jax.numpy as jnp


def soft_labels(y: jnp.ndarray, num_classes: int, dtype=jnp.float32) -> jnp.ndarray:
    """Integer labels [B] -> one-hot [B, k]; soft labels [B, k] pass through (cast to dtype)."""
    if y.ndim == 1:
        return jnp.asarray(y[:, None] == jnp.arange(num_classes)[None, :], dtype)
    return y.astype(dtype)
