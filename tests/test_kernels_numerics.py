"""ntga.kernels numerics: gradients at x1 == x2, chunking, float32, and checks independent of neural-tangents."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from ntga import kernels

SHAPE = (8, 8, 1)
RELU_AND_ERF = [("cnn", {}), ("fnn", {"activation": "relu", "depth": 3}), ("fnn", {}),
                ("cnn", {"activation": "erf", "stride": 1, "filter_size": 3})]


def _images(key, n, shape=SHAPE, dtype=jnp.float64):
    return jax.random.uniform(key, (n,) + shape, dtype=dtype)


def _ids(params):
    name, overrides = params
    return name + "".join(f"-{k}={v}" for k, v in overrides.items())


# --------------------------------------------------------------------------- gradients at x1 == x2


@pytest.mark.parametrize("params", RELU_AND_ERF, ids=_ids)
@pytest.mark.slow
def test_gradient_of_self_kernel_is_finite_and_exact(params, key):
    """d/dx sum(K(x, x) * w) is finite, and on the diagonal equals finite differences."""
    kf = kernels.make(params[0], **params[1])
    x = _images(key, 3)
    w = jax.random.normal(jax.random.fold_in(key, 1), (3, 3), dtype=jnp.float64)

    @jax.jit
    def grads(a):
        out = []
        for get in ("ntk", "nngp"):
            out.append(jax.grad(lambda a: jnp.sum(kf(a, None, get) * w))(a))  # x2=None
            out.append(jax.grad(lambda a: jnp.sum(kf(a, a, get) * w))(a))     # the same array twice
        return out

    for g in grads(x):
        assert g.shape == x.shape and bool(jnp.all(jnp.isfinite(g)))
    # The diagonal k(x_i, x_i) is a smooth function of x_i (the ReLU angle stays
    # 0), so its exact gradient is checked numerically. check_grads compares
    # reverse mode with central differences along random directions.
    check_grads(jax.jit(lambda a: jnp.diagonal(kf(a, None))), (x,), order=1, modes=("rev",), eps=1e-6, atol=1e-6,
                rtol=1e-6)


@pytest.mark.parametrize("params", RELU_AND_ERF[:2], ids=_ids)
def test_gradient_finite_for_equal_copies_and_zero_images(params, key):
    kf = kernels.make(params[0], **params[1])
    x = _images(key, 2).at[1].set(0.0)  # an all-black image: exactly zero windows
    grad = jax.jit(jax.grad(lambda a, b: jnp.sum(kf(a, b)), argnums=(0, 1)))
    for x2 in (x + 0.0, jnp.zeros_like(x)):
        g1, g2 = grad(x, x2)
        assert bool(jnp.all(jnp.isfinite(g1))) and bool(jnp.all(jnp.isfinite(g2)))


def test_zero_variance_without_bias_is_finite(key):
    """b_std = 0 and a black image: zero variances (0/0 correlations) give finite values and grads."""
    kf = kernels.make("cnn", b_std=0.0)
    x = _images(key, 2).at[0].set(0.0)
    k = jax.jit(lambda a: kf(a, None, ("ntk", "nngp")))(x)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in k)
    assert float(k[0][0, 0]) == 0.0 and float(k[0][0, 1]) == 0.0
    g = jax.jit(jax.grad(lambda a: jnp.sum(kf(a, None))))(x)
    assert bool(jnp.all(jnp.isfinite(g)))


@pytest.mark.parametrize("params", RELU_AND_ERF[:3], ids=_ids)
@pytest.mark.slow
def test_cross_gradients_match_finite_differences(params, key):
    kf = kernels.make(params[0], **params[1])
    x1, x2 = _images(key, 2), _images(jax.random.fold_in(key, 3), 3)
    check_grads(jax.jit(lambda a, b: kf(a, b)), (x1, x2), order=1, modes=("rev",), eps=1e-6, atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------- chunking


@pytest.mark.parametrize("name", ["fnn", "cnn"])
@pytest.mark.slow
def test_chunked_equals_unchunked_values_and_gradients(name, key):
    kf = kernels.make(name)
    x1, x2 = _images(key, 3), _images(jax.random.fold_in(key, 1), 6)
    w = jax.random.normal(jax.random.fold_in(key, 2), (3, 6), dtype=jnp.float64)

    def loss(a, b, chunk):
        ntk, nngp = kf(a, b, ("ntk", "nngp"), chunk_size=chunk)
        return jnp.sum(ntk * w) + jnp.sum(nngp * w * w), (ntk, nngp)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True), static_argnums=2)
    (ref_g1, ref_g2), ref = grad(x1, x2, None)
    for chunk in (4, 3):  # one block + a remainder block; two blocks, no remainder
        (g1, g2), vals = grad(x1, x2, chunk)
        for a, b in zip(vals + (g1, g2), ref + (ref_g1, ref_g2)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_chunked_self_kernel_matches(key):
    kf = kernels.make("cnn")
    x = _images(key, 5)
    chunked = jax.jit(lambda a: kf(a, None, chunk_size=2))(x)
    np.testing.assert_allclose(chunked, jax.jit(kf)(x), rtol=1e-7)


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("params", RELU_AND_ERF, ids=_ids)
def test_float32_follows_inputs_and_is_close_to_float64(params, key):
    kf = kernels.make(params[0], **params[1])
    both = jax.jit(lambda a, b: kf(a, b, ("ntk", "nngp")))
    x1, x2 = _images(key, 3), _images(jax.random.fold_in(key, 1), 2)
    k64 = both(x1, x2)
    k32 = both(x1.astype(jnp.float32), x2.astype(jnp.float32))
    for a, b in zip(k32, k64):
        assert a.dtype == jnp.float32 and b.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=1e-4)
    assert jax.eval_shape(kf, x1.astype(jnp.float32), x2).dtype == jnp.float64  # mixed inputs promote
    g32 = jax.jit(jax.grad(lambda a: jnp.sum(kf(a, None))))(x1.astype(jnp.float32))
    assert g32.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g32)))


# --------------------------------------------------------------------------- independent of neural-tangents


def test_one_layer_closed_forms_against_numpy(key):
    """Dense -> Erf and Dense -> ReLU against the arcsine / arc-cosine formulas written out in numpy."""
    w_std, b_std = 1.3, 0.4
    x1, x2 = np.asarray(_images(key, 3)), np.asarray(_images(jax.random.fold_in(key, 1), 2))
    a, b = x1.reshape(3, -1), x2.reshape(2, -1)
    d = a.shape[1]
    q12 = w_std**2 * (a @ b.T) / d + b_std**2
    q11 = w_std**2 * np.sum(a * a, 1) / d + b_std**2
    q22 = w_std**2 * np.sum(b * b, 1) / d + b_std**2
    prod = q11[:, None] * q22[None, :]

    erf_nngp = 2 / np.pi * np.arcsin(2 * q12 / np.sqrt((1 + 2 * q11)[:, None] * (1 + 2 * q22)[None, :]))
    erf_ntk = q12 * 4 / np.pi / np.sqrt((1 + 2 * q11)[:, None] * (1 + 2 * q22)[None, :] - 4 * q12**2)
    theta = np.arccos(q12 / np.sqrt(prod))
    relu_nngp = (np.sqrt(prod) * np.sin(theta) + (np.pi - theta) * q12) / (2 * np.pi)
    relu_ntk = q12 * (np.pi - theta) / (2 * np.pi)

    for act, nngp, ntk in (("erf", erf_nngp, erf_ntk), ("relu", relu_nngp, relu_ntk)):
        kf = kernels.make("fnn", depth=1, activation=act, W_std=w_std, b_std=b_std)
        got_ntk, got_nngp = kf(x1, x2, ("ntk", "nngp"))
        np.testing.assert_allclose(got_nngp, nngp, rtol=1e-12)
        np.testing.assert_allclose(got_ntk, ntk, rtol=1e-12)


@pytest.mark.slow
def test_cnn_nngp_matches_a_wide_random_network(key):
    """Monte Carlo: one SAME stride-2 conv + ReLU + Flatten + Dense with 8192 channels.

    Given the conv weights, the output covariance over the final Dense is
    W^2 * mean over (positions, channels) of relu(z1) relu(z2) + b^2 exactly;
    averaging over channels estimates the infinite-width NNGP (~1% noise).
    """
    w_std, b_std, width = math.sqrt(1.76), math.sqrt(0.18), 8192
    x = _images(key, 3, shape=(7, 7, 2))
    kw, kb = jax.random.split(jax.random.fold_in(key, 5))
    fan_in = 5 * 5 * 2
    w = jax.random.normal(kw, (5, 5, 2, width), dtype=jnp.float64) * w_std / math.sqrt(fan_in)
    bias = jax.random.normal(kb, (width,), dtype=jnp.float64) * b_std
    z = jax.lax.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    z = z + bias[None, None, None, :]
    f = jax.nn.relu(z).reshape(3, -1)
    empirical = w_std**2 * (f @ f.T) / f.shape[1] + b_std**2
    kf = kernels.make("cnn", depth=1, dense_layers=1)
    np.testing.assert_allclose(kf(x, None, "nngp"), empirical, rtol=0.03)


def test_float32_atan2_is_as_accurate_as_xla_and_float64_is_untouched():
    """The vectorised float32 atan2 of the ReLU kernel: within 2.7e-7 rad everywhere (XLA's: 2.3e-7)."""
    from ntga.kernels._numerics import atan2

    rng = np.random.default_rng(0)
    scale = 10.0 ** rng.uniform(-30, 30, (2, 200_000))
    y, x = (rng.standard_normal((2, 200_000)) * scale).astype(np.float32)
    edges = np.array([(0, 0), (0, -0.0), (-0.0, 0), (-0.0, -0.0), (1, 0), (-1, 0), (0, 1), (0, -1), (1, 1),
                      (1, -1), (-1, -1), (3.4e38, 1), (1, 3.4e38), (0.41421357, 1), (0.41421354, 1)], np.float32)
    y, x = np.concatenate([y, edges[:, 0]]), np.concatenate([x, edges[:, 1]])
    got = np.asarray(jax.jit(atan2)(jnp.asarray(y), jnp.asarray(x)))
    assert got.dtype == np.float32
    exact = np.arctan2(y.astype(np.float64), x.astype(np.float64))
    assert np.max(np.abs(got - exact)) < 2.7e-7
    np.testing.assert_array_equal(np.signbit(got[-15:]), np.signbit(np.arctan2(y[-15:], x[-15:])))
    y64, x64 = y.astype(np.float64), x.astype(np.float64)
    np.testing.assert_array_equal(np.asarray(atan2(jnp.asarray(y64), jnp.asarray(x64))),
                                  np.asarray(jnp.arctan2(jnp.asarray(y64), jnp.asarray(x64))))
