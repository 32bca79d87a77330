"""The breakers' transforms on tiny 8x8 images: shapes, dtypes, ranges and each method's defining property."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from defenses.breakers import adversarial, augment, losses, projection, squeeze, ueraser
from ntga.errors import UserInputError


@pytest.fixture
def images():
    """Four random RGB 8x8 uint8 images."""
    return np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)


def unit(x):
    return jnp.asarray(x, jnp.float32) / 255


# --- squeezing (dataset level) -----------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [squeeze.grayscale, squeeze.jpeg, squeeze.bit_depth_reduction, squeeze.gaussian_blur],
    ids=["grayscale", "jpeg", "bdr", "blur"],
)
@pytest.mark.parametrize("as_float", [False, True], ids=["uint8", "float"])
def test_squeeze_keeps_shape_dtype_range_and_is_deterministic(fn, as_float, images):
    x = images.astype(np.float32) / 255 if as_float else images
    out = fn(x)
    assert out.shape == images.shape
    assert out.dtype in (np.uint8, np.float32)
    if out.dtype == np.float32:
        assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(out, fn(x))


def test_grayscale_channels_are_equal_luma(images):
    out = squeeze.grayscale(images)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    # Same luma as Pillow's convert("L") (BT.601), to within rounding.
    from PIL import Image

    pil = np.asarray(Image.fromarray(images[0]).convert("L"), np.int32)
    assert np.max(np.abs(pil - out[0, ..., 0].astype(np.int32))) <= 1


def test_grayscale_single_channel_is_identity_and_other_counts_fail(images):
    one = images[..., :1]
    np.testing.assert_array_equal(squeeze.grayscale(one), one)
    with pytest.raises(UserInputError, match="1 or 3 channels"):
        squeeze.grayscale(np.zeros((2, 8, 8, 4), np.uint8))


def test_jpeg_changes_images_at_low_quality_and_is_nearly_idempotent_at_high(images):
    low = squeeze.jpeg(images, quality=10)
    assert np.mean(np.abs(low.astype(np.int32) - images)) > 10  # noise does not survive quality 10
    # A smooth image (what JPEG is made for; neutral grey so chroma subsampling
    # plays no part) survives quality 95, and a second pass changes nothing.
    ramp = np.linspace(0, 1, 8)
    smooth = np.repeat(np.rint(255 * np.add.outer(ramp, ramp) / 2)[None, ..., None], 3, axis=-1).astype(np.uint8)
    once = squeeze.jpeg(smooth, quality=95)
    twice = squeeze.jpeg(once, quality=95)
    assert np.mean(np.abs(once.astype(np.int32) - smooth)) < 1.0
    assert np.mean(np.abs(twice.astype(np.int32) - once)) < 0.1
    gray = squeeze.jpeg(images[..., :1], quality=50)
    assert gray.shape == images[..., :1].shape and gray.dtype == np.uint8


@settings(max_examples=8, deadline=None)
@given(bits=st.integers(1, 8))
def test_bdr_yields_exactly_two_to_the_bits_levels(bits):
    ramp = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)  # every value once
    out = squeeze.bit_depth_reduction(ramp, bits)
    levels = np.unique(out)
    assert levels.size == 2**bits
    assert levels[0] == 0 and levels[-1] == 255
    # Each pixel moves to the nearest level.
    assert np.max(np.abs(out.astype(np.int32) - ramp)) <= int(np.ceil(255 / (2**bits - 1) / 2))


def test_blur_apbench_setting_is_almost_identity_and_a_real_blur_smooths(images):
    np.testing.assert_allclose(squeeze.gaussian_blur(images, 3, 0.1), images / 255, atol=1e-6)
    blurred = squeeze.gaussian_blur(images, 3, 2.0)
    roughness = lambda a: np.mean(np.abs(np.diff(a, axis=1)))  # noqa: E731
    assert roughness(blurred) < 0.7 * roughness(images / 255)
    flat = np.full((1, 8, 8, 3), 77, np.uint8)
    np.testing.assert_allclose(squeeze.gaussian_blur(flat, 5, 3.0), flat / 255, atol=1e-6)
    with pytest.raises(UserInputError, match="too large"):
        squeeze.gaussian_blur(images, 17, 1.0)


# --- orthogonal projection -------------------------------------------------------


def shortcut_set(key, n, num_classes=4):
    """Gaussian images whose class is only visible through a fixed per-class pattern (unit norm)."""
    k_noise, k_pattern, k_label = jax.random.split(key, 3)
    labels = jax.random.randint(k_label, (n,), 0, num_classes)
    patterns = jax.random.normal(k_pattern, (num_classes, 64), jnp.float32)
    patterns = patterns / jnp.linalg.norm(patterns, axis=1, keepdims=True)
    noise = 0.1 * jax.random.normal(k_noise, (n, 64), jnp.float32)
    return 0.5 + noise + patterns[labels], labels


@pytest.mark.slow
def test_projection_removes_the_classifier_directions(key):
    x, y = shortcut_set(key, 64)
    weights, _ = projection.fit_linear_classifier(x, y, 4, 100)
    q = projection.orthonormal_basis(weights)
    np.testing.assert_allclose(q.T @ q, np.eye(4), atol=1e-5)
    projected = projection.project_out(x, q)
    assert float(jnp.max(jnp.abs(projected @ q))) < 1e-4
    # The global rescale keeps Q^T x identical for all examples.
    rescaled = projection.rescale_to_unit(projected)
    assert float(jnp.min(rescaled)) >= 0.0 and float(jnp.max(rescaled)) <= 1.0
    assert float(jnp.max(jnp.std(rescaled @ q, axis=0))) < 1e-4


@pytest.mark.slow
def test_projection_destroys_a_classwise_linear_shortcut(key):
    x, y = shortcut_set(key, 480)
    train, test = slice(0, 320), slice(320, None)
    images = np.asarray(jnp.clip(x, 0, 1)).reshape(-1, 8, 8, 1)
    before = np.asarray(images, np.float32).reshape(len(images), -1)
    after = projection.orthogonal_projection(images, np.asarray(y), steps=200).reshape(len(images), -1)
    assert after.dtype == np.float32 and after.min() >= 0 and after.max() <= 1

    def fresh_accuracy(features):
        w, b = projection.fit_linear_classifier(jnp.asarray(features[train]), y[train], 4, 200)
        return float(projection.linear_accuracy(w, b, jnp.asarray(features[test]), y[test]))

    acc_before, acc_after = fresh_accuracy(before), fresh_accuracy(after)
    assert acc_before > 0.95
    assert acc_after < 0.5  # chance is 0.25


def test_projection_rejects_bad_labels(images):
    with pytest.raises(UserInputError, match="labels"):
        projection.orthogonal_projection(images, np.zeros((3,), np.int32))


# --- training-time augmentations -------------------------------------------------


TRANSFORMS = {
    "cutout": lambda: augment.make_cutout(3),
    "mixup": lambda: augment.make_mixup(3),
    "cutmix": lambda: augment.make_cutmix(3),
    "ueraser-lite": lambda: (lambda k, x, y: (ueraser.ueraser_augment(k, x), y)),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
@pytest.mark.slow
def test_batch_transforms_keep_shape_dtype_range_and_are_deterministic(name, images, key):
    transform = TRANSFORMS[name]()
    x, y = unit(images), jnp.asarray([0, 1, 2, 1])
    out_x, out_y = jax.jit(transform)(key, x, y)
    assert out_x.shape == x.shape and out_x.dtype == jnp.float32
    assert float(out_x.min()) >= 0.0 and float(out_x.max()) <= 1.0
    assert out_y.shape[0] == 4
    again_x, again_y = jax.jit(transform)(key, x, y)
    np.testing.assert_array_equal(out_x, again_x)
    np.testing.assert_array_equal(out_y, again_y)
    if name == "cutout":  # op-by-op Beta sampling and UEraser are slow; one eager check suffices
        eager_x, _ = transform(key, x, y)
        np.testing.assert_allclose(eager_x, out_x, atol=1e-5)
    other_x, _ = jax.jit(transform)(jax.random.fold_in(key, 1), x, y)
    assert not np.array_equal(other_x, out_x)


def test_cutout_zeroes_one_clipped_square(key):
    ones = jnp.ones((64, 8, 8, 1), jnp.float32)
    out, labels = augment.make_cutout(3)(key, ones, jnp.zeros((64,), jnp.int32))
    assert labels.shape == (64,)
    holes = np.asarray(out[..., 0] == 0)
    full = 0
    for hole in holes:
        rows, cols = np.nonzero(hole)
        assert rows.size > 0  # the centre is always inside the image
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert rows.size == height * width  # a solid rectangle
        assert height <= 3 and width <= 3
        full += height == 3 and width == 3
    assert full > 0
    assert set(np.unique(np.asarray(out))) <= {0.0, 1.0}


@pytest.mark.parametrize("make", [augment.make_mixup, augment.make_cutmix], ids=["mixup", "cutmix"])
@pytest.mark.slow
def test_mixed_labels_sum_to_one_and_match_the_pixels(make, key):
    # Constant images i/8 let us read off how much of each example is its partner.
    values = jnp.arange(1, 9, dtype=jnp.float32) / 8
    x = jnp.broadcast_to(values[:, None, None, None], (8, 8, 8, 1))
    y = jnp.arange(8) % 4
    out_x, out_y = jax.jit(make(4))(key, x, y)
    np.testing.assert_allclose(jnp.sum(out_y, axis=1), 1.0, atol=1e-6)
    assert float(out_y.min()) >= 0.0
    # Each example's label weight on its own class matches its own-pixel share.
    own = out_y[jnp.arange(8), y]
    if make is augment.make_mixup:
        lam = own  # x_mix = lam x + (1 - lam) x_partner
        partner = (out_x[:, 0, 0, 0] - lam * values) / jnp.where(lam < 1, 1 - lam, 1.0)
        ok = (lam > 0.999) | jnp.any(jnp.abs(partner[:, None] - values[None, :]) < 1e-4, axis=1)
        assert bool(jnp.all(ok))
    else:
        share = jnp.mean((out_x[..., 0] == values[:, None, None]).astype(jnp.float32), axis=(1, 2))
        partner_same_class = own > share + 1e-6  # a partner of the same class adds to the own weight
        np.testing.assert_allclose(jnp.where(partner_same_class, own, share), own, atol=1e-6)


# --- UEraser -------------------------------------------------------------------------


@pytest.mark.slow
def test_plasma_maps_span_unit_interval(key):
    maps = ueraser.plasma(key, (3, 8, 8, 2), jnp.asarray([0.1, 0.4, 0.7], jnp.float32))
    assert maps.shape == (3, 8, 8, 2)
    np.testing.assert_allclose(jnp.min(maps, axis=(1, 2)), 0.0, atol=1e-6)
    np.testing.assert_allclose(jnp.max(maps, axis=(1, 2)), 1.0, atol=1e-6)


def test_channel_shuffle_only_permutes_channels(images, key):
    x = unit(images)
    out = ueraser.channel_shuffle(key, x, prob=1.0)
    np.testing.assert_array_equal(jnp.sort(out, axis=-1), jnp.sort(x, axis=-1))


@pytest.mark.parametrize("index", range(len(ueraser.OPS)), ids=[name for name, _ in ueraser.OPS])
def test_trivial_augment_ops_keep_shape_and_range(index, images):
    _, op = ueraser.OPS[index]
    img = unit(images[0])
    for m in (-1.0, 0.3, 1.0):
        out = op(img, jnp.asarray(m, jnp.float32))
        assert out.shape == img.shape and out.dtype == img.dtype
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_trivial_augment_applies_the_drawn_op_to_each_example(images, key):
    x = unit(np.concatenate([images, images]))  # 8 examples
    out = jax.jit(ueraser.trivial_augment)(key, x)
    k_op, k_mag = jax.random.split(key)  # the documented draw order
    ops = jax.random.randint(k_op, (8,), 0, len(ueraser.OPS))
    mags = jax.random.uniform(k_mag, (8,), jnp.float32, -1.0, 1.0)
    for i in range(8):
        expected = jnp.clip(ueraser.OPS[int(ops[i])][1](x[i], mags[i]), 0.0, 1.0)
        np.testing.assert_allclose(out[i], expected, atol=1e-6, err_msg=ueraser.OPS[int(ops[i])][0])
    assert len(set(np.asarray(ops).tolist())) > 1


def test_geometric_ops_move_pixels_as_named(images):
    img = unit(images[0])
    ops = dict(ueraser.OPS)
    np.testing.assert_array_equal(ops["hflip"](img, jnp.float32(0.3)), img[:, ::-1])
    shifted = ops["translate-x"](img, jnp.float32(1 / (0.45 * 8)))  # one pixel
    np.testing.assert_array_equal(shifted[:, :-1], img[:, 1:])
    np.testing.assert_array_equal(shifted[:, -1], 0.0)
    np.testing.assert_array_equal(ops["rotate"](img, jnp.float32(0.0)), img)


@pytest.mark.slow
def test_ueraser_max_picks_the_highest_loss_draw(images, key):
    x, y = unit(images), jnp.asarray([0, 1, 2, 3])
    weights = jax.random.normal(jax.random.fold_in(key, 7), (8, 8, 3), jnp.float32)
    fake_loss = lambda xb, yb: jnp.sum(xb * weights[None], axis=(1, 2, 3))  # noqa: E731  [B]
    chosen = jax.jit(lambda k, xb, yb: ueraser.ueraser_max(fake_loss, k, xb, yb, draws=5))(key, x, y)
    augment = jax.jit(ueraser.ueraser_augment)
    draws = jnp.stack([augment(k, x) for k in jax.random.split(key, 5)])  # [5, B, ...]
    scores = jnp.stack([fake_loss(d, y) for d in draws])  # [5, B]
    expected = draws[jnp.argmax(scores, axis=0), jnp.arange(4)]
    np.testing.assert_allclose(chosen, expected, atol=1e-6)
    assert len({int(i) for i in jnp.argmax(scores, axis=0)}) > 1  # choices really are per example


# --- adversarial training ------------------------------------------------------------


@pytest.mark.parametrize("norm,eps,step", [("linf", 8 / 255, 2 / 255), ("l2", 0.5, 0.1)])
def test_pgd_stays_within_eps_and_raises_the_loss(norm, eps, step, images, key):
    x, y = unit(images), jnp.asarray([0, 1, 2, 3])
    w = jax.random.normal(jax.random.fold_in(key, 3), (8, 8, 3), jnp.float32)
    loss = lambda xb, yb: jnp.sum(jnp.tanh(jnp.sum(xb * w[None], axis=(1, 2, 3))))  # noqa: E731
    adv = jax.jit(lambda k: adversarial.pgd(loss, k, x, y, norm=norm, eps=eps, step_size=step, steps=10))(key)
    assert adv.dtype == jnp.float32 and float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    delta = adv - x
    if norm == "linf":
        assert float(jnp.max(jnp.abs(delta))) <= eps + 1e-6
    else:
        assert float(jnp.max(jnp.sqrt(jnp.sum(delta**2, axis=(1, 2, 3))))) <= eps + 1e-5
    assert float(loss(adv, y)) > float(loss(x, y))
    again = jax.jit(lambda k: adversarial.pgd(loss, k, x, y, norm=norm, eps=eps, step_size=step, steps=10))(key)
    np.testing.assert_array_equal(adv, again)


@settings(max_examples=6, deadline=None)
@given(eps=st.floats(0.0, 0.3), seed=st.integers(0, 100))
def test_pgd_linf_budget_property(eps, seed):
    key = jax.random.key(seed)
    x = jax.random.uniform(key, (2, 8, 8, 1), jnp.float32)
    loss = lambda xb, yb: jnp.sum(xb**3)  # noqa: E731
    adv = adversarial.pgd(loss, key, x, None, eps=eps, step_size=eps / 2, steps=3)
    assert float(jnp.max(jnp.abs(adv - x))) <= eps + 1e-6


# --- APL ---------------------------------------------------------------------------------


@pytest.mark.parametrize("passive", ["rce", "mae"])
def test_apl_is_finite_and_lower_for_correct_predictions(passive):
    logits = jnp.asarray([[1e4, -1e4, 0.0], [0.0, 0.0, 0.0], [-3.0, 2.0, 9.0]], jnp.float32)
    right = losses.apl_per_example(logits, jnp.asarray([0, 1, 2]), passive=passive)
    wrong = losses.apl_per_example(logits, jnp.asarray([1, 2, 0]), passive=passive)
    assert bool(jnp.all(jnp.isfinite(right))) and bool(jnp.all(jnp.isfinite(wrong)))
    assert float(right[0]) < float(wrong[0]) and float(right[2]) < float(wrong[2])
    np.testing.assert_allclose(right[1], wrong[1], rtol=1e-6)  # uniform prediction: no preference
    soft = losses.make_apl_loss(passive=passive)(logits, jax.nn.one_hot(jnp.asarray([0, 1, 2]), 3))
    np.testing.assert_allclose(soft, right, rtol=1e-6)  # per-example, one-hot == integer labels
    grads = jax.grad(lambda z: losses.make_apl_loss(passive=passive)(z, jnp.asarray([0, 1, 2])).sum())(logits)
    assert bool(jnp.all(jnp.isfinite(grads)))


def test_apl_rce_matches_its_closed_form_for_one_hot_labels():
    # With one-hot q and log 0 := -4, RCE = 4 (1 - p_y) and NCE = log p_y / sum_j log p_j.
    logits = jnp.asarray([[0.5, -1.0, 2.0]], jnp.float32)
    p = jax.nn.softmax(logits)[0]
    expected = jnp.log(p[2]) / jnp.sum(jnp.log(p)) + 4 * (1 - p[2])
    np.testing.assert_allclose(losses.apl_per_example(logits, jnp.asarray([2]))[0], expected, rtol=1e-6)
