"""The ``filter`` breaker: drop the rows a detector finds most suspicious, train on the rest.

A scraper who suspects that part of the data is protected can score every
training row with a detector of :mod:`defenses.detectors` (on the training
data alone: no clean reference, no protection labels) and discard the most
suspicious ones. Two rules, both label-free:

* ``share=S``: drop the ``ceil(S * N)`` rows with the highest scores (ties broken
  by row order, so the result is deterministic);
* ``share`` unset: drop the rows scoring above Otsu's threshold
  (:func:`defenses.detectors.metrics.otsu_threshold`), which splits the score
  distribution in two where the between-group variance is largest. On data with
  no protected rows this still drops a group (the upper part of a unimodal
  distribution): the rule assumes protection is present.

The breaker changes the number of training rows; the trainer takes any N at
least the batch size, and breakers composed after it (``filter+jpeg``) see the
kept rows. Composed after an image breaker (``jpeg+filter``) the detector scores
the transformed images.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from ntga.errors import UserInputError


def kept_rows(scores: np.ndarray, share: float | None) -> np.ndarray:
    """Sorted row indices that survive: all but the top ``share`` (or those above Otsu's threshold)."""
    from defenses.detectors.metrics import otsu_threshold

    scores = np.asarray(scores, np.float64)
    n = len(scores)
    if share is None:
        drop = np.flatnonzero(scores > otsu_threshold(scores))
    else:
        count = int(math.ceil(share * n - 1e-9))
        drop = np.argsort(-scores, kind="stable")[:count]
    keep = np.setdiff1d(np.arange(n), drop)
    if len(keep) == 0:
        raise UserInputError("breaker 'filter' would drop every training row; use a smaller share")
    return keep


def filter_rows(x, y, key, *, detector: str, share: float | None, epochs: int, model: str):
    """``prepare`` of the filter breaker: (x [N, ...], y [N]) -> (x [M, ...], y [M]) with M <= N."""
    from defenses.detectors import ModelConfig, parse_detector, score_rows

    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise UserInputError(f"breaker 'filter': labels must be integers [N={len(x)}], got {y.dtype} {y.shape}")
    cfg = ModelConfig(model=model, epochs=epochs)
    scores = score_rows(np.asarray(x), y, int(y.max()) + 1, parse_detector(detector), key=key, model_cfg=cfg,
                        log=lambda line: print(line, file=sys.stderr))
    keep = kept_rows(scores, share)
    rule = f"share {share:g}" if share is not None else "Otsu's threshold"
    print(f"breaker filter@detector={detector}: dropped {len(x) - len(keep)} of {len(x)} rows ({rule})",
          file=sys.stderr)
    return x[keep], y[keep]


__all__ = ["filter_rows", "kept_rows"]
