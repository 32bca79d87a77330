"""The eps-ball: projections, steepest-ascent steps and random starts for image batches.

All functions act per image on [n, H, W, C] arrays and are pure and jittable
(``norm`` is a Python string, static under jit). L2 norms are taken per image
over all pixels and channels.

Two spellings of the L-inf projection exist on purpose, because they round
differently in floating point and every caller keeps its own bits (golden hashes):
:func:`project` works on the perturbation, ``x_clean + clip(x - x_clean, -eps, eps)``
(the NTGA attack); :func:`linf_box` + ``clip(x, lo, hi)`` clips the images themselves
(SEP, BEO). Likewise the L2 floor under a norm in a division is ``finfo(dtype).tiny``
by default; adversarial training passes ``floor=1e-12``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ntga.errors import UserInputError
from ntga.options import check_choice, invalid_choice
from ntga.pixels._convert import _xp

__all__ = [
    "NORMS", "ascent_direction", "ascent_step", "check_norm", "clip_delta", "linf_box", "project",
    "project_ball", "project_delta", "random_delta", "random_start",
]

NORMS = ("linf", "l2")


def unknown_norm(norm) -> UserInputError:
    """The error for a norm outside :data:`NORMS` (for the caller to raise)."""
    return invalid_choice("norm", norm, NORMS)


def check_norm(norm: str) -> str:
    """Returns ``norm`` if it is one of :data:`NORMS`; raises UserInputError otherwise."""
    return check_choice("norm", norm, NORMS)


def _per_image_norm(x: jax.Array) -> jax.Array:
    """[n, ...] -> [n, 1, ..., 1] L2 norms, broadcastable against x."""
    return jnp.sqrt(jnp.sum(x * x, axis=tuple(range(1, x.ndim)), keepdims=True))


def _floor(floor: float | None, dtype):
    """What a norm is floored at before it divides: the caller's value, else the smallest normal float."""
    return jnp.finfo(dtype).tiny if floor is None else floor


def project_ball(delta: jax.Array, eps, norm: str, *, floor: float | None = None) -> jax.Array:
    """Projects perturbations [n, H, W, C] onto the eps-ball (no pixel range involved).

    L-inf: ``clip(delta, -eps, eps)``. L2: ``delta * min(1, eps / max(||delta||, floor))``
    per image. ``eps`` may be a traced scalar.
    """
    if norm == "linf":
        return jnp.clip(delta, -eps, eps)
    if norm == "l2":
        d_norm = _per_image_norm(delta)
        return delta * jnp.minimum(1.0, eps / jnp.maximum(d_norm, _floor(floor, delta.dtype)))
    raise unknown_norm(norm)


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
    return jnp.clip(x_clean + project_ball(x - x_clean, eps, norm), 0.0, 1.0)


def clip_delta(delta, x_clean):
    """``clip(x_clean + delta, 0, 1) - x_clean``: the perturbation that keeps the images valid.

    Since x_clean is in [0, 1], this only shrinks entries of ``delta`` toward 0, so a
    perturbation inside the ball stays inside. Numpy when both inputs are numpy.
    """
    xp = _xp(delta, x_clean)
    return xp.clip(x_clean + delta, 0.0, 1.0) - x_clean


def project_delta(delta: jax.Array, x_clean: jax.Array, eps, norm: str, *, floor: float | None = None) -> jax.Array:
    """A perturbation [n, H, W, C] projected onto the eps-ball, then onto valid pixels (:func:`clip_delta`).

    PGD in perturbation space (adversarial training, EM's sample-wise noise); ``eps``
    may be traced.
    """
    return clip_delta(project_ball(delta, eps, norm, floor=floor), x_clean)


def linf_box(x_clean: jax.Array, eps) -> tuple[jax.Array, jax.Array]:
    """The L-inf ball intersected with [0, 1] as per-pixel bounds ``(lo, hi)``, each like ``x_clean``.

    ``clip(x, lo, hi)`` projects onto it in one step; it equals clipping to
    ``[x_clean - eps, x_clean + eps]`` and then to [0, 1] exactly (min and max do not
    round), but not :func:`project`, whose ``x_clean + (x - x_clean)`` rounds.
    """
    return jnp.clip(x_clean - eps, 0.0, 1.0), jnp.clip(x_clean + eps, 0.0, 1.0)


def ascent_direction(grad: jax.Array, norm: str, *, floor: float | None = None) -> jax.Array:
    """Unit steepest-ascent direction of the given norm.

    L-inf: ``sign(g)``. L2: ``g / max(||g||, floor)`` per image (zero where the gradient is zero).

    Args:
      grad: [n, H, W, C] gradient of the loss w.r.t. the images.
      norm: "linf" or "l2".
      floor: smallest L2 norm divided by; None: ``finfo(grad.dtype).tiny``.

    Returns:
      [n, H, W, C] direction.
    """
    if norm == "linf":
        return jnp.sign(grad)
    if norm == "l2":
        return grad / jnp.maximum(_per_image_norm(grad), _floor(floor, grad.dtype))
    raise unknown_norm(norm)


def ascent_step(grad: jax.Array, step_size, norm: str, *, floor: float | None = None,
                scale_first: bool = False) -> jax.Array:
    """One steepest-ascent step [n, H, W, C]: ``step_size * ascent_direction(grad, norm)``.

    Subtract it for descent (EM, SEP's targeted steps). ``scale_first`` (L2 only)
    computes ``(step_size * g) / max(||g||, floor)`` instead of
    ``step_size * (g / max(||g||, floor))``: the same number up to rounding, kept
    because adversarial training has always computed it that way.
    """
    if scale_first and norm == "l2":
        return step_size * grad / jnp.maximum(_per_image_norm(grad), _floor(floor, grad.dtype))
    return step_size * ascent_direction(grad, norm, floor=floor)


def random_delta(key: jax.Array, shape: tuple[int, ...], dtype, eps, norm: str, *,
                 floor: float | None = None) -> jax.Array:
    """A uniformly random perturbation of the eps-ball for each of ``shape[0]`` images.

    L-inf: i.i.d. uniform in [-eps, eps] per pixel. L2: uniform in the ball
    (Gaussian direction, radius ``eps * U^(1/d)``, d = pixels per image). Not clipped
    to any image: see :func:`random_start` and :func:`clip_delta`.

    Args:
      key: PRNG key.
      shape: [n, H, W, C].
      dtype: float dtype of the draw.
      eps: budget.
      norm: "linf" or "l2".
      floor: as in :func:`ascent_direction` (normalising the Gaussian direction).
    """
    if norm == "linf":
        return jax.random.uniform(key, shape, dtype, -eps, eps)
    if norm == "l2":
        k_dir, k_rad = jax.random.split(key)
        direction = jax.random.normal(k_dir, shape, dtype)
        direction = direction / jnp.maximum(_per_image_norm(direction), _floor(floor, dtype))
        dim = math.prod(shape[1:])
        radius = eps * jax.random.uniform(k_rad, (shape[0],) + (1,) * (len(shape) - 1), dtype) ** (1.0 / dim)
        return direction * radius
    raise unknown_norm(norm)


def random_start(key: jax.Array, x_clean: jax.Array, eps: float, norm: str) -> jax.Array:
    """A uniformly random point of the eps-ball around each image, projected (:func:`project`) into [0, 1].

    Args:
      key: PRNG key.
      x_clean: [n, H, W, C] clean images.
      eps: budget.
      norm: "linf" or "l2".

    Returns:
      [n, H, W, C] starting images.
    """
    delta = random_delta(key, x_clean.shape, x_clean.dtype, eps, norm)
    return project(x_clean + delta, x_clean, eps, norm)
