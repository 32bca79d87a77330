"""Pixels and budgets: the ground floor under the attack, the methods and the breakers.

Conventions: images are [N, H, W, C]; the attack, every method and the victims
compute on floats in [0, 1]; poison directories and datasets store uint8. A
budget ``eps`` is in [0, 1] pixel units (8/255 allows 8 uint8 levels), L-inf per
pixel or L2 per image over all its pixels and channels (:data:`NORMS`).

Usage::

    from ntga import pixels

    x = pixels.to_float(x_uint8)                                   # [N, H, W, C] float32 in [0, 1]
    x_adv = pixels.project(x + pixels.ascent_step(g, 2 / 255, "linf"), x, 8 / 255, "linf")
    x_out = pixels.quantize_to_budget(x_adv, x, 8 / 255, "linf")   # uint8, still within 8/255

Modules: ``_convert`` (uint8 <-> float, :func:`check_images`), ``_ball``
(projections, ascent steps, random starts), ``_rounding`` (rounding within the
budget, perturbation norms). Only numpy, jax and ``ntga.errors`` are imported
here, never ``ntga.attack``, ``ntga.methods`` or ``defenses``, so every layer may
build on it; ``ntga.budget.check_budget`` is the check writers run.
"""

from ntga.pixels._ball import (
    NORMS,
    ascent_direction,
    ascent_step,
    check_norm,
    clip_delta,
    linf_box,
    project,
    project_ball,
    project_delta,
    random_delta,
    random_start,
)
from ntga.pixels._convert import PIXEL_TOL, as_float, as_uint8, check_images, to_float, to_uint8
from ntga.pixels._rounding import perturbation_norms, quantize_to_budget, uint8_linf_cap

__all__ = [
    "NORMS",
    "PIXEL_TOL",
    "as_float",
    "as_uint8",
    "ascent_direction",
    "ascent_step",
    "check_images",
    "check_norm",
    "clip_delta",
    "linf_box",
    "perturbation_norms",
    "project",
    "project_ball",
    "project_delta",
    "quantize_to_budget",
    "random_delta",
    "random_start",
    "to_float",
    "to_uint8",
    "uint8_linf_cap",
]
