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

The breaker changes the number of training rows; breakers composed after it
(``filter+jpeg``) see the kept rows. Composed after an image breaker
(``jpeg+filter``) the detector scores the transformed images. The sizes are
checked before any training (:func:`rows_left`, used by ``defenses.evaluate``
for every condition): the suspect model of ``cd`` / ``early-loss`` needs at least
``batch_size`` rows (the breaker's own ``filter@batch_size``), and with ``share``
the victims need at least their ``--batch-size`` of the
``N - ceil(share * N)`` rows kept. With ``share`` unset the number kept is known
only after scoring, so that last check happens when the condition trains.
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
        drop = np.argsort(-scores, kind="stable")[:_dropped(n, share)]
    keep = np.setdiff1d(np.arange(n), drop)
    if len(keep) == 0:
        raise UserInputError("breaker 'filter' would drop every training row; use a smaller share")
    return keep


def _dropped(n: int, share: float) -> int:
    return int(math.ceil(share * n - 1e-9))


def rows_left(n: int, *, detector: str, share: float | None, batch_size: int, **_) -> int | None:
    """How many of ``n`` rows the breaker keeps (None with ``share`` unset: known only after scoring).

    Raises:
        UserInputError: ``n`` rows are fewer than the suspect model's batch (``filter@batch_size``),
            or ``share`` would drop every row.
    """
    from defenses.detectors import get_detector

    if get_detector(detector).needs_model and batch_size > n:
        raise UserInputError(f"breaker filter@detector={detector}: its suspect model trains with batch size "
                             f"{batch_size} (filter@batch_size) but only {n} training rows reach it; set "
                             f"filter@batch_size to at most {n}")
    if share is None:
        return None
    left = n - _dropped(n, share)
    if left < 1:
        raise UserInputError(f"breaker 'filter' would drop every one of the {n} training rows; use a smaller share")
    return left


def filter_rows(x, y, key, *, detector: str, share: float | None, epochs: int, model: str, batch_size: int):
    """``prepare`` of the filter breaker: (x [N, ...], y [N]) -> (x [M, ...], y [M]) with M <= N."""
    from defenses.detectors import ModelConfig, parse_detector, score_rows

    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise UserInputError(f"breaker 'filter': labels must be integers [N={len(x)}], got {y.dtype} {y.shape}")
    rows_left(len(x), detector=detector, share=share, batch_size=batch_size)  # fails before any training
    cfg = ModelConfig(model=model, epochs=epochs, batch_size=batch_size)
    scores = score_rows(np.asarray(x), y, int(y.max()) + 1, parse_detector(detector), key=key, model_cfg=cfg,
                        log=lambda line: print(line, file=sys.stderr))
    keep = kept_rows(scores, share)
    rule = f"share {share:g}" if share is not None else "Otsu's threshold"
    print(f"breaker filter@detector={detector}: dropped {len(x) - len(keep)} of {len(x)} rows ({rule})",
          file=sys.stderr)
    return x[keep], y[keep]


__all__ = ["filter_rows", "kept_rows", "rows_left"]
