"""Closed-form NTK-GP mean predictions, with a stable gradient through the spectral solve.

An infinitely wide network trained by gradient descent on the MSE loss, from
zero initial outputs, predicts at time ``t`` (Lee et al. 2019, eq. 10-11)::

    f(x_test, t) = K_vt K~^-1 (I - exp(-K~ tau)) y,   tau = t / (n * k),
    K~ = K_tt + diag_reg * trace(K_tt) / n * I.

This is the NTGA reference's semantics (neural-tangents'
``gradient_descent_mse_ensemble`` mean with ``get="ntk"``): the regulariser is
relative to the mean diagonal and time is normalised by ``y_train.size``, so a
paper's ``t`` means the same thing here. Changing the block size changes the
meaning of ``t``.

The matrix function ``F(K~) = K~^-1 (I - exp(-K~ tau))`` is applied through one
eigendecomposition, ``F = V diag(f(l)) V^T`` with ``f(l) = -expm1(-l tau) / l``.
Differentiating through ``eigh`` would involve ``1 / (l_i - l_j)``, which blows
up for (near-)repeated eigenvalues -- common for kernels of similar images. We
instead give the spectral solve a custom VJP from the Daleckii-Krein theorem:
``dF = V (G o (V^T dK V)) V^T`` with the divided differences
``G_ij = (f(l_i) - f(l_j)) / (l_i - l_j)`` and ``G_ii = f'(l_i)``, evaluated
with a Taylor expansion when ``l_i ~ l_j``. ``G`` is bounded because ``f`` is
smooth, so the gradient is finite for exactly repeated eigenvalues.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["gp_mean_coefficients", "gp_mean", "regularize"]

# Terms of the positive Kummer series used for x < _SERIES_MAX (see _moment).
# Term j is bounded by 2**j / (j+1)!, below 1e-17 of the sum after 24 terms.
_SERIES_TERMS = 24
_SERIES_MAX = 2.0


def regularize(k_train_train: jax.Array, diag_reg: float) -> jax.Array:
    """Adds the reference's relative ridge: ``K + diag_reg * trace(K) / n * I``.

    Args:
      k_train_train: [n, n] kernel of the training block.
      diag_reg: regulariser relative to the mean of the diagonal.

    Returns:
      [n, n] regularised kernel ``K~``.
    """
    n = k_train_train.shape[0]
    scale = diag_reg * jnp.trace(k_train_train) / n
    return k_train_train + scale * jnp.eye(n, dtype=k_train_train.dtype)


def _moment(x: jax.Array, k: int) -> jax.Array:
    """``m_k(x) = integral_0^1 u^k exp(-x u) du`` for ``x >= 0``, stable everywhere.

    ``phi(x) = -expm1(-x) / x = m_0(x)`` and its derivatives are
    ``phi^(k) = (-1)^k m_k``. For small ``x`` the closed form cancels
    catastrophically, so there we use the all-positive series
    ``m_k(x) = exp(-x) * sum_j x^j / ((k+1)(k+2)...(k+1+j))``; for larger ``x``
    the closed form ``k!/x^(k+1) (1 - exp(-x) sum_{j<=k} x^j / j!)`` loses at
    most one digit. Exponentials are combined in log space so that float32
    cannot overflow for large ``x``.
    """
    small = x < _SERIES_MAX
    xs = jnp.where(small, x, 0.0)
    term = jnp.ones_like(xs) / (k + 1)
    total = term
    for j in range(1, _SERIES_TERMS):
        term = term * xs / (k + 1 + j)
        total = total + term
    series = jnp.exp(-xs) * total

    xl = jnp.where(small, _SERIES_MAX, x)
    log_xl = jnp.log(xl)
    tail = sum(jnp.exp(j * log_xl - xl - math.lgamma(j + 1)) for j in range(k + 1))
    closed = math.factorial(k) * jnp.exp(-(k + 1) * log_xl) * (1.0 - tail)
    return jnp.where(small, series, closed)


def _phi(x: jax.Array) -> jax.Array:
    """``-expm1(-x) / x`` with the limit 1 at 0 (x >= 0)."""
    return _moment(x, 0)


def _divided_difference_phi(x: jax.Array) -> jax.Array:
    """[n, n] first divided differences of ``phi`` at the points ``x`` [n].

    Far apart points use the definition. Close points (relative to ``max(1, x)``,
    the scale on which ``phi`` varies) use the midpoint expansion
    ``phi'(c) + d^2/24 phi'''(c)``, accurate to ``O(d^4)``. The switch-over
    ``delta`` balances the definition's rounding error (``eps / delta``) against
    the truncation error (``delta^4 / 16``): about 1e-13 in float64, 2e-6 in float32.
    """
    eps = jnp.finfo(x.dtype).eps
    delta = (16.0 * eps) ** 0.2
    a, b = x[:, None], x[None, :]
    d = a - b
    c = 0.5 * (a + b)
    close = jnp.abs(d) <= delta * jnp.maximum(1.0, c)
    safe_d = jnp.where(close, 1.0, d)
    direct = (_phi(a) - _phi(b)) / safe_d
    taylor = -_moment(c, 1) - (d * d / 24.0) * _moment(c, 3)
    return jnp.where(close, taylor, direct)


def _eigen(k_reg: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Eigendecomposition with tiny negative eigenvalues (round-off) clipped to 0."""
    evals, evecs = jnp.linalg.eigh(k_reg)
    return jnp.maximum(evals, 0.0), evecs


@jax.custom_vjp
def _spectral_solve(k_reg: jax.Array, y: jax.Array, tau: jax.Array) -> jax.Array:
    """``V diag(f(l)) V^T y`` with ``f(l) = -expm1(-l tau) / l`` (limit ``tau`` at 0)."""
    evals, evecs = _eigen(k_reg)
    return evecs @ (tau * _phi(evals * tau)[:, None] * (evecs.T @ y))


def _spectral_solve_fwd(k_reg, y, tau):
    evals, evecs = _eigen(k_reg)
    vty = evecs.T @ y
    alpha = evecs @ (tau * _phi(evals * tau)[:, None] * vty)
    return alpha, (evals, evecs, vty, tau)


def _spectral_solve_bwd(res, g_alpha):
    evals, evecs, vty, tau = res
    x = evals * tau
    vtg = evecs.T @ g_alpha  # [n, k]
    # d alpha = dF y with dF = V (G o (V^T dK V)) V^T, so <g, dF y> = <dK, V (G o (V^T g y^T V)) V^T>.
    # The rank-k outer product is symmetrised because eigh only sees the symmetric part of K~.
    outer = vtg @ vty.T
    sym = 0.5 * (outer + outer.T)
    g_div = (tau * tau) * _divided_difference_phi(x)
    g_k = evecs @ (g_div * sym) @ evecs.T
    # F is symmetric, so the cotangent of y is F g.
    g_y = evecs @ (tau * _phi(x)[:, None] * vtg)
    # d f(l) / d tau = exp(-l tau), so <g, dalpha/dtau> = sum_i exp(-l_i tau) (V^T g)_i . (V^T y)_i.
    g_tau = jnp.sum(jnp.exp(-x) * jnp.sum(vtg * vty, axis=1))
    return g_k, g_y, jnp.reshape(g_tau, jnp.shape(tau)).astype(jnp.result_type(tau))


_spectral_solve.defvjp(_spectral_solve_fwd, _spectral_solve_bwd)


def gp_mean_coefficients(
    k_train_train: jax.Array, y_train: jax.Array, t: float, diag_reg: float = 1e-4
) -> jax.Array:
    """Coefficients ``alpha`` of the NTK-GP mean, so that ``f(x) = K(x, X) @ alpha``.

    ``alpha = K~^-1 (I - exp(-K~ tau)) y`` with ``K~ = K + diag_reg * trace(K)/n * I``
    and ``tau = t / (n * k)``, computed through ``eigh`` (stable in float32:
    ``-expm1(-l tau) / l`` with the limit ``tau`` as ``l -> 0``). Differentiable
    in ``k_train_train``, ``y_train`` and ``t`` with a divided-difference VJP
    that stays finite for repeated eigenvalues.

    Args:
      k_train_train: [n, n] symmetric NTK of the training block.
      y_train: [n, k] training targets (one-hot labels).
      t: training time (the paper's ``t``), > 0; ``jnp.inf`` is not supported
        (use a large finite ``t`` for the kernel-regression limit).
      diag_reg: ridge relative to the mean diagonal of ``k_train_train``.

    Returns:
      [n, k] coefficients ``alpha``.
    """
    k_reg = regularize(k_train_train, diag_reg)
    dtype = k_reg.dtype
    tau = jnp.asarray(t, dtype=dtype) / y_train.size
    return _spectral_solve(k_reg, y_train.astype(dtype), tau)


def gp_mean(
    k_test_train: jax.Array,
    k_train_train: jax.Array,
    y_train: jax.Array,
    t: float,
    diag_reg: float = 1e-4,
) -> jax.Array:
    """NTK-GP mean prediction at time ``t`` (reference semantics, zero initial outputs).

    Args:
      k_test_train: [m, n] NTK between test and training inputs.
      k_train_train: [n, n] NTK of the training inputs.
      y_train: [n, k] training targets.
      t: training time, > 0.
      diag_reg: ridge relative to the mean diagonal of ``k_train_train``.

    Returns:
      [m, k] predicted outputs ``K_vt K~^-1 (I - exp(-K~ t / (n k))) y``.
    """
    return k_test_train @ gp_mean_coefficients(k_train_train, y_train, t, diag_reg)
