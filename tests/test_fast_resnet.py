"""``fast-resnet`` and the recipe options it brought to the trainer (TTA, label
smoothing, Nesterov, warm-up, parameter groups, data-dependent init)."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from defenses.breakers import BREAKERS, parse_breaker
from ntga.models import get_model
from ntga.models.fast import FastResNet, max_pool_floor, whitening_filters
from ntga.train import TrainConfig, train_and_evaluate
from ntga.train.step import make_optimizer, param_groups, tta_logits
from ntga.errors import UserInputError

TINY = dict(width=4)
SPEC = get_model("fast-resnet")


def images(n, h=8, w=8, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w, c), dtype=np.uint8), np.arange(n) % 4


def quadrants(n, seed, c=3):
    """Class k brightens quadrant k of an 8x8 image: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    x = rng.uniform(0.0, 0.4, (n, 8, 8, c))
    for k in range(4):
        r, s = divmod(k, 2)
        x[y == k, 4 * r:4 * r + 4, 4 * s:4 * s + 4] += 0.6
    return (x * 255).round().astype(np.uint8), y


def train(x, y, xt, yt, key=None, epochs=2, model_kwargs=TINY, hooks=None, **cfg):
    config = TrainConfig(**{"epochs": epochs, "batch_size": 16, **cfg})
    return train_and_evaluate("fast-resnet", x, y, xt, yt, config, jax.random.key(0) if key is None else key,
                              hooks=hooks, progress=False, num_classes=4, model_kwargs=model_kwargs)


@pytest.mark.slow
def test_max_pool_floor_matches_flax_max_pool(key):
    for h, w in [(8, 8), (9, 7), (31, 31)]:
        x = jax.random.normal(key, (2, h, w, 3))
        expected = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        np.testing.assert_array_equal(np.asarray(max_pool_floor(x)), np.asarray(expected))


def test_whitening_filters_whiten_the_patches():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(12, 12))
    x = (rng.normal(size=(40, 9, 9, 12)) @ mix.T)[..., :3]  # correlated channels
    x = x.reshape(40, 9, 9, 3)
    kernel = whitening_filters(x, eps=0.0)
    assert kernel.shape == (2, 2, 3, 24)
    out = jax.lax.conv_general_dilated(jnp.asarray(x, jnp.float32), jnp.asarray(kernel), (1, 1), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    half = np.asarray(out)[..., :12].reshape(-1, 12).astype(np.float64)
    np.testing.assert_allclose(half.T @ half / half.shape[0], np.eye(12), atol=2e-3)
    np.testing.assert_array_equal(kernel[..., 12:], -kernel[..., :12])
    # Chunked accumulation gives the same filters as one pass.
    np.testing.assert_allclose(whitening_filters(x, chunk=7), whitening_filters(x, chunk=1000), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_convolutions_start_as_identity_on_their_first_channels(key):
    module = FastResNet(4, width=4)
    variables = module.init(key, jnp.zeros((1, 8, 8, 3)), train=False)
    conv = np.asarray(variables["params"]["stage1_conv1"]["kernel"])  # 8 -> 8 channels, 3x3
    np.testing.assert_array_equal(conv[1, 1], np.eye(8))
    assert np.all(conv[0] == 0) and np.all(conv[2] == 0)
    widening = np.asarray(variables["params"]["stage1_conv0"]["kernel"])  # 4 -> 8: first 4 outputs identity
    np.testing.assert_array_equal(widening[1, 1, :, :4], np.eye(4))
    assert np.any(widening[..., 4:] != 0)


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3), (9, 13, 2)])
@pytest.mark.slow
def test_any_input_shape_and_jit_matches_eager(shape, key):
    module = SPEC.build(5, width=4, depth=2)
    x = jax.random.uniform(key, (2, *shape))
    variables = module.init(key, x, train=False)
    eager = module.apply(variables, x, train=False)
    jitted = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x)
    assert eager.shape == (2, 5)
    np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), rtol=1e-5, atol=1e-6)


def test_bad_width_or_depth_is_a_user_error():
    x, y = images(32)
    with pytest.raises(UserInputError, match="width >= 1"):
        train(x, y, x, y, model_kwargs=dict(width=0))
    with pytest.raises(UserInputError, match="cannot be a surrogate yet"):
        from ntga.methods.surrogate import make_surrogate
        make_surrogate("fast-resnet", 4)


@pytest.mark.slow
def test_learns_and_is_deterministic_under_the_key():
    x, y = quadrants(64, 0)
    xt, yt = quadrants(64, 1)
    # Flips (augmentation and TTA, on by default) would merge the mirror-image classes here.
    plain = dict(epochs=4, augment=False, tta="none")
    first = train(x, y, xt, yt, **plain)
    assert first.final_test_acc > 0.9
    again = train(x, y, xt, yt, **plain)
    np.testing.assert_array_equal(first.test_acc_curve, again.test_acc_curve)
    np.testing.assert_array_equal(first.train_loss_curve, again.train_loss_curve)
    other = train(x, y, xt, yt, key=jax.random.key(1), **plain)
    assert not np.array_equal(other.train_loss_curve, first.train_loss_curve)


@pytest.mark.slow
def test_whitening_is_fitted_to_the_data_and_stays_frozen():
    x, y = images(64)
    result = train(x, y, x, y, epochs=2, weight_decay=0.1)  # decay would move a frozen kernel too
    trained = np.asarray(result.variables["params"]["whiten"]["kernel"])
    flat = x.astype(np.float32) / 255
    mean, std = flat.reshape(-1, 3).mean(0), flat.reshape(-1, 3).std(0)
    np.testing.assert_allclose(trained, whitening_filters((flat - mean) / std), rtol=1e-4, atol=1e-4)
    # Everything else moved away from its initial value.
    init = SPEC.build(4, **TINY).init(jax.random.split(jax.random.key(0), 3)[0], jnp.zeros((1, 8, 8, 3)),
                                      train=False)["params"]
    for layer in ("stage0_conv0", "stage2_conv1", "head"):
        assert not np.allclose(np.asarray(result.variables["params"][layer]["kernel"]),
                               np.asarray(init[layer]["kernel"]))


@pytest.mark.slow
def test_norm_biases_get_a_scaled_learning_rate(key):
    module = SPEC.build(4, **TINY)
    params = module.init(key, jnp.zeros((1, 8, 8, 3)), train=False)["params"]
    groups = param_groups(params, SPEC)
    assert groups["whiten"]["kernel"] == "frozen" and groups["whiten"]["bias"] == "default"
    assert groups["stage0_bn0"]["bias"] == "norm_bias" and groups["head"]["kernel"] == "default"
    wd = 0.01
    cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=wd, schedule="constant",
                      warmup=0.0).resolved(SPEC)
    tx = make_optimizer(cfg, 10, SPEC)
    params = jax.tree.map(lambda a: jnp.full_like(a, 2.0), params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(jnp.abs(updates["whiten"]["kernel"]).max()) == 0.0  # frozen: no step, no decay
    np.testing.assert_allclose(np.asarray(updates["head"]["kernel"]), -0.1 * (1 + wd * 2.0), rtol=1e-6)
    # 64x the step, the same absolute decay per step: -(0.1 * 64 * 1 + 0.1 * wd * 2).
    scale = SPEC.norm_bias_lr_scale
    np.testing.assert_allclose(np.asarray(updates["stage0_bn0"]["bias"]), -(0.1 * scale + 0.1 * wd * 2.0),
                               rtol=1e-6)
    adam = make_optimizer(TrainConfig(optimizer="adam", lr=0.1, weight_decay=0.0, warmup=0.0).resolved(SPEC), 10,
                          SPEC)
    steps, _ = adam.update(grads, adam.init(params), params)
    np.testing.assert_allclose(np.asarray(steps["stage0_bn0"]["bias"]), np.asarray(steps["head"]["kernel"])[0, 0],
                               rtol=1e-5)  # Adam: one learning rate for every trained parameter


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_warmup_rises_from_zero_then_decays(schedule):
    cfg = TrainConfig(optimizer="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, schedule=schedule, warmup=0.25,
                      loss="ce", augment=False, nesterov=False, label_smoothing=0.0, tta="none")
    tx = make_optimizer(cfg, 100)
    params = {"w": jnp.zeros(())}
    state = tx.init(params)
    lrs = []
    for _ in range(100):
        update, state = tx.update({"w": jnp.ones(())}, state, params)
        lrs.append(-float(update["w"]))
    assert lrs[0] == 0.0 and lrs[25] == pytest.approx(1.0)
    one_step = make_optimizer(dataclasses.replace(cfg, warmup=0.9), 1)  # the warm-up leaves a step to train
    update, _ = one_step.update({"w": jnp.ones(())}, one_step.init(params), params)
    assert float(update["w"]) < 0
    assert np.all(np.diff(lrs[:26]) > 0)
    if schedule == "constant":
        assert lrs[-1] == pytest.approx(1.0)
    else:
        assert np.all(np.diff(lrs[25:]) <= 1e-7) and lrs[-1] < 0.05


def test_without_warmup_the_old_schedules_are_unchanged():
    cfg = TrainConfig(optimizer="sgd", lr=0.5, momentum=0.9, weight_decay=0.0, schedule="cosine", loss="ce",
                      augment=False, warmup=0.0, nesterov=False)
    ref = optax.sgd(optax.cosine_decay_schedule(0.5, decay_steps=20), momentum=0.9)
    tx = make_optimizer(cfg, 20)
    p = {"w": jnp.ones(3)}
    s1, s2 = tx.init(p), ref.init(p)
    for i in range(5):
        g = {"w": jnp.full(3, float(i + 1))}
        u1, s1 = tx.update(g, s1, p)
        u2, s2 = ref.update(g, s2, p)
        np.testing.assert_array_equal(np.asarray(u1["w"]), np.asarray(u2["w"]))


def test_flip_tta_averages_the_mirror_image(key):
    w = jax.random.normal(key, (8 * 8 * 3, 4))

    def apply(x):
        return x.reshape(x.shape[0], -1) @ w

    x = jax.random.uniform(key, (3, 8, 8, 3))
    np.testing.assert_allclose(np.asarray(tta_logits(apply, x, "flip")),
                               np.asarray(0.5 * (apply(x) + apply(x[:, :, ::-1]))), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(tta_logits(apply, x, "none")), np.asarray(apply(x)), rtol=1e-6)


@pytest.mark.slow
def test_tta_is_a_trainer_option_for_every_victim():
    x, y = quadrants(64, 0)
    xt, yt = quadrants(64, 1)
    mirrored = np.ascontiguousarray(xt[:, :, ::-1])  # mirroring swaps the quadrant classes 0<->1, 2<->3

    def acc(test_images, tta):
        cfg = TrainConfig(epochs=3, batch_size=16, tta=tta)
        return train_and_evaluate("small-cnn", x, y, test_images, yt, cfg, jax.random.key(0), progress=False,
                                  num_classes=4, model_kwargs=dict(width=4)).final_test_acc

    # Without TTA the victim tells an image from its mirror image; with flip TTA it scores an
    # image and its mirror image the same (the logits of both views are averaged).
    assert acc(xt, "none") > 0.9 and acc(mirrored, "none") < 0.2
    assert acc(mirrored, "flip") == pytest.approx(acc(xt, "flip"))
    assert TrainConfig().resolved(SPEC).tta == "flip" and TrainConfig().resolved(get_model("small-cnn")).tta == "none"


@pytest.mark.slow
def test_label_smoothing_is_the_configured_losss_alone():
    x, y = quadrants(64, 0)
    plain = train(x, y, x, y, epochs=1, label_smoothing=0.0)
    smooth = train(x, y, x, y, epochs=1, label_smoothing=0.5)
    assert smooth.train_loss_curve[0] != plain.train_loss_curve[0]
    # A breaker's replacement loss sees the hard targets, so smoothing changes nothing there.
    apl = parse_breaker("apl").hooks(4)
    with_apl = [train(x, y, x, y, epochs=1, label_smoothing=s, hooks=apl).train_loss_curve for s in (0.0, 0.5)]
    np.testing.assert_array_equal(with_apl[0], with_apl[1])
    with pytest.raises(UserInputError, match="label_smoothing"):
        TrainConfig(label_smoothing=1.0)
    with pytest.raises(UserInputError, match="warmup"):
        TrainConfig(warmup=-0.1)
    with pytest.raises(UserInputError, match="tta"):
        TrainConfig(tta="crops")


@pytest.mark.parametrize("name", list(BREAKERS))
@pytest.mark.slow
def test_every_breaker_composes_with_fast_resnet(name, key):
    x, y = images(32, seed=1)
    xt, yt = images(8, seed=2)
    options = {"cutout": "@size=3", "orthogonal-projection": "@steps=20", "adversarial-training": "@steps=2",
               "ueraser": "@draws=2", "filter": "@batch_size=16,share=0.25,epochs=1"}
    breaker = parse_breaker(name + options.get(name, ""))
    k_prep, k_train = jax.random.split(key)
    x_prep, y_prep = breaker.prepare(x, y, k_prep)
    result = train(x_prep, y_prep, xt, yt, key=k_train, epochs=1, hooks=breaker.hooks(4))
    assert 0.0 <= result.final_test_acc <= 1.0
    assert np.all(np.isfinite(result.train_loss_curve))
