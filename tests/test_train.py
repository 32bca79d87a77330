"""The victim trainer: it learns, it is a pure function of its key, hooks are
applied where the contract says, and bad inputs raise UserInputError."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ntga.train import inputs as aug
from ntga.models import get_model
from ntga.train import (TrainConfig, TrainHooks, compose_hooks, make_optimizer, make_train_step,
                            train_and_evaluate, train_many_seeds)
from ntga.errors import UserInputError

CLASSES = 4


def separable(n: int, seed: int, channels: int = 1):
    """Class c lights up quadrant c of an 8x8 image; uniform noise elsewhere.

    Returns uint8 images [n, 8, 8, channels] and balanced int labels [n].
    """
    rng = np.random.default_rng(seed)
    y = np.arange(n) % CLASSES
    x = rng.uniform(0.0, 0.4, (n, 8, 8, channels))
    for c in range(CLASSES):
        r, s = divmod(c, 2)
        x[y == c, 4 * r:4 * r + 4, 4 * s:4 * s + 4, :] += 0.6
    return (x * 255).round().astype(np.uint8), y


X_TRAIN, Y_TRAIN = separable(64, 0)
X_TEST, Y_TEST = separable(64, 1)
# Tiny widths keep compilation short; fnn's reference recipe (plain SGD at 1e-3)
# needs thousands of steps, so the learning test raises its learning rate.
FAST = {"fnn": (dict(width=32), dict(lr=0.05, momentum=0.9)), "small-cnn": (dict(width=8), {})}


def run(name="small-cnn", key=None, epochs=3, hooks=None, x=X_TRAIN, y=Y_TRAIN, **cfg):
    overrides, defaults = FAST.get(name, ({}, {}))
    config = TrainConfig(**{"epochs": epochs, "batch_size": 16, **defaults, **cfg})
    return train_and_evaluate(name, x, y, X_TEST, Y_TEST, config, jax.random.key(0) if key is None else key,
                              hooks=hooks, progress=False, model_kwargs=overrides, num_classes=CLASSES)


@pytest.fixture(scope="module")
def baseline():
    return run("small-cnn")


@pytest.mark.parametrize("name", ["fnn", "small-cnn"])
def test_learns_an_easy_problem(name, baseline):
    result = baseline if name == "small-cnn" else run(name, epochs=4)
    assert result.final_test_acc > 0.9
    assert result.train_loss_curve[-1] < result.train_loss_curve[0]


def test_result_shapes_and_peak(baseline):
    r = baseline
    for curve in (r.test_acc_curve, r.train_acc_curve, r.train_loss_curve):
        assert curve.shape == (3,)
    assert r.peak_test_acc >= r.final_test_acc
    assert r.peak_test_acc == r.test_acc_curve[r.peak_epoch - 1]
    assert r.wall_time_s > 0 and r.images_per_s > 0
    assert set(r.variables) == {"params", "batch_stats"}


def test_deterministic_under_the_key(baseline):
    again = run("small-cnn")
    np.testing.assert_array_equal(again.train_loss_curve, baseline.train_loss_curve)
    np.testing.assert_array_equal(again.test_acc_curve, baseline.test_acc_curve)
    other = run("small-cnn", key=jax.random.key(1))
    assert not np.array_equal(other.train_loss_curve, baseline.train_loss_curve)


@pytest.mark.slow
def test_uint8_and_unit_float_images_train_alike(baseline):
    floats = run("small-cnn", x=X_TRAIN.astype(np.float32) / 255)
    np.testing.assert_allclose(floats.train_loss_curve, baseline.train_loss_curve, rtol=1e-4)


@pytest.mark.slow
def test_zeroing_hook_makes_learning_impossible():
    zero = TrainHooks(batch_transform=lambda key, x, y: (jnp.zeros_like(x), y))
    r = run("small-cnn", hooks=zero)
    # Identical inputs give identical logits, so one class is predicted for the
    # whole (balanced) batch and cross-entropy cannot beat the label entropy.
    assert r.train_acc_curve[-1] <= 0.5
    assert r.train_loss_curve[-1] > 0.9 * np.log(CLASSES)


def test_soft_labels_and_loss_override():
    def mix(key, x, y):
        t = jax.nn.one_hot(y, CLASSES)
        return 0.5 * (x + x[::-1]), 0.5 * (t + t[::-1])

    calls = []

    def no_loss(logits, targets):
        calls.append(targets.shape)
        return jnp.zeros(logits.shape[0])

    r = run("fnn", hooks=TrainHooks(batch_transform=mix, loss_fn=no_loss), epochs=2, optimizer="adam")
    assert calls and calls[0] == (16, CLASSES)  # soft targets reached the loss
    # A zero loss gives zero gradients: Adam leaves the parameters unchanged.
    np.testing.assert_array_equal(r.train_loss_curve, 0.0)
    assert r.test_acc_curve[0] == r.test_acc_curve[1]


@pytest.mark.slow
def test_adversarial_hook_gets_a_differentiable_training_loss(key):
    """One jitted step; the hook reports concrete values through a debug callback."""
    spec, cfg = get_model("fnn-relu"), TrainConfig(batch_size=8).resolved(get_model("fnn-relu"))
    module = spec.build(CLASSES, width=8)
    mean, std = (jnp.asarray(a) for a in aug.channel_stats(X_TRAIN))
    tx = make_optimizer(cfg, 10)
    params = module.init(key, jnp.zeros((1, 8, 8, 1), jnp.float32))["params"]
    state = dict(params=params, batch_stats={}, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32))
    seen = {}

    def attack(k, input_loss, x, y):
        loss = input_loss(x, y)
        grad = jax.grad(lambda z: input_loss(z, y).sum())(x)
        jax.debug.callback(lambda l, g: seen.update(loss=np.asarray(l), grad=np.asarray(g)), loss, grad)
        return x

    step = jax.jit(make_train_step(module, spec, cfg, tx, CLASSES, mean, std, TrainHooks(adversarial=attack)))
    _, (loss_sum, _) = step(state, jnp.asarray(X_TRAIN), jnp.asarray(Y_TRAIN), jnp.arange(8), key)
    assert seen["loss"].shape == (8,) and seen["grad"].shape == (8, 8, 8, 1)
    np.testing.assert_allclose(float(seen["loss"].mean()), float(loss_sum) / 8, rtol=1e-5)
    assert float(np.abs(seen["grad"]).max()) > 0


def test_compose_hooks_runs_in_order():
    add = lambda v: TrainHooks(batch_transform=lambda k, x, y: (x * 0 + v if v == 1 else x + v, y))
    hooks = compose_hooks(add(1), None, add(2))
    x, _ = hooks.batch_transform(jax.random.key(0), jnp.zeros((2, 8, 8, 1)), jnp.zeros(2, jnp.int32))
    np.testing.assert_array_equal(np.asarray(x), 3.0)
    with pytest.raises(UserInputError, match="loss"):
        compose_hooks(TrainHooks(loss_fn=lambda a, b: a), TrainHooks(loss_fn=lambda a, b: b))


def test_compose_hooks_refuses_two_losses_or_adversaries_in_any_phase_naming_them():
    loss = TrainHooks(loss_fn=lambda logits, targets: logits[:, 0])
    attack = TrainHooks(adversarial=lambda key, input_loss, x, y: x)
    with pytest.raises(UserInputError, match="hook 1 and hook 3 both replace the training loss"):
        compose_hooks(loss, None, loss)
    with pytest.raises(UserInputError, match="a and b both replace each batch"):
        compose_hooks(attack, attack, names=["a", "b"])
    # b attacks only from epoch 2 on: the clash is in the second phase and is still refused.
    with pytest.raises(UserInputError, match="a and b both replace each batch"):
        compose_hooks(attack, TrainHooks(switch_epoch=2, after=attack), names=["a", "b"])
    one_each = compose_hooks(loss, attack, names=["a", "b"])
    assert one_each.loss_fn is loss.loss_fn and one_each.adversarial is attack.adversarial


@pytest.mark.slow
def test_many_seeds_vmap_matches_single_runs():
    keys = jax.random.split(jax.random.key(3), 2)
    config = TrainConfig(epochs=2, batch_size=16, eval_every=2)
    kw = dict(progress=False, model_kwargs=dict(width=16), num_classes=CLASSES)
    many = train_many_seeds("fnn-relu", X_TRAIN, Y_TRAIN, X_TEST, Y_TEST, config, keys, **kw)
    assert len(many) == 2
    for k, r in zip(keys, many):
        single = train_and_evaluate("fnn-relu", X_TRAIN, Y_TRAIN, X_TEST, Y_TEST, config, k, **kw)
        np.testing.assert_allclose(r.train_loss_curve, single.train_loss_curve, rtol=1e-5)
        np.testing.assert_allclose(r.final_test_acc, single.final_test_acc, atol=1.5 / 64)
        assert np.isnan(r.test_acc_curve[0])  # eval_every=2 skips epoch 1
    assert not np.array_equal(many[0].train_loss_curve, many[1].train_loss_curve)


def test_config_defaults_come_from_the_model():
    fnn = TrainConfig().resolved(get_model("fnn"))
    assert (fnn.optimizer, fnn.lr, fnn.momentum, fnn.loss, fnn.schedule, fnn.augment) == (
        "sgd", 1e-3, 0.0, "mse", "constant", False)
    mine = TrainConfig(lr=0.3, loss="ce", augment=True).resolved(get_model("fnn"))
    assert (mine.lr, mine.loss, mine.augment) == (0.3, "ce", True)


@pytest.mark.parametrize("field, value", [("optimizer", "rmsprop"), ("loss", "hinge"), ("schedule", "step"),
                                          ("epochs", 0), ("batch_size", -1), ("lr", 0.0), ("momentum", 1.0)])
def test_bad_config_raises(field, value):
    with pytest.raises(UserInputError, match=field):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("change, match", [
    (dict(name="resnet50"), "unknown model"),
    (dict(x=X_TRAIN[:, :4, :4]), "at least 8x8"),
    (dict(x=X_TRAIN[:, None]), r"\[N, H, W, C\]"),
    (dict(x=X_TRAIN.astype(np.float32)), r"\[0, 1\]"),
    (dict(x=X_TRAIN.astype(np.int64)), "dtype"),
    (dict(x=X_TRAIN[..., [0, 0, 0]]), "differ in shape"),
    (dict(y=Y_TRAIN + 4), r"labels must lie in \[0, 3\]"),
    (dict(y=Y_TRAIN - 1), "labels must lie"),
    (dict(y=Y_TRAIN.astype(float)), "integer"),
    (dict(y=Y_TRAIN[:10]), "one per image"),
    (dict(batch_size=65), "exceeds"),
])
def test_bad_inputs_raise(change, match):
    change = dict(change)
    name = change.pop("name", "small-cnn")
    with pytest.raises(UserInputError, match=match):
        run(name, epochs=1, **change)


def test_hook_that_changes_the_shape_raises():
    crop = TrainHooks(batch_transform=lambda k, x, y: (x[:, 1:], y))
    with pytest.raises(UserInputError, match="shape"):
        run("small-cnn", epochs=1, hooks=crop)


_crop_flip = jax.jit(aug.random_crop_flip)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), c=st.sampled_from([1, 3]))
def test_crop_flip_keeps_pixels_or_pads_with_black(seed, c):
    x = np.random.default_rng(seed).uniform(0.1, 1.0, (3, 8, 8, c)).astype(np.float32)
    out = _crop_flip(jax.random.key(seed), x)
    assert out.shape == x.shape
    values = set(np.asarray(x).ravel().tolist()) | {0.0}
    assert set(np.asarray(out).ravel().tolist()) <= values


def test_channel_stats_match_numpy():
    x = np.random.default_rng(0).integers(0, 256, (10, 8, 9, 3), dtype=np.uint8)
    mean, std = aug.channel_stats(x, chunk=3)
    ref = x.astype(np.float64) / 255
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(std, ref.std(axis=(0, 1, 2)), rtol=1e-5)


def test_hooks_schedule_validates_and_resolves_by_epoch():
    late, later = TrainHooks(loss_fn=lambda a, b: a.sum(-1)), TrainHooks()
    schedule = TrainHooks(switch_epoch=2, after=TrainHooks(loss_fn=late.loss_fn, switch_epoch=5, after=later))
    assert schedule.at_epoch(0) is schedule and schedule.at_epoch(1) is schedule
    assert schedule.at_epoch(2) is schedule.after and schedule.at_epoch(4) is schedule.after
    assert schedule.at_epoch(5) is later and schedule.at_epoch(99) is later
    with pytest.raises(ValueError, match="together"):
        TrainHooks(switch_epoch=1)
    with pytest.raises(ValueError, match=">= 0"):
        TrainHooks(switch_epoch=-1, after=later)


def test_compose_hooks_switches_at_the_earliest_member_switch():
    zero = TrainHooks(batch_transform=lambda k, x, y: (x * 0, y))
    plus = lambda v: TrainHooks(batch_transform=lambda k, x, y: (x + v, y))  # noqa: E731
    composed = compose_hooks(zero, TrainHooks(switch_epoch=3, after=plus(10)),
                             TrainHooks(batch_transform=plus(1).batch_transform, switch_epoch=1, after=plus(2)))
    x, y = jnp.ones((2, 8, 8, 1)), jnp.zeros(2, jnp.int32)
    key = jax.random.key(0)
    values = [float(composed.at_epoch(e).batch_transform(key, x, y)[0][0, 0, 0, 0]) for e in range(5)]
    # epoch 0: zero, +1; from 1: zero, +2; from 3: zero, +10, +2
    assert values == [1.0, 2.0, 2.0, 12.0, 12.0]
    assert composed.switch_epoch == 1 and composed.after.switch_epoch == 3


def test_trainer_follows_the_hooks_schedule():
    """A loss of zero for the first two epochs, the configured loss afterwards (one compile per phase)."""
    zero_loss = TrainHooks(loss_fn=lambda logits, targets: jnp.zeros(logits.shape[0]),
                           switch_epoch=2, after=TrainHooks())
    result = run("fnn", epochs=4, hooks=zero_loss)
    np.testing.assert_array_equal(result.train_loss_curve[:2], 0.0)
    assert np.all(result.train_loss_curve[2:] > 0)
    assert np.isfinite(result.images_per_s) and result.images_per_s > 0
