"""The breaker registry: names, the --breakers syntax, composition, hooks, and a tiny end-to-end run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from defenses.breakers import BREAKERS, TOUCHES, Breaker, compose, describe_breakers, parse_breaker, parse_breakers
from defenses.breakers import squeeze
from ntga.train import TrainConfig, TrainHooks, train_and_evaluate
from ntga.errors import UserInputError

NAMES = [
    "none", "grayscale", "jpeg", "bdr", "blur", "cutout", "mixup", "cutmix",
    "adversarial-training", "ueraser", "orthogonal-projection", "apl", "filter",
]
# filter drops rows by design (tests/test_detect.py checks which ones), so it is outside the shape contract below.
SAME_ROWS = [name for name in NAMES if name != "filter"]


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8), np.arange(8) % 4


def test_registry_has_exactly_the_contract_names():
    assert list(BREAKERS) == NAMES
    for name, factory in BREAKERS.items():
        breaker = factory()
        assert isinstance(breaker, Breaker) and breaker.name == name and breaker.spec == name
        assert breaker.description and breaker.source
        assert set(breaker.touches) <= set(TOUCHES)
        assert (name == "none") == (not breaker.touches)
        assert (TOUCHES[0] in breaker.touches) == breaker.has_prepare  # images before training <=> prepare
        assert dict(breaker.defaults) == {o.name: o.default for o in factory.options}
        assert name in describe_breakers()


@pytest.mark.parametrize("name", SAME_ROWS)
def test_every_breaker_prepares_and_hooks_within_the_contract(name, data, key):
    x, y = data
    breaker = BREAKERS[name](**({"size": 3} if name == "cutout" else {"steps": 20} if name == "orthogonal-projection" else {}))
    x_out, y_out = breaker.prepare(x, y, key)
    assert x_out.shape == x.shape and x_out.dtype in (np.uint8, np.float32)
    if x_out.dtype == np.float32:
        assert x_out.min() >= 0 and x_out.max() <= 1
    np.testing.assert_array_equal(y_out, y)
    np.testing.assert_array_equal(breaker.prepare(x, y, key)[0], x_out)  # deterministic under a key
    hooks = breaker.hooks(4)
    assert isinstance(hooks, TrainHooks)
    if name == "none":
        assert hooks == TrainHooks() and x_out is x


def test_parse_runs_compositions_and_options():
    runs = parse_breakers(" none , grayscale+jpeg@quality=20,adversarial-training@norm=l2@eps=1/4@steps=3,bdr@bits=3 ")
    assert [b.spec for b in runs] == [
        "none", "grayscale+jpeg@quality=20", "adversarial-training@norm=l2@eps=0.25@steps=3", "bdr@bits=3",
    ]
    gray_jpeg = runs[1]
    assert [m.name for m in gray_jpeg.parts] == ["grayscale", "jpeg"]
    assert gray_jpeg.options["jpeg.quality"] == 20
    at = runs[2]
    assert dict(at.options) == {"norm": "l2", "eps": 0.25, "step_size": 0.1, "steps": 3}  # L2's own step default
    assert dict(BREAKERS["adversarial-training"]().options) == {
        "norm": "linf", "eps": 8 / 255, "step_size": 2 / 255, "steps": 10,
    }
    assert parse_breaker("jpeg@quality=10").spec == "jpeg"  # default values are not repeated
    assert parse_breaker("cutout@size=4+mixup@alpha=0.5+apl@passive=mae").touches == (TOUCHES[1], TOUCHES[2])


@pytest.mark.parametrize("text", [
    "none", "grayscale+jpeg@quality=5", "adversarial-training@eps=0.1@step_size=0.02@steps=2",
    "ueraser@draws=3+apl@alpha=2@beta=0.5", "blur@kernel=5@sigma=1.5+cutmix@alpha=0.2",
    "orthogonal-projection@steps=10@lr=0.5", "mixup+cutout@size=8",
])
def test_spec_round_trips(text):
    breaker = parse_breaker(text)
    again = parse_breaker(breaker.spec)
    assert again.spec == breaker.spec and dict(again.options) == dict(breaker.options)


@pytest.mark.parametrize("text,message", [
    ("jpg", "unknown breaker 'jpg'; accepted: none, grayscale, jpeg"),
    ("jpeg@q=10", "no option 'q'.*quality"),
    ("jpeg@quality=0", r"bad value '0'.*int in \[1, 100\]"),
    ("jpeg@quality=1.5", "bad value '1.5'"),
    ("jpeg@quality=ten", "bad value 'ten'"),
    ("jpeg@quality", "not key=value"),
    ("jpeg@quality=10@quality=20", "given twice"),
    ("grayscale@x=1", "no option 'x'.*takes no options"),
    ("adversarial-training@norm=l3", "one of linf, l2"),
    ("blur@kernel=4", "kernel must be odd"),
    ("none,,jpeg", "empty breaker"),
    ("", "empty"),
    ("jpeg+", "empty breaker name"),
    ("@quality=3", "empty breaker name"),
    ("none+jpeg", "'none' cannot be composed"),
    ("apl+apl@alpha=2", "apl and apl both replace the training loss"),
    ("ueraser+adversarial-training", "ueraser and adversarial-training both replace each batch"),
    ("ueraser@max_epochs=3+adversarial-training", "ueraser and adversarial-training both replace each batch"),
    ("ueraser@max_epochs=-1", "max_epochs"),
])
def test_parse_errors_name_what_is_accepted(text, message):
    with pytest.raises(UserInputError, match=message):
        parse_breakers(text)


def test_factory_rejects_bad_python_options():
    with pytest.raises(UserInputError, match="bits"):
        BREAKERS["bdr"](bits=9)
    with pytest.raises(UserInputError, match="no option"):
        BREAKERS["bdr"](levels=2)


def test_composed_prepares_run_left_to_right(data, key):
    x, y = data
    composed = parse_breaker("grayscale+jpeg@quality=30")
    np.testing.assert_array_equal(composed.prepare(x, y, key)[0], squeeze.jpeg(squeeze.grayscale(x), 30))
    reverse = parse_breaker("jpeg@quality=30+grayscale")
    np.testing.assert_array_equal(reverse.prepare(x, y, key)[0], squeeze.grayscale(squeeze.jpeg(x, 30)))
    blurred = parse_breaker("blur@sigma=1+bdr").prepare(x, y, key)[0]  # float then uint8
    assert blurred.dtype == np.uint8 and set(np.unique(blurred)) <= {0, 85, 170, 255}


@pytest.mark.slow
def test_composed_hooks_chain_transforms_and_keep_one_loss(key):
    composed = compose(BREAKERS["cutout"](size=3), BREAKERS["mixup"](), BREAKERS["apl"]())
    hooks = composed.hooks(4)
    assert hooks.adversarial is None and hooks.loss_fn is not None
    x = jnp.ones((4, 8, 8, 3), jnp.float32)
    y = jnp.asarray([0, 1, 2, 3])
    out_x, out_y = jax.jit(hooks.batch_transform)(key, x, y)
    assert out_x.shape == x.shape and out_y.shape == (4, 4)
    np.testing.assert_allclose(jnp.sum(out_y, axis=1), 1.0, atol=1e-6)
    assert float(jnp.min(out_x)) < 1.0  # the hole survived mixing (mixing ones with ones keeps 1 elsewhere)
    losses = hooks.loss_fn(jnp.zeros((4, 4), jnp.float32), out_y)
    assert losses.shape == (4,)
    with_at = parse_breaker("cutout@size=2+adversarial-training@steps=1").hooks(4)
    assert with_at.batch_transform is not None and with_at.adversarial is not None


@pytest.mark.slow
def test_adversarial_hooks_follow_the_trainer_contract(key):
    """PGD and UEraser-Max receive input_loss(x, y) -> [B] and return a same-shape batch."""
    w = jax.random.normal(key, (8, 8, 3), jnp.float32)

    def input_loss(x, y, train=True):
        return jnp.sum(x * w[None], axis=(1, 2, 3)) * (1.0 + 0.0 * y)

    x = jax.random.uniform(jax.random.fold_in(key, 1), (4, 8, 8, 3), jnp.float32)
    y = jnp.asarray([0, 1, 2, 3])
    for text in ["adversarial-training", "adversarial-training@norm=l2", "ueraser@draws=2"]:
        hooks = parse_breaker(text).hooks(4)
        out = jax.jit(lambda k, xb, yb: hooks.adversarial(k, input_loss, xb, yb))(key, x, y)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert float(jnp.sum(input_loss(out, y))) > float(jnp.sum(input_loss(x, y)))


def test_ueraser_max_epochs_switches_to_one_draw():
    default = parse_breaker("ueraser").hooks(4)
    assert default.adversarial is not None and default.after is None  # max over draws in every epoch
    scheduled = parse_breaker("ueraser@max_epochs=3").hooks(4)
    assert scheduled.at_epoch(2).adversarial is not None and scheduled.at_epoch(2).batch_transform is None
    late = scheduled.at_epoch(3)
    assert late.adversarial is None and late.batch_transform is not None and late.after is None
    # Lite after the switch may compose with adversarial training only if the early phase could too: it cannot.
    lite_only = parse_breaker("ueraser@draws=1@max_epochs=3+adversarial-training@steps=1").hooks(4)
    assert lite_only.adversarial is not None and lite_only.batch_transform is not None


@pytest.mark.slow
@pytest.mark.parametrize("model,text", [
    ("small-cnn", "grayscale+cutmix+apl"),
    ("fnn-relu", "bdr+adversarial-training@steps=2"),
])
def test_end_to_end_one_epoch_with_a_composed_breaker(model, text, key):
    rng = np.random.default_rng(1)
    x_train = rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)
    y_train = np.arange(32) % 4
    x_test = rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    y_test = np.arange(8) % 4
    breaker = parse_breaker(text)
    k_prep, k_train = jax.random.split(key)
    x_prep, y_prep = breaker.prepare(x_train, y_train, k_prep)
    config = TrainConfig(epochs=1, batch_size=16)
    kwargs = {"width": 4} if model == "small-cnn" else {"width": 16, "depth": 2}
    result = train_and_evaluate(model, x_prep, y_prep, x_test, y_test, config, k_train,
                                hooks=breaker.hooks(4), progress=False, num_classes=4, model_kwargs=kwargs)
    assert 0.0 <= result.final_test_acc <= 1.0 and result.peak_epoch == 1
    assert np.all(np.isfinite(result.train_loss_curve))
