"""Steepest-ascent directions, eps-ball projections and random starts for image batches.

All functions act per image on [n, H, W, C] arrays and are pure and jittable.
L2 norms are taken per image over all pixels and channels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["ascent_direction", "project", "random_start"]


def _per_image_norm(x: jax.Array) -> jax.Array:
    """[n, ...] -> [n, 1, ..., 1] L2 norms, broadcastable against x."""
    return jnp.sqrt(jnp.sum(x * x, axis=tuple(range(1, x.ndim)), keepdims=True))


def ascent_direction(grad: jax.Array, norm: str) -> jax.Array:
    """Unit steepest-ascent direction of the given norm.

    L-inf: ``sign(g)``. L2: ``g / ||g||`` per image (zero where the gradient is zero).

    Args:
      grad: [n, H, W, C] gradient of the loss w.r.t. the images.
      norm: "linf" or "l2".

    Returns:
      [n, H, W, C] direction.
    """
    if norm == "linf":
        return jnp.sign(grad)
    if norm == "l2":
        g_norm = _per_image_norm(grad)
        return grad / jnp.maximum(g_norm, jnp.finfo(grad.dtype).tiny)
    raise ValueError(f"unknown norm {norm!r}")


def project(x: jax.Array, x_clean: jax.Array, eps: float, norm: str) -> jax.Array:
    """Projects ``x`` onto the eps-ball around ``x_clean``, then clips to [0, 1].

    Clipping after the projection cannot leave the ball: x_clean is in [0, 1], so
    clipping only shrinks each entry of the perturbation.

    Args:
      x: [n, H, W, C] candidate images.
      x_clean: [n, H, W, C] clean images in [0, 1].
      eps: budget.
      norm: "linf" or "l2".

    Returns:
      [n, H, W, C] images within the budget and in [0, 1].
    """
    delta = x - x_clean
    if norm == "linf":
        delta = jnp.clip(delta, -eps, eps)
    elif norm == "l2":
        d_norm = _per_image_norm(delta)
        delta = delta * jnp.minimum(1.0, eps / jnp.maximum(d_norm, jnp.finfo(delta.dtype).tiny))
    else:
        raise ValueError(f"unknown norm {norm!r}")
    return jnp.clip(x_clean + delta, 0.0, 1.0)


def random_start(key: jax.Array, x_clean: jax.Array, eps: float, norm: str) -> jax.Array:
    """A uniformly random point of the eps-ball around each image, clipped to [0, 1].

    L-inf: i.i.d. uniform in [-eps, eps] per pixel. L2: uniform in the ball
    (Gaussian direction, radius ``eps * U^(1/d)``).

    Args:
      key: PRNG key.
      x_clean: [n, H, W, C] clean images.
      eps: budget.
      norm: "linf" or "l2".

    Returns:
      [n, H, W, C] starting images.
    """
    dtype = x_clean.dtype
    if norm == "linf":
        delta = jax.random.uniform(key, x_clean.shape, dtype, -eps, eps)
    elif norm == "l2":
        k_dir, k_rad = jax.random.split(key)
        direction = jax.random.normal(k_dir, x_clean.shape, dtype)
        direction = direction / jnp.maximum(_per_image_norm(direction), jnp.finfo(dtype).tiny)
        dim = x_clean[0].size
        radius = eps * jax.random.uniform(k_rad, (x_clean.shape[0],) + (1,) * (x_clean.ndim - 1), dtype) ** (1.0 / dim)
        delta = direction * radius
    else:
        raise ValueError(f"unknown norm {norm!r}")
    return project(x_clean + delta, x_clean, eps, norm)
