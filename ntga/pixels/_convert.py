"""uint8 <-> float conversion and the one validation of image arrays.

The attack, the methods and the breakers compute on floats in [0, 1]; poison
directories and datasets store uint8. Numpy in gives numpy out (host data stay
on the host); jax arrays and tracers give jax arrays.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from ntga.errors import UserInputError

__all__ = ["PIXEL_TOL", "as_float", "as_uint8", "check_images", "to_float", "to_uint8"]

# How far float pixels may stray outside [0, 1] and still count as images: float error in the
# arithmetic of whatever produced them (e.g. x / 255 * 255 / 255), never a different convention.
PIXEL_TOL = 1e-6


def _xp(*arrays):
    """numpy when every input is a numpy array or scalar, jax.numpy otherwise."""
    return np if all(isinstance(a, (np.ndarray, np.generic)) for a in arrays) else jnp


def to_float(x_uint8, dtype=np.float32):
    """uint8 pixels [...] -> floats in [0, 1] of ``dtype`` (``x / 255``)."""
    xp = _xp(x_uint8)
    return xp.asarray(x_uint8).astype(dtype) / xp.asarray(255, dtype=dtype)


def to_uint8(x, dtype=None):
    """Floats in [0, 1] [...] -> nearest uint8 pixels (clipped first; ties to even).

    Args:
      x: float pixels [...].
      dtype: float type of the arithmetic; None computes in ``x``'s own dtype (the attack,
        the methods, foreign poisons). :func:`as_uint8` passes float64: for float32 input,
        ``x * 255`` in float32 can land on the other side of a .5 tie than in float64, so
        the two settings can differ by one level on rare pixels.

    Returns:
      uint8 [...], numpy for numpy input.
    """
    xp = _xp(x)
    if dtype is not None:
        x = xp.asarray(x).astype(dtype)
    return xp.round(xp.clip(x, 0.0, 1.0) * 255.0).astype(xp.uint8)


def as_float(x, dtype=np.float32, *, clip: bool = True):
    """uint8 [0, 255] or float [0, 1] images [...] -> floats of ``dtype``.

    uint8 goes through :func:`to_float`. Floats are cast and, with ``clip``, clipped to
    [0, 1]: the breakers clip, since a float-producing breaker earlier in a ``+`` chain
    may stray by rounding; the trainer and the previews pass ``clip=False`` (their
    floats were checked by :func:`check_images`, or are shown as they are).
    """
    if x.dtype == np.uint8:
        return to_float(x, dtype)
    xp = _xp(x)
    x = xp.asarray(x).astype(dtype)
    return xp.clip(x, 0.0, 1.0) if clip else x


def as_uint8(x: np.ndarray) -> np.ndarray:
    """uint8 images pass through; float [0, 1] images are rounded to uint8 in float64 (numpy).

    The breakers' convention (JPEG encodes uint8). Same levels as the historical
    ``clip(rint(x * 255), 0, 255)``: clipping before or after rounding cannot differ, so
    the float64 arithmetic is the only difference from :func:`to_uint8`'s default.
    """
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x
    return to_uint8(x, np.float64)


def check_images(x: Any, name: str, *, strict: bool = True, add_channel: bool = False) -> np.ndarray:
    """Validates images: [N, H, W, C], uint8 in [0, 255] or float in [0, 1].

    Used by the trainer (``ntga.train``), the breakers and foreign poisons
    (``defenses.evaluation.inputs``); each adds only what is its own (victim sizes, the
    clean dataset's shape).

    Args:
      x: the images (anything ``np.asarray`` takes).
      name: how messages name the array, e.g. ``"x_train"``.
      strict: also require at least one image and finite float values within
        [0, 1] (up to :data:`PIXEL_TOL` outside). False checks layout and dtype only:
        the breakers clip floats themselves.
      add_channel: accept greyscale [N, H, W] as [N, H, W, 1].

    Returns:
      ``x`` as an ndarray [N, H, W, C] of its own dtype.

    Raises:
      UserInputError: naming the bad shape, dtype or value range and what is accepted.
    """
    x = np.asarray(x)
    if add_channel and x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        also = " (or [N, H, W])" if add_channel else ""
        raise UserInputError(f"{name}: expected images [N, H, W, C]{also}, got shape {x.shape}")
    if strict and x.shape[0] == 0:
        raise UserInputError(f"{name}: no images (expected at least one)")
    if x.dtype != np.uint8:
        _check_float_dtype(x, name)
        if strict:
            check_unit_range(x, name, tol=PIXEL_TOL)
    return x


def _check_float_dtype(x: np.ndarray, name: str) -> None:
    if not np.issubdtype(x.dtype, np.floating):
        raise UserInputError(f"{name}: expected uint8 in [0, 255] or float in [0, 1], got dtype {x.dtype}")


def check_unit_range(x: np.ndarray, name: str, tol: float = 0.0) -> None:
    """Raises unless the floats ``x`` are finite and within [-tol, 1 + tol] (empty passes)."""
    if x.size == 0:
        return
    lo, hi = float(np.min(x)), float(np.max(x))  # NaN anywhere makes both NaN
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -tol or hi > 1 + tol:
        found = "NaN" if np.isnan(lo) else f"[{lo:g}, {hi:g}]"
        hint = " (divide by 255 first?)" if 1 < hi <= 255 else ""
        raise UserInputError(f"{name}: float images must lie in [0, 1], found {found}{hint}")


def unit_float64(x: np.ndarray, name: str) -> np.ndarray:
    """uint8, or float in [0, 1] exactly (no tolerance), -> float64 in [0, 1] (numpy).

    What the budget is measured on, so anyone can re-check a released set with numpy alone.
    """
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return to_float(x, np.float64)
    _check_float_dtype(x, name)
    x = x.astype(np.float64)
    check_unit_range(x, name)
    return x
