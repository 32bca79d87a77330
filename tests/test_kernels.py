"""ntga.kernels: registry, configs, errors, and kernel invariants (symmetry, PSD, jit, get)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntga import kernels
from ntga.errors import UserInputError

# One small image shape everywhere, so each configuration compiles once.
SHAPE = (8, 8, 1)
CONFIGS = {
    "fnn": ("fnn", {}),
    "fnn-relu": ("fnn", {"activation": "relu", "depth": 3}),
    "cnn": ("cnn", {}),
    "cnn-erf-s1": ("cnn", {"activation": "erf", "stride": 1, "filter_size": 3}),
}


def _images(key, n, shape=SHAPE, dtype=jnp.float64):
    return jax.random.uniform(key, (n,) + shape, dtype=dtype)


@pytest.fixture(scope="module")
def jitted():
    """Jitted (ntk, nngp) self and cross kernels per configuration, built once."""
    out = {}
    for cid, (name, overrides) in CONFIGS.items():
        kf = kernels.make(name, **overrides)
        out[cid] = (jax.jit(lambda a, kf=kf: kf(a, None, ("ntk", "nngp"))),
                    jax.jit(lambda a, b, kf=kf: kf(a, b, ("ntk", "nngp"))))
    return out


# --------------------------------------------------------------------------- registry and configs


def test_registry_names_and_reference_defaults():
    assert set(kernels.KERNELS) == {"fnn", "cnn"}
    fnn, cnn = kernels.make("fnn"), kernels.make("cnn")
    assert fnn.name == "fnn" and cnn.name == "cnn"
    assert fnn.config == kernels.FnnConfig(depth=5, activation="erf", W_std=math.sqrt(1.76),
                                           b_std=math.sqrt(0.18), readout=False)
    assert cnn.config == kernels.CnnConfig(depth=2, activation="relu", W_std=math.sqrt(1.76),
                                           b_std=math.sqrt(0.18), filter_size=(5, 5), stride=(2, 2),
                                           padding="SAME", dense_layers=3)


def test_overrides_are_normalised():
    kf = kernels.make("cnn", padding="same", stride=[2, 2], filter_size=5, depth=3, activation="erf")
    assert kf.config.padding == "SAME" and kf.config.stride == (2, 2) and kf.config.filter_size == (5, 5)
    assert kf.config.depth == 3 and kf.config.activation == "erf"
    assert kernels.make("fnn", W_std=2, b_std=0).config.b_std == 0.0


def test_unknown_name_lists_accepted():
    with pytest.raises(UserInputError, match=r"unknown kernel 'resnet'; accepted: fnn, cnn"):
        kernels.make("resnet")


@pytest.mark.parametrize("name, key", [("fnn", "stride"), ("cnn", "readout"), ("cnn", "width")])
def test_unknown_override_lists_accepted(name, key):
    with pytest.raises(UserInputError, match=rf"kernel '{name}' has no option '{key}'; accepted: .*depth"):
        kernels.make(name, **{key: 1})


@pytest.mark.parametrize("name, key, value", [
    ("fnn", "depth", 0), ("fnn", "depth", 2.5), ("fnn", "depth", True), ("cnn", "depth", -1),
    ("fnn", "activation", "tanh"), ("cnn", "activation", None),
    ("fnn", "W_std", 0.0), ("fnn", "W_std", -1.0), ("cnn", "W_std", float("inf")),
    ("fnn", "b_std", -0.1), ("cnn", "b_std", float("nan")), ("fnn", "b_std", "0.1"),
    ("fnn", "readout", "yes"),
    ("cnn", "padding", "FULL"), ("cnn", "stride", 0), ("cnn", "stride", (1, 2, 3)),
    ("cnn", "filter_size", (3,)), ("cnn", "filter_size", 0), ("cnn", "dense_layers", -1),
])
def test_bad_override_value_names_it(name, key, value):
    with pytest.raises(UserInputError, match=rf"{key}=.*(invalid|expected)"):
        kernels.make(name, **{key: value})


def test_bad_activation_lists_accepted():
    with pytest.raises(UserInputError, match=r"activation='tanh' is invalid; accepted: erf, relu"):
        kernels.make("fnn", activation="tanh")


def test_call_errors(key):
    fnn, cnn = kernels.make("fnn"), kernels.make("cnn")
    x = _images(key, 2)
    with pytest.raises(UserInputError, match=r"get='ntkk'.*'ntk', 'nngp'"):
        fnn(x, x, "ntkk")
    with pytest.raises(UserInputError, match=r"get=\(\).*"):
        fnn(x, x, ())
    with pytest.raises(UserInputError, match=r"chunk_size=0"):
        fnn(x, x, chunk_size=0)
    with pytest.raises(UserInputError, match=r"x1 has dtype uint8"):
        fnn(np.zeros((2, 8, 8, 1), np.uint8), x)
    with pytest.raises(UserInputError, match=r"x1 examples have shape \(8, 8, 1\) but x2 .* \(8, 8, 3\)"):
        cnn(x, jnp.zeros((2, 8, 8, 3)))
    with pytest.raises(UserInputError, match=r"x1 has shape \(2, 64\); kernel 'cnn' expects images"):
        cnn(x.reshape(2, -1))
    with pytest.raises(UserInputError, match=r"too small for cnn conv layer 2"):
        kernels.make("cnn", padding="VALID", stride=1)(x)


@pytest.mark.slow
def test_fnn_flattens_any_example_shape(key):
    fnn = kernels.make("fnn")
    x1, x2 = _images(key, 3), _images(jax.random.fold_in(key, 1), 2)
    np.testing.assert_allclose(fnn(x1, x2), fnn(x1.reshape(3, -1), x2.reshape(2, 64)), rtol=1e-13)


# --------------------------------------------------------------------------- invariants


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
@pytest.mark.parametrize("cid", sorted(CONFIGS))
def test_self_kernel_is_symmetric_psd(jitted, cid, seed):
    x = _images(jax.random.key(seed), 6)
    for k in jitted[cid][0](x):
        k = np.asarray(k)
        assert k.shape == (6, 6)
        np.testing.assert_allclose(k, k.T, rtol=1e-12, atol=0)
        assert np.linalg.eigvalsh(k).min() >= -1e-8 * np.trace(k)


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
@pytest.mark.parametrize("cid", sorted(CONFIGS))
def test_cross_kernel_swaps_to_transpose_and_matches_self(jitted, cid, seed):
    k1, k2 = jax.random.split(jax.random.key(seed))
    x1, x2 = _images(k1, 3), _images(k2, 3)
    self_fn, cross_fn = jitted[cid]
    for a, b in zip(cross_fn(x1, x2), cross_fn(x2, x1)):
        np.testing.assert_allclose(a, b.T, rtol=1e-12)
    # Self mode equals the cross computation on a copy (only round-off apart:
    # the cross path sees the diagonal as correlation 1 - O(1e-16)).
    for a, b in zip(self_fn(x1), cross_fn(x1, x1 + 0.0)):
        np.testing.assert_allclose(a, b, rtol=1e-7)


@pytest.mark.parametrize("cid", sorted(CONFIGS))
@pytest.mark.slow
def test_jit_matches_eager(jitted, cid, key):
    name, overrides = CONFIGS[cid]
    kf = kernels.make(name, **overrides)
    x1, x2 = _images(key, 3), _images(jax.random.fold_in(key, 7), 2)
    for eager, jit in zip(kf(x1, x2, ("ntk", "nngp")), jitted[cid][1](x1, x2)):
        np.testing.assert_allclose(eager, jit, rtol=1e-12)


def test_get_tuple_matches_single_calls(key):
    kf = kernels.make("cnn")
    x1, x2 = _images(key, 3), _images(jax.random.fold_in(key, 1), 2)
    nngp, ntk = kf(x1, x2, ["nngp", "ntk"])
    np.testing.assert_allclose(nngp, kf(x1, x2, "nngp"), rtol=1e-13)
    np.testing.assert_allclose(ntk, kf(x1, x2), rtol=1e-13)
    # The NTK adds the (positive) gradient contributions of every layer to the NNGP.
    assert np.all(np.asarray(ntk) > np.asarray(nngp))


def test_numpy_scalars_are_accepted_and_normalised():
    cfg = kernels.make("cnn", depth=np.int64(3), W_std=np.float32(1.5), stride=(np.int32(1), 2)).config
    assert cfg.depth == 3 and type(cfg.depth) is int
    assert type(cfg.W_std) is float and cfg.stride == (1, 2) and type(cfg.stride[0]) is int
