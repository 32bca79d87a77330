"""Victim registry: every model builds, fits grey and RGB inputs, and the
full-size defaults have the published parameter counts."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ntga.models import MODELS, get_model
from ntga.errors import UserInputError

# XLA's backend optimisations dominate compile time for these one-off calls
# (init compiles a threefry sampler per parameter): level 0 compiles ~6x faster.
jit0 = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

# Small widths/depths so forward passes of the big victims are quick on CPU.
TINY = {
    "fnn": dict(width=16),
    "fnn-relu": dict(width=16),
    "cnn": dict(features=8, dense=(16, 8)),
    "resnet18": dict(width=4, stages=(1, 1, 1, 1)),
    "densenet121": dict(width=4, stages=(1, 1, 1, 1)),
    "wrn": dict(depth=10, widen=1, width=4),
    "small-cnn": dict(width=4),
    "fast-resnet": dict(width=4),
}


def test_registry_names_match_the_cli_contract():
    assert list(MODELS) == ["fnn", "fnn-relu", "cnn", "resnet18", "densenet121", "wrn", "small-cnn",
                            "fast-resnet"]
    assert set(TINY) == set(MODELS)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.slow
def test_forward_gives_logits_per_class(name, channels, key):
    spec = get_model(name)
    module = spec.build(num_classes=5, **TINY[name])
    x = jax.random.uniform(key, (4, 8, 8, channels), jnp.float32)
    # jit: one compilation per function is much faster than op-by-op dispatch.
    variables = jit0(lambda k, x: module.init(k, x, train=False))(key, x)
    assert ("batch_stats" in variables) == spec.batch_norm
    logits = jit0(lambda v, x: module.apply(v, x, train=False))(variables, x)
    assert logits.shape == (4, 5) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    # Training mode: needs the dropout rng when the model has dropout and
    # returns updated batch statistics when it has batch norm.
    mutable = ["batch_stats"] if spec.batch_norm else False
    out = jit0(lambda v, x: module.apply(v, x, train=True, rngs={"dropout": key}, mutable=mutable))(variables, x)
    logits_train = out[0] if spec.batch_norm else out
    assert logits_train.shape == (4, 5)
    if spec.batch_norm:
        changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], out[1]["batch_stats"])
        assert any(jax.tree.leaves(changed))


# Published parameter counts of the CIFAR-10 (32x32x3, 10 classes) versions.
PARAMS_CIFAR10 = {
    "fnn": 3072 * 512 + 512 + 3 * (512 * 512 + 512) + 512 * 10 + 10,
    "fnn-relu": 3072 * 512 + 512 + 3 * (512 * 512 + 512) + 512 * 10 + 10,
    "resnet18": 11_173_962,   # CIFAR ResNet-18 (3x3 stem, no max-pool)
    "densenet121": 6_956_298,  # CIFAR DenseNet-121, growth 32
    "wrn": 2_748_890,          # WRN-16-4
}


@pytest.mark.parametrize("name", list(PARAMS_CIFAR10))
def test_full_size_parameter_counts(name, key):
    module = get_model(name).build(10)
    shapes = jax.eval_shape(lambda k: module.init(k, jnp.zeros((1, 32, 32, 3), jnp.float32)), key)
    count = sum(math.prod(a.shape) for a in jax.tree.leaves(shapes["params"]))
    assert count == PARAMS_CIFAR10[name]


def test_cnn_layout_matches_the_paper(key):
    # 2 x [Conv64 5x5 -> MaxPool 3/2 -> BN] -> Dense384 -> Dropout -> Dense192 -> Dense(k).
    module = get_model("cnn").build(10)
    shapes = jax.eval_shape(lambda k: module.init(k, jnp.zeros((1, 32, 32, 3), jnp.float32)), key)
    params = shapes["params"]
    assert params["Conv_0"]["kernel"].shape == (5, 5, 3, 64)
    assert params["Conv_1"]["kernel"].shape == (5, 5, 64, 64)
    assert params["Dense_0"]["kernel"].shape == (8 * 8 * 64, 384)  # 32 -> 16 -> 8 after two pools
    assert params["Dense_1"]["kernel"].shape == (384, 192)
    assert params["Dense_2"]["kernel"].shape == (192, 10)


def test_default_recipes_follow_the_reference():
    assert (MODELS["fnn"].loss, MODELS["fnn"].optimizer, MODELS["fnn"].lr) == ("mse", "sgd", 1e-3)
    assert (MODELS["fnn-relu"].loss, MODELS["fnn-relu"].optimizer) == ("ce", "adam")
    assert (MODELS["cnn"].optimizer, MODELS["cnn"].dropout) == ("adam", True)
    for name in ("resnet18", "densenet121", "wrn"):
        spec = MODELS[name]
        assert (spec.optimizer, spec.lr, spec.momentum, spec.weight_decay, spec.schedule, spec.augment) == (
            "sgd", 0.1, 0.9, 5e-4, "cosine", True)


@pytest.mark.slow
def test_jit_and_eager_agree(key):
    module = get_model("small-cnn").build(3, width=4)
    x = jax.random.uniform(key, (2, 9, 11, 3), jnp.float32)
    variables = jit0(module.init)(key, x)
    eager = module.apply(variables, x)
    jitted = jax.jit(lambda v, x: module.apply(v, x))(variables, x)
    np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), rtol=1e-5, atol=1e-6)


@settings(max_examples=4, deadline=None)
@given(h=st.integers(8, 20), w=st.integers(8, 20), c=st.sampled_from([1, 2, 3]),
       name=st.sampled_from(["fnn", "cnn", "resnet18", "small-cnn", "fast-resnet"]))
def test_any_image_size_from_8x8(h, w, c, name):
    module = get_model(name).build(4, **TINY[name])
    x = jnp.ones((2, h, w, c), jnp.float32)
    # eval_shape traces init and apply without running them: shape checking is the point.
    variables = jax.eval_shape(module.init, jax.random.key(1), x)
    assert jax.eval_shape(module.apply, variables, x).shape == (2, 4)


def test_unknown_model_lists_accepted_names():
    with pytest.raises(UserInputError, match="resnet18.*small-cnn|accepted: fnn, fnn-relu, cnn"):
        get_model("resnet50")


def test_bad_overrides_raise(key):
    with pytest.raises(UserInputError, match="override"):
        get_model("fnn").build(10, nonsense=3)
    with pytest.raises(UserInputError, match="num_classes"):
        get_model("fnn").build(1)
    module = get_model("wrn").build(10, depth=12)
    with pytest.raises(UserInputError, match="6n \\+ 4"):
        jax.eval_shape(module.init, key, jnp.zeros((1, 8, 8, 3), jnp.float32))


@pytest.mark.parametrize("stride, size", [(1, 8), (2, 8), (2, 9)])
def test_pointwise_conv_is_a_1x1_convolution(stride, size, key):
    import flax.linen as nn

    from ntga.models.layers import PointwiseConv

    x = jax.random.normal(key, (2, size, size, 5), jnp.float32)
    pointwise = PointwiseConv(7, stride)
    params = pointwise.init(key, x)
    kernel = params["params"]["Dense_0"]["kernel"]  # [C, F]
    conv = nn.Conv(7, (1, 1), strides=(stride, stride), padding="SAME", use_bias=False)
    expected = conv.apply({"params": {"kernel": kernel[None, None]}}, x)
    np.testing.assert_allclose(np.asarray(pointwise.apply(params, x)), np.asarray(expected), rtol=1e-5, atol=1e-5)
