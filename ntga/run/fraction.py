"""``--fraction``: protect only a share of each class; the rest stays clean.

Real data owners rarely control all the data a model is trained on, so every
method can be run on a per-class share: ``round(fraction * count_k)`` examples
of each class k (halves round up), chosen by a seeded permutation drawn from
its own stream (``default_rng([seed, 2])``), so the choice does not depend on
the method and the same seed protects the same rows for every method.
"""

from __future__ import annotations

import numpy as np

from ntga.errors import UserInputError


def check_fraction(fraction: float) -> float:
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise UserInputError(f"--fraction must be in (0, 1] (share of each class to protect), got {fraction}")
    return fraction


def select_protected(y: np.ndarray, num_classes: int, fraction: float, seed: int) -> np.ndarray:
    """Which rows to protect.

    Args:
      y: int [N] labels in [0, num_classes).
      num_classes: K.
      fraction: share of each class, in (0, 1].
      seed: the run's seed.

    Returns:
      int64 [P] sorted row positions; all of ``arange(N)`` when ``fraction == 1``.
    """
    fraction = check_fraction(fraction)
    y = np.asarray(y)
    if fraction == 1.0:
        return np.arange(len(y), dtype=np.int64)
    order = np.random.default_rng([seed, 2]).permutation(len(y))
    chosen = []
    for k in range(num_classes):
        rows = order[y[order] == k]
        chosen.append(rows[: int(np.floor(fraction * len(rows) + 0.5))])
    rows = np.sort(np.concatenate(chosen)).astype(np.int64)
    if len(rows) == 0:
        raise UserInputError(f"--fraction {fraction} protects no image of this {len(y)}-image training set "
                             "(each class gets round(fraction * its size)); use a larger fraction")
    return rows
