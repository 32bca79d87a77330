"""Exact, tie-aware detection metrics (AUROC, average precision, ROC points) and a label-free threshold.

Scores are "higher = more suspicious"; labels are 1 for protected rows, 0 for clean ones.
Ties are handled as every standard definition does:

* AUROC is the Mann-Whitney probability P(score_pos > score_neg) + 0.5 * P(equal), computed
  from average ranks, so a constant score gives exactly 0.5.
* Average precision (AUPRC) is ``sum_k (R_k - R_{k-1}) * P_k`` over the *distinct* score
  thresholds from the highest down (all rows tied at a threshold enter together), the
  step-wise area that scikit-learn's ``average_precision_score`` also reports.
* The ROC curve has one point per distinct threshold, starting at (0, 0).

:func:`otsu_threshold` splits scores into two groups without any protection labels
(Otsu 1979: the split that maximises the between-group variance), for the filter breaker.
"""

from __future__ import annotations

import numpy as np

from ntga.errors import UserInputError


def _checked(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, np.float64).reshape(-1)
    t = np.asarray(labels).reshape(-1)
    if s.shape != t.shape:
        raise UserInputError(f"scores [{s.size}] and labels [{t.size}] differ in length")
    if not np.all(np.isfinite(s)):
        raise UserInputError("scores must be finite")
    t = t.astype(bool)
    if t.all() or not t.any():
        raise UserInputError("AUROC/AUPRC need both protected and clean rows; the labels have only one kind")
    return s, t


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` [N], ties sharing the mean of their ranks."""
    values = np.asarray(values)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), np.float64)
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = 0.5 * (a + 1 + b)
    return ranks


def auroc(scores, labels) -> float:
    """Area under the ROC curve, ties counted one half (Mann-Whitney U / (P * N))."""
    s, t = _checked(scores, labels)
    pos, neg = int(t.sum()), int((~t).sum())
    ranks = average_ranks(s)
    return float((ranks[t].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def _threshold_counts(s: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (descending) and the true/false positives at or above each."""
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last row of each group of equal scores
    tps = np.cumsum(t)[last].astype(np.float64)
    fps = (last + 1 - tps).astype(np.float64)
    return s[last], tps, fps


def average_precision(scores, labels) -> float:
    """Area under the precision-recall curve as average precision over distinct thresholds."""
    s, t = _checked(scores, labels)
    _, tps, fps = _threshold_counts(s, t)
    precision = tps / (tps + fps)
    recall = tps / t.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate, threshold) per distinct threshold, from (0, 0)."""
    s, t = _checked(scores, labels)
    thresholds, tps, fps = _threshold_counts(s, t)
    return (np.r_[0.0, fps / (~t).sum()], np.r_[0.0, tps / t.sum()], np.r_[np.inf, thresholds])


def otsu_threshold(scores) -> float:
    """The score threshold that best splits ``scores`` into two groups (maximal between-group variance).

    Rows with a score strictly above the returned value form the upper ("suspicious")
    group. Exact over every split point of the sorted scores (no histogram bins).

    Raises:
        UserInputError: fewer than two distinct scores (nothing to split).
    """
    s = np.sort(np.asarray(scores, np.float64).reshape(-1))
    if s.size < 2 or s[0] == s[-1]:
        raise UserInputError("a threshold needs at least two distinct scores")
    n = s.size
    cuts = np.flatnonzero(np.diff(s)) + 1  # a split between groups of equal scores only
    csum = np.cumsum(s)
    w0 = cuts / n
    mu0 = csum[cuts - 1] / cuts
    mu1 = (csum[-1] - csum[cuts - 1]) / (n - cuts)
    between = w0 * (1.0 - w0) * np.square(mu0 - mu1)
    best = cuts[int(np.argmax(between))]
    return float(0.5 * (s[best - 1] + s[best]))


__all__ = ["auroc", "average_precision", "average_ranks", "otsu_threshold", "roc_curve"]
