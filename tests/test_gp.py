"""ntga.gp: the NTK-GP mean (reference semantics) and its divided-difference gradient."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from ntga import gp

FIXTURE = Path(__file__).parent / "fixtures" / "nt_gp_reference.npz"


def plain_alpha(k, y, t, diag_reg=1e-4):
    """The textbook formula with expm and a solve: differentiable without eigh."""
    n = k.shape[0]
    k_reg = k + diag_reg * jnp.trace(k) / n * jnp.eye(n, dtype=k.dtype)
    tau = t / y.size
    return jnp.linalg.solve(k_reg, (jnp.eye(n, dtype=k.dtype) - jax.scipy.linalg.expm(-k_reg * tau)) @ y)


# Whole-function jit: one compile per shape instead of one per primitive in eager mode.
ours = jax.jit(gp.gp_mean_coefficients)
plain = jax.jit(plain_alpha)


def weighted_grad(fn, argnums=0):
    """jit(grad(sum(w * fn(k, y, t)))) with k symmetrised (eigh sees only the symmetric part)."""
    return jax.jit(jax.grad(lambda k, y, t, w: jnp.sum(w * fn(0.5 * (k + k.T), y, t)), argnums=argnums))


def spd(rng, n, extra=3, shift=0.0):
    a = rng.normal(size=(n, n + extra))
    return a @ a.T / (n + extra) + shift * np.eye(n)


def labels(rng, n, k):
    return np.eye(k)[rng.integers(0, k, n)]


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.mark.parametrize("t,diag_reg", [(0.5, 1e-4), (64.0, 1e-4), (4096.0, 1e-4), (64.0, 0.1), (10.0, 0.0)])
def test_matches_plain_expm_float64(t, diag_reg):
    rng = np.random.default_rng(1)
    k, y = spd(rng, 6), labels(rng, 6, 3)
    got = ours(jnp.asarray(k), jnp.asarray(y), t, diag_reg)
    want = plain(jnp.asarray(k), jnp.asarray(y), t, diag_reg)
    assert rel_err(got, want) < 1e-9


def test_large_t_is_regularised_kernel_regression():
    rng = np.random.default_rng(2)
    k, y = spd(rng, 6, shift=0.1), labels(rng, 6, 3)
    kv = rng.normal(size=(4, 6))
    k_reg = k + 1e-4 * np.trace(k) / 6 * np.eye(6)
    want = kv @ np.linalg.solve(k_reg, y)
    got = gp.gp_mean(jnp.asarray(kv), jnp.asarray(k), jnp.asarray(y), 1e9)
    assert rel_err(got, want) < 1e-10


def test_small_t_limit_is_tau_times_y():
    # f(l) -> tau as t -> 0 (one gradient step from zero outputs): alpha ~ tau * y.
    rng = np.random.default_rng(3)
    k, y = spd(rng, 6), labels(rng, 6, 3)
    t = 1e-9
    alpha = ours(jnp.asarray(k), jnp.asarray(y), t)
    np.testing.assert_allclose(np.asarray(alpha) / (t / y.size), y, atol=1e-8)


def test_zero_eigenvalue_uses_the_limit():
    # diag_reg=0 on a singular kernel: the null space gets f(0) = tau, not 0/0.
    y = np.eye(6)[:, :3]
    alpha = ours(jnp.zeros((6, 6)), jnp.asarray(y), 8.0, 0.0)
    np.testing.assert_allclose(alpha, y * 8.0 / y.size, rtol=1e-14)


def test_float32_stable_on_rank_deficient_kernel():
    """float32 error stays at eps32 times the conditioning of F(K~) = K~^-1 (I - exp(-K~ tau)).

    Duplicated images make K singular, so K~'s spectrum spans ~5 orders of magnitude.
    (The textbook float32 formula, solve(K~, I - expm(-K~ tau)) y, is off by ~1e-2 at
    t = 1 here and returns NaN at t = 1e7.)
    """
    rng = np.random.default_rng(4)
    feats = rng.uniform(size=(3, 20))
    feats = np.concatenate([feats, feats])
    k64 = feats @ feats.T / 20 + 0.5
    y = labels(rng, 6, 3)
    evals = np.linalg.eigvalsh(k64 + 1e-4 * np.trace(k64) / 6 * np.eye(6))
    for t in (1.0, 64.0, 4096.0, 1e7):
        f = -np.expm1(-evals * t / y.size) / evals
        a32 = ours(jnp.asarray(k64, jnp.float32), jnp.asarray(y, jnp.float32), t)
        a64 = ours(jnp.asarray(k64.astype(np.float32), jnp.float64), jnp.asarray(y), t)
        assert a32.dtype == jnp.float32
        assert np.all(np.isfinite(a32))
        assert rel_err(a32, a64) < 8 * np.finfo(np.float32).eps * f.max() / f.min(), t


@pytest.mark.slow
def test_gradient_matches_plain_expm_float64():
    rng = np.random.default_rng(5)
    k, y, w = jnp.asarray(spd(rng, 6)), jnp.asarray(labels(rng, 6, 3)), jnp.asarray(rng.normal(size=(6, 3)))
    g_ours, g_plain = weighted_grad(ours, (0, 1, 2)), weighted_grad(plain, (0, 1, 2))
    for t in (0.3, 64.0, 2000.0):
        for g, h in zip(g_ours(k, y, t, w), g_plain(k, y, t, w)):
            assert rel_err(g, h) < 1e-8, t


def test_check_grads_numerically():
    rng = np.random.default_rng(6)
    k = jnp.asarray(spd(rng, 4, shift=0.2))
    y = jnp.asarray(rng.normal(size=(4, 2)))
    check_grads(jax.jit(lambda k, y, t: ours(0.5 * (k + k.T), y, t)), (k, y, 30.0), order=1, modes=["rev"],
                atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("eigenvalues", [[2.0] * 6, [1.0, 1.0, 1.0, 3.0, 3.0, 7.0], [0.5, 0.5, 0.5, 1.0, 1.0, 1.0]])
@pytest.mark.slow
def test_gradient_finite_and_exact_with_repeated_eigenvalues(eigenvalues):
    # Differentiating through eigh divides by l_i - l_j = 0 here; the divided differences do not.
    rng = np.random.default_rng(7)
    if len(set(eigenvalues)) == 1:
        k = eigenvalues[0] * np.eye(6)  # exactly c * I: no round-off splits the eigenvalue
    else:
        q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
        k = (q * np.asarray(eigenvalues)) @ q.T
    k = jnp.asarray(k)
    y, w = jnp.asarray(labels(rng, 6, 3)), jnp.asarray(rng.normal(size=(6, 3)))
    got = weighted_grad(ours)(k, y, 64.0, w)
    want = weighted_grad(plain)(k, y, 64.0, w)
    assert np.all(np.isfinite(got))
    assert rel_err(got, want) < 1e-8
    g32 = weighted_grad(ours)(k.astype(jnp.float32), y.astype(jnp.float32), 64.0, w.astype(jnp.float32))
    assert np.all(np.isfinite(g32))
    assert rel_err(g32, got) < 1e-4


def test_gradient_near_degenerate_spectrum():
    # Gaps of 1e-9: the definition of G_ij would cancel catastrophically; the Taylor branch does not.
    rng = np.random.default_rng(8)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    k = jnp.asarray((q * np.asarray([1.0, 1.0 + 1e-9, 1.0 + 2e-9, 4.0, 4.0 + 1e-9, 9.0])) @ q.T)
    y, w = jnp.asarray(labels(rng, 6, 3)), jnp.asarray(rng.normal(size=(6, 3)))
    for t in (1.0, 100.0):
        assert rel_err(weighted_grad(ours)(k, y, t, w), weighted_grad(plain)(k, y, t, w)) < 1e-7


def test_float32_gradient_close_to_float64():
    rng = np.random.default_rng(9)
    k, y, w = spd(rng, 6), labels(rng, 6, 3), rng.normal(size=(6, 3))
    g32 = weighted_grad(ours)(*(jnp.asarray(a, jnp.float32) for a in (k, y)), 64.0, jnp.asarray(w, jnp.float32))
    g64 = weighted_grad(ours)(jnp.asarray(k), jnp.asarray(y), 64.0, jnp.asarray(w))
    assert g32.dtype == jnp.float32
    assert rel_err(g32, g64) < 1e-4


def test_jit_matches_eager():
    rng = np.random.default_rng(10)
    k, y, kv = jnp.asarray(spd(rng, 6)), jnp.asarray(labels(rng, 6, 3)), jnp.asarray(rng.normal(size=(3, 6)))
    eager = gp.gp_mean(kv, k, y, 64.0)
    jitted = jax.jit(gp.gp_mean)(kv, k, y, 64.0)
    np.testing.assert_allclose(jitted, eager, rtol=1e-12)
    assert eager.shape == (3, 3)


def test_matches_neural_tangents_oracle():
    """Parity with nt.predict.gradient_descent_mse_ensemble (fixture written by benchmarks/nt_gp_reference.py)."""
    ref = np.load(FIXTURE, allow_pickle=False)
    num = int(ref["num_cases"])
    assert num >= 8
    mean_fn = jax.jit(gp.gp_mean)
    for i in range(num):
        c = {name: ref[f"case{i}_{name}"] for name in ("ktt", "kvt", "y", "t", "diag_reg", "mean")}
        got = mean_fn(jnp.asarray(c["kvt"]), jnp.asarray(c["ktt"]), jnp.asarray(c["y"]), float(c["t"]),
                      float(c["diag_reg"]))
        assert rel_err(got, c["mean"]) < 1e-6, i
