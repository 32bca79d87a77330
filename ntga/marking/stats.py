"""Exact p-values of the radioactive-data tests, in log space (float64, numpy and ``math`` only).

* :func:`cosine_log_pvalue`: P(c >= c_obs) for the cosine c between a fixed unit
  vector and a uniformly random direction in R^d (the null hypothesis "this
  classifier row owes nothing to the carrier"): for c_obs >= 0 it is
  0.5 * I_{1 - c_obs^2}((d - 1) / 2, 1 / 2), with I the regularised incomplete
  beta function (Sablayrolles et al., ICML 2020, Sec. 4).
* :func:`fisher_log_pvalue`: Fisher's combination of independent p-values,
  -2 sum log p_k ~ chi^2 with 2K degrees of freedom, whose survival function
  has a closed form for even degrees of freedom.
* :func:`paired_t_log_pvalue`: the one-sided paired t-test of the black-box
  test (Student's t survival function, again an incomplete beta); when every
  difference is the same the t statistic is undefined and the exact sign test
  takes its place.

Everything returns natural logs, so p-values far below 1e-308 (a strong mark
in thousands of dimensions) stay exact instead of rounding to 0. The
incomplete beta is evaluated with its continued fraction (modified Lentz
method), switching to the symmetric form where that converges faster; the
test suite checks it against ``jax.scipy.special.betainc`` and Monte-Carlo draws.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

_TINY = 1e-300
_EPS = 1e-15
_MAX_TERMS = 10_000


def _continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (converges fast for x < (a + 1) / (a + b + 2))."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _MAX_TERMS):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + num / c
            c = c if abs(c) > _TINY else _TINY
            delta = d * c
            h *= delta
        if abs(delta - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def _log_front(a: float, b: float, x: float) -> float:
    """log of x^a (1 - x)^b / (a B(a, b))."""
    log_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    return a * math.log(x) + b * math.log1p(-x) - math.log(a) - log_beta


def log_betainc(a: float, b: float, x: float) -> float:
    """log I_x(a, b), the regularised incomplete beta function, for a, b > 0 and x in [0, 1]."""
    if not (a > 0 and b > 0):
        raise ValueError(f"need a, b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"need x in [0, 1], got {x}")
    if x == 0.0:
        return -math.inf
    if x == 1.0:
        return 0.0
    if x < (a + 1.0) / (a + b + 2.0):
        return _log_front(a, b, x) + math.log(_continued_fraction(a, b, x))
    # I_x(a, b) = 1 - I_{1-x}(b, a), in log space
    other = math.exp(_log_front(b, a, 1.0 - x)) * _continued_fraction(b, a, 1.0 - x)
    return math.log1p(-min(other, 1.0)) if other < 1.0 else -math.inf


def _log_half_tail(log_i: float, positive: bool) -> float:
    """log of 0.5 * I (positive side) or of 1 - 0.5 * I (negative side)."""
    return math.log(0.5) + log_i if positive else math.log1p(-0.5 * math.exp(log_i))


def cosine_log_pvalue(c: float, d: int) -> float:
    """log P(C >= c) for C the cosine of a uniform random direction in R^d with a fixed unit vector.

    Args:
      c: the observed cosine in [-1, 1].
      d: the dimension, >= 2.
    """
    if d < 2:
        raise ValueError(f"need d >= 2, got {d}")
    c = float(min(max(c, -1.0), 1.0))
    x = (1.0 - abs(c)) * (1.0 + abs(c))  # 1 - c^2 without cancellation near |c| = 1
    return _log_half_tail(log_betainc((d - 1) / 2.0, 0.5, x), c >= 0)


def fisher_log_pvalue(log_ps: Sequence[float]) -> float:
    """Fisher's combination of K independent p-values given as natural logs.

    The statistic -2 sum log p_k is chi^2 with 2K degrees of freedom under the null;
    with T = -sum log p_k its survival function is exp(-T) sum_{j<K} T^j / j!.
    """
    log_ps = np.asarray(log_ps, np.float64)
    if log_ps.ndim != 1 or log_ps.size == 0:
        raise ValueError("need a non-empty list of log p-values")
    if np.any(log_ps > 0):
        raise ValueError("log p-values must be <= 0")
    t = float(-log_ps.sum())
    if math.isinf(t):
        return -math.inf
    if t == 0.0:
        return 0.0
    terms = np.array([j * math.log(t) - math.lgamma(j + 1) for j in range(log_ps.size)])
    top = terms.max()
    return min(0.0, -t + top + math.log(np.exp(terms - top).sum()))


def student_t_log_sf(t: float, dof: float) -> float:
    """log P(T >= t) for Student's t with ``dof`` degrees of freedom."""
    x = dof / (dof + t * t)
    return _log_half_tail(log_betainc(dof / 2.0, 0.5, x), t >= 0)


def paired_t_log_pvalue(diff: np.ndarray) -> tuple[float, float | None]:
    """One-sided paired t-test of H1: mean(diff) > 0.

    Args:
      diff: [n] paired differences, n >= 2.

    Returns:
      (log p, t statistic). When all differences are equal (sd 0) t is undefined and
      returned as None; p is then the exact one-sided sign test's: 2^-n when they are
      all positive (every pair on the side of H1), 1 when they are zero or negative.
    """
    diff = np.asarray(diff, np.float64).reshape(-1)
    n = diff.size
    if n < 2:
        raise ValueError(f"a paired test needs at least 2 pairs, got {n}")
    if not np.all(np.isfinite(diff)):
        raise ValueError("the paired differences must be finite")
    mean, sd = float(diff.mean()), float(diff.std(ddof=1))
    if sd == 0.0:
        return (-n * math.log(2.0) if mean > 0 else 0.0), None
    t = mean / (sd / math.sqrt(n))
    return student_t_log_sf(t, n - 1), t


LN10 = math.log(10.0)


def log10(log_p: float) -> float:
    return log_p / LN10


__all__ = ["LN10", "cosine_log_pvalue", "fisher_log_pvalue", "log10", "log_betainc", "paired_t_log_pvalue",
           "student_t_log_sf"]
