"""The budget check every writer of released images runs.

Budgets are in [0, 1] pixel units (eps = 8/255 allows 8 uint8 levels). Poison
directories store uint8, so the budget must hold *after* rounding:
:func:`ntga.pixels.quantize_to_budget` rounds within it and :func:`check_budget`
checks it, on :func:`ntga.pixels.perturbation_norms` measured in float64 on the
stored arrays, so anyone can re-check a released set with numpy alone.
"""

from __future__ import annotations

import math

import numpy as np

from ntga.errors import UserInputError
from ntga.pixels import check_norm, perturbation_norms

__all__ = ["BUDGET_RTOL", "check_budget"]

# Absorbs float rounding, so an image exactly at the budget after uint8 rounding passes.
BUDGET_RTOL = 1e-6


def _check_eps(eps: float) -> float:
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        raise UserInputError(f"eps must be a number, got {eps!r}") from None
    if not (math.isfinite(eps) and eps >= 0.0):
        raise UserInputError(f"eps must be a finite number >= 0, got {eps}")
    return eps


def check_budget(x_clean: np.ndarray, x_poison: np.ndarray, eps: float, norm: str) -> None:
    """Raises UserInputError unless every image is within ``eps`` of its clean version.

    Args:
      x_clean, x_poison: [N, H, W, C] uint8, or float in [0, 1].
      eps: the budget in [0, 1] pixel units (e.g. 8/255).
      norm: "linf" or "l2" (per image, over all pixels).

    A relative tolerance of 1e-6 absorbs float rounding, so an image exactly at
    the budget after uint8 rounding (e.g. 8 levels for eps = 8/255) passes.
    """
    check_norm(norm)
    eps = _check_eps(eps)
    norms = perturbation_norms(x_clean, x_poison, norm)
    over = norms > eps * (1.0 + BUDGET_RTOL)
    if np.any(over):
        worst = int(np.argmax(norms))
        raise UserInputError(
            f"{int(over.sum())} of {len(norms)} images exceed the {norm} budget eps = {eps:.6g}; "
            f"worst is image {worst} with {norm} norm {norms[worst]:.6g} ({norms[worst] * 255:.4g}/255)"
        )
