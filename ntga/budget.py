"""The perturbation budget of released images: per-image norms and the check every writer runs.

Budgets are in [0, 1] pixel units (eps = 8/255 allows 8 uint8 levels). Poison
directories store uint8, so the budget must hold *after* rounding:
:func:`ntga.attack.quantize_to_budget` rounds within it and :func:`check_budget`
checks it, here in float64 on the stored arrays, so anyone can re-check a
released set with numpy alone.
"""

from __future__ import annotations

import math

import numpy as np

from ntga.errors import UserInputError

NORMS = ("linf", "l2")
# Absorbs float rounding, so an image exactly at the budget after uint8 rounding passes.
BUDGET_RTOL = 1e-6


def _unit(x: np.ndarray, name: str) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float64) / 255.0
    if not np.issubdtype(x.dtype, np.floating):
        raise UserInputError(f"{name} must be uint8 or float in [0, 1], got dtype {x.dtype}")
    x = x.astype(np.float64)
    if x.size and not (np.all(np.isfinite(x)) and x.min() >= 0.0 and x.max() <= 1.0):
        raise UserInputError(f"{name} must lie in [0, 1], found values in [{np.nanmin(x)}, {np.nanmax(x)}] (or NaN/inf)")
    return x


def _check_eps_norm(eps: float, norm: str) -> float:
    if norm not in NORMS:
        raise UserInputError(f"unknown norm {norm!r}; accepted: {', '.join(NORMS)}")
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        raise UserInputError(f"eps must be a number, got {eps!r}") from None
    if not (math.isfinite(eps) and eps >= 0.0):
        raise UserInputError(f"eps must be a finite number >= 0, got {eps}")
    return eps


def perturbation_norms(x_clean: np.ndarray, x_poison: np.ndarray, norm: str, chunk: int = 4096) -> np.ndarray:
    """Per-image perturbation norms in [0, 1] pixel units.

    Args:
      x_clean, x_poison: [N, ...] uint8, or float in [0, 1]; same shape.
      norm: "linf" (max |delta|) or "l2" (sqrt of the sum of squares over all pixels of one image).

    Returns:
      float64 [N].
    """
    _check_eps_norm(0.0, norm)
    x_clean, x_poison = np.asarray(x_clean), np.asarray(x_poison)
    if x_clean.shape != x_poison.shape or x_clean.ndim < 1:
        raise UserInputError(f"clean images {x_clean.shape} and poisoned images {x_poison.shape} must have the same shape [N, ...]")
    out = np.empty(x_clean.shape[0], np.float64)
    # Chunked so a 50k-image CIFAR set never needs a float64 copy of the whole array.
    for start in range(0, x_clean.shape[0], chunk):
        sl = slice(start, start + chunk)
        delta = (_unit(x_poison[sl], "poisoned images") - _unit(x_clean[sl], "clean images")).reshape(len(out[sl]), -1)
        out[sl] = np.abs(delta).max(axis=1, initial=0.0) if norm == "linf" else np.sqrt(np.sum(delta * delta, axis=1))
    return out


def check_budget(x_clean: np.ndarray, x_poison: np.ndarray, eps: float, norm: str) -> None:
    """Raises UserInputError unless every image is within ``eps`` of its clean version.

    Args:
      x_clean, x_poison: [N, H, W, C] uint8, or float in [0, 1].
      eps: the budget in [0, 1] pixel units (e.g. 8/255).
      norm: "linf" or "l2" (per image, over all pixels).

    A relative tolerance of 1e-6 absorbs float rounding, so an image exactly at
    the budget after uint8 rounding (e.g. 8 levels for eps = 8/255) passes.
    """
    eps = _check_eps_norm(eps, norm)
    norms = perturbation_norms(x_clean, x_poison, norm)
    over = norms > eps * (1.0 + BUDGET_RTOL)
    if np.any(over):
        worst = int(np.argmax(norms))
        raise UserInputError(
            f"{int(over.sum())} of {len(norms)} images exceed the {norm} budget eps = {eps:.6g}; "
            f"worst is image {worst} with {norm} norm {norms[worst]:.6g} ({norms[worst] * 255:.4g}/255)"
        )
