"""``beo``: Bayes-error optimisation (LOO Gaussian-kernel estimate, projected gradient ascent)."""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntga.budget import check_budget
from ntga.errors import UserInputError
from ntga.generate import main
from ntga.methods import ProtectTask, config_from_options, get_method
from ntga.methods import beo_estimate as est
from ntga.methods.beo import BEOConfig, _reference_rows
from ntga.poisondir import read_poison_dir

SPEC = get_method("beo")


def _two_class_images(n: int, channels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class 0 bright on the left half, class 1 on the right, plus noise: uint8 [n, 8, 8, C]."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.uniform(0.0, 0.4, size=(n, 8, 8, channels))
    x[y == 0, :, :4] += 0.5
    x[y == 1, :, 4:] += 0.5
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8), y.astype(np.int64)


def _protect(x, y, key, **options):
    config = SPEC.resolved(BEOConfig(**options), x.shape[1:])
    return SPEC.protect(ProtectTask(x=x, y=y, num_classes=2), config, key), config


def _whole_set_estimate(x_uint8: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """The exact (not smoothed) LOO Bayes-error estimate of the whole set, in pixel space."""
    z = jnp.asarray(x_uint8.reshape(len(x_uint8), -1), jnp.float32) / 255.0
    post = est.loo_posteriors(est.pairwise_sq_dists(z, z), jax.nn.one_hot(y, 2, dtype=jnp.float32),
                              jnp.ones(len(y), bool), bandwidth)
    return float(est.bayes_error(post, jnp.ones(len(y), bool)))


def test_loo_posterior_excludes_the_point_itself():
    # a (class 0) sits next to b (class 1); c (class 0) is far. Left out, a's nearest neighbour
    # is b, so a leans to class 1; counting itself, a would lean to its own class 0.
    z = jnp.asarray([[0.0], [0.5], [3.0]], jnp.float32)
    onehot = jax.nn.one_hot(jnp.asarray([0, 1, 0]), 2, dtype=jnp.float32)
    h = 1.0
    post = est.loo_posteriors(est.pairwise_sq_dists(z, z), onehot, jnp.ones(3, bool), h)
    k = np.exp(-np.subtract.outer(np.asarray(z)[:, 0], np.asarray(z)[:, 0]) ** 2 / (2 * h * h))
    loo_a = np.array([k[0, 2], k[0, 1]]) / (k[0, 1] + k[0, 2])
    with_self_a = np.array([k[0, 0] + k[0, 2], k[0, 1]]) / k[0].sum()
    np.testing.assert_allclose(np.asarray(post[0]), loo_a, rtol=1e-5)
    assert post[0, 1] > 0.5 > with_self_a[1]


@settings(max_examples=6, deadline=None)
@given(st.sampled_from([3, 6]), st.sampled_from([0, 2]), st.floats(0.3, 3.0), st.integers(0, 10_000))
@pytest.mark.slow
def test_posteriors_match_the_formula_and_ignore_padding(m, pad, h, seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(m + pad, 3))
    y = rng.integers(0, 3, size=m + pad)
    valid = np.arange(m + pad) < m
    post = np.asarray(est.loo_posteriors(est.pairwise_sq_dists(jnp.asarray(z), jnp.asarray(z)),
                                         jax.nn.one_hot(y, 3), jnp.asarray(valid), h))
    for i in range(m):
        w = np.array([np.exp(-np.sum((z[i] - z[j]) ** 2) / (2 * h * h)) if j != i and valid[j] else 0.0
                      for j in range(m + pad)])
        expected = np.array([w[y == c].sum() for c in range(3)]) / w.sum()
        np.testing.assert_allclose(post[i], expected, rtol=1e-6, atol=1e-12)


def test_smooth_max_surrogate_brackets_the_estimate():
    post = jnp.asarray([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    valid, tau = jnp.ones(2, bool), 0.05
    exact = float(est.bayes_error(post, valid))
    smooth = float(est.surrogate(post, jax.nn.one_hot(jnp.asarray([0, 1]), 3), valid, "smooth-max", tau))
    assert exact - tau * np.log(3) - 1e-9 <= smooth <= exact + 1e-9
    label = float(est.surrogate(post, jax.nn.one_hot(jnp.asarray([0, 1]), 3), valid, "label", tau))
    assert label == pytest.approx(1 - (0.7 + 0.35) / 2)


@settings(max_examples=4, deadline=None)
@given(st.sampled_from([1, 3]), st.sampled_from([0.05, 8 / 255, 0.3]), st.integers(5, 14), st.integers(0, 3))
@pytest.mark.slow
def test_output_is_uint8_within_budget_with_labels_kept(channels, eps, n, seed):
    x, y = _two_class_images(n, channels, seed)
    out, config = _protect(x, y, jax.random.key(seed), eps=eps, steps=1, block_size=4, reference_size=6)
    assert out.x.dtype == np.uint8 and out.x.shape == x.shape
    np.testing.assert_array_equal(out.y, y)
    check_budget(x, out.x, config.eps, "linf")


@pytest.mark.slow
def test_same_key_same_output_other_key_other_reference(key):
    x, y = _two_class_images(24, 1)
    a, _ = _protect(x, y, key, steps=3, block_size=4, reference_size=6)
    b, _ = _protect(x, y, key, steps=3, block_size=4, reference_size=6)
    c, _ = _protect(x, y, jax.random.key(1), steps=3, block_size=4, reference_size=6)
    np.testing.assert_array_equal(a.x, b.x)
    assert a.info == b.info
    assert not np.array_equal(a.x, c.x)


@pytest.mark.slow
def test_raises_the_bayes_error_estimate_above_clean_and_random_noise(key):
    x, y = _two_class_images(32, 1)
    out, config = _protect(x, y, key, steps=5)
    h = out.info["bandwidth"]
    rng = np.random.default_rng(0)
    noise = np.clip(x / 255.0 + rng.uniform(-config.eps, config.eps, size=x.shape), 0, 1)
    x_noise = np.round(noise * 255).astype(np.uint8)
    check_budget(x, x_noise, config.eps + 0.5 / 255, "linf")
    clean, noisy, poisoned = (_whole_set_estimate(v, y, h) for v in (x, x_noise, out.x))
    assert poisoned > clean + 0.05 and poisoned > noisy + 0.05
    assert out.info["bayes_error_after"] > out.info["bayes_error_before"]
    assert out.info["surrogate_after"] > out.info["surrogate_before"]


def test_reference_rows_skip_the_block_and_reach_the_clean_rest(key):
    rows = _reference_rows(num_pool=30, lo=4, hi=8, size=20, key=key)
    assert len(rows) == len(np.unique(rows)) == 20
    assert not np.any((rows >= 4) & (rows < 8)) and rows.max() >= 20
    np.testing.assert_array_equal(rows, _reference_rows(30, 4, 8, 20, key))


@pytest.mark.slow
def test_clean_rest_changes_the_result(key):
    # --fraction < 1: the images that stay clean are neighbours in the estimate.
    x, y = _two_class_images(24, 1)
    config = SPEC.resolved(BEOConfig(steps=3, block_size=4, reference_size=10), (8, 8, 1))
    alone = SPEC.protect(ProtectTask(x=x[:12], y=y[:12], num_classes=2), config, key)
    mixed = SPEC.protect(ProtectTask(x=x[:12], y=y[:12], num_classes=2, x_rest=x[12:], y_rest=y[12:]),
                         config, key)
    assert mixed.info["reference_size"] == 10 > alone.info["reference_size"] == 8
    assert not np.array_equal(alone.x, mixed.x)


def test_resume_reuses_finished_blocks(tmp_path, key):
    from ntga.run.blocks import BlockRunner
    from ntga.run.workdir import WorkDir

    x, y = _two_class_images(12, 1)
    config = SPEC.resolved(BEOConfig(steps=2, block_size=4, reference_size=4), (8, 8, 1))
    work = WorkDir(tmp_path / "out")
    work.open({"method": "beo"}, resume=False)

    def task(resume):
        return ProtectTask(x=x, y=y, num_classes=2, blocks=BlockRunner(work, resume=resume))

    first = SPEC.protect(task(False), config, key)
    assert work.finished(3) == [0, 1, 2]
    # Replace block 1 by the clean images (through the checksummed work-file API, as the
    # runner writes it): a resumed run must take it as finished.
    _, stats = work.load_block(1, (4, 8, 8, 1))
    work.save_block(1, x[4:8], {k: v for k, v in stats.items() if k not in ("index", "shape")})
    resumed = SPEC.protect(task(True), config, key)
    np.testing.assert_array_equal(resumed.x[4:8], x[4:8])
    # Other images written behind the checksum's back are not trusted: the block is recomputed.
    buf = io.BytesIO()
    np.save(buf, x[:4], allow_pickle=False)
    (work.work / "block_00001.npy").write_bytes(buf.getvalue())
    redone = SPEC.protect(task(True), config, key)
    np.testing.assert_array_equal(redone.x, first.x)
    np.testing.assert_array_equal(resumed.x[:4], first.x[:4])
    fresh = SPEC.protect(ProtectTask(x=x, y=y, num_classes=2), config, key)  # in memory, no work directory
    np.testing.assert_array_equal(fresh.x, first.x)


@pytest.mark.slow
def test_random_network_features(key):
    x, y = _two_class_images(10, 3)
    phi = est.make_feature_fn("fnn-relu", x, 2, key)
    z = phi(jnp.asarray(x, jnp.float32) / 255)
    assert z.shape == (10, 512)  # the readout's input, not the 2 logits
    out, config = _protect(x, y, key, steps=2, block_size=4, reference_size=4, features="fnn-relu")
    check_budget(x, out.x, config.eps, "linf")
    assert out.info["kernel_space"] == "fnn-relu"


@pytest.mark.parametrize("items, message", [
    (["features=resnet99"], "features='resnet99' is invalid; accepted: none .*fnn-relu"),
    (["bandwidth=-1"], "bandwidth=-1.0 is invalid"),
    (["steps=0"], "steps=0 is invalid"),
    (["objective=max"], "objective must be one of smooth-max, label"),
    (["temperature=0"], "temperature=0.0 is invalid"),
    (["eps=2"], "eps=2.0 is invalid"),
])
def test_bad_options_raise_one_clear_error(items, message):
    with pytest.raises(UserInputError, match=message):
        config_from_options(SPEC, items)


def test_needs_two_images(key):
    x, y = _two_class_images(1, 1)
    with pytest.raises(UserInputError, match="at least 2 training images"):
        _protect(x, y, key)


@pytest.mark.slow
def test_cli_writes_a_readable_poison_directory(tmp_path):
    out = tmp_path / "beo"
    main(["--dataset", "digits", "--train-size", "60", "--target-size", "10", "--no-progress",
          "--method", "beo", "--steps", "3", "--method-opt", "block_size=16", "--out", str(out)])
    poisons = read_poison_dir(out)
    assert poisons.x.shape[0] == 60 and poisons.manifest["method"] == "beo"
    assert poisons.manifest["info_bayes_error_after"] > poisons.manifest["info_bayes_error_before"]
