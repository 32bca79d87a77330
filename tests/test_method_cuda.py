"""``cuda``: private class-wise filters, the per-image renormalisation, key handling and the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntga.errors import UserInputError
from ntga.generate import main
from ntga.methods import ProtectTask, config_from_options, get_method
from ntga.methods.cuda import CudaConfig, make_filters, private_key_record
from ntga.poisondir import read_poison_dir

SPEC = get_method("cuda")
TINY = ["--dataset", "digits", "--train-size", "60", "--target-size", "10", "--no-progress"]


def _task(n=12, size=8, channels=3, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
    y = (np.arange(n) % classes).astype(np.int64)
    return ProtectTask(x=x, y=y, num_classes=classes)


def _reference(x_uint8, filt):
    """Straightforward numpy CUDA for one image: zero-padded cross-correlation, / max, round."""
    k = filt.shape[0]
    lo, hi = (k - 1) // 2, k // 2
    x = x_uint8.astype(np.float64) / 255
    padded = np.pad(x, ((lo, hi), (lo, hi), (0, 0)))
    h, w, _ = x.shape
    out = np.zeros_like(x)
    for r in range(h):
        for c in range(w):
            out[r, c] = np.einsum("ij,ijc->c", filt, padded[r:r + k, c:c + k])
    peak = out.max()
    return np.round(np.clip(out / peak if peak > 0 else out, 0, 1) * 255).astype(np.uint8)


def test_filters_follow_the_paper():
    secret = hashlib.sha256(b"test").digest()
    f = make_filters(secret, 10, 3, 0.3, 1.0)
    assert f.shape == (10, 3, 3)
    for filt in f:
        ones = np.isclose(filt, 1.0)
        assert ones.sum() == 1  # one random entry is the "center" parameter
        rest = filt[~ones]
        assert np.all((rest >= 0) & (rest < 0.3))
    positions = {int(np.argmax(filt)) for filt in f}
    assert len(positions) > 1  # the 1 is at a random position, not always the centre
    assert not np.allclose(f[0], f[1])
    # A class's filter does not depend on how many classes there are.
    np.testing.assert_array_equal(make_filters(secret, 3, 3, 0.3, 1.0), f[:3])


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([1, 3]), st.sampled_from([1, 2, 3, 5]))
def test_output_is_the_renormalised_class_convolution(seed, channels, kernel_size):
    task = _task(n=6, channels=channels, seed=seed)
    cfg = CudaConfig(private_key=f"k{seed}", kernel_size=kernel_size)
    out = SPEC.protect(task, cfg, jax.random.key(0))
    assert out.x.dtype == np.uint8 and out.x.shape == task.x.shape
    np.testing.assert_array_equal(out.y, task.y)
    filters = make_filters(cfg._secret, 3, kernel_size, 0.3, 1.0)
    for i in range(len(task.y)):
        expected = _reference(task.x[i], filters[task.y[i]])
        # float32 (ours) vs float64 (reference) may round a pixel on a .5 boundary differently
        assert np.abs(out.x[i].astype(int) - expected.astype(int)).max() <= 1
        # Per-image normalisation over all pixels and channels: the brightest value is 255.
        assert out.x[i].max() == 255


def test_same_class_images_share_a_filter_and_black_stays_black():
    x = np.zeros((4, 8, 8, 1), np.uint8)
    x[:, 3, 3, 0] = 200  # an impulse: the output is the (flipped) filter itself
    x[3] = 0
    task = ProtectTask(x=x, y=np.array([0, 0, 1, 1]), num_classes=2)
    out = SPEC.protect(task, CudaConfig(private_key="impulse"), jax.random.key(0)).x
    np.testing.assert_array_equal(out[0], out[1])
    assert not np.array_equal(out[0], out[2])
    assert np.all(out[3] == 0)


def test_same_key_same_dataset_other_key_other_dataset(key):
    task = _task()
    a = SPEC.protect(task, CudaConfig(private_key="correct horse"), key).x
    b = SPEC.protect(task, CudaConfig(private_key="correct horse"), jax.random.key(99)).x
    c = SPEC.protect(task, CudaConfig(private_key="battery staple"), key).x
    np.testing.assert_array_equal(a, b)  # the passphrase, not --seed, fixes the filters
    assert not np.array_equal(a, c)
    # Without a passphrase the filters derive from the run's key.
    d = SPEC.protect(task, CudaConfig(), key).x
    e = SPEC.protect(task, CudaConfig(), key).x
    f = SPEC.protect(task, CudaConfig(), jax.random.fold_in(key, 1)).x
    np.testing.assert_array_equal(d, e)
    assert not np.array_equal(d, f)


def test_the_passphrase_is_never_kept():
    cfg = config_from_options(SPEC, ["private_key=my secret phrase"])
    record = private_key_record("my secret phrase")
    assert cfg.private_key == record and "my secret phrase" not in repr(cfg)
    assert dataclasses.asdict(cfg)["private_key"] == record and "_secret" not in dataclasses.asdict(cfg)
    # Salted: not the plain sha256 someone could look up.
    assert hashlib.sha256(b"my secret phrase").hexdigest() not in record
    assert record != private_key_record("my secret phrase!")
    info = SPEC.protect(_task(), cfg, jax.random.key(0)).info
    assert info["private_key_sha256"] == record and info["key_source"] == "passphrase"
    # A config holding only the digest (e.g. rebuilt from a manifest) cannot regenerate.
    with pytest.raises(UserInputError, match="pass the passphrase itself"):
        SPEC.protect(_task(), dataclasses.replace(cfg), jax.random.key(0))


@pytest.mark.parametrize("opts, message", [
    (["kernel_size=0"], r"kernel_size must be an integer in \[1, 15\]"),
    (["blur_parameter=-0.1"], r"blur_parameter must be in \(0, 10\]"),
    (["center_parameter=0"], r"center_parameter must be in \(0, 10\]"),
    (["private_key="], "private_key must be a non-empty passphrase"),
    (["kernel_size=2.5"], "kernel_size must be a int"),
])
def test_bad_options_raise_one_clear_error(opts, message):
    with pytest.raises(UserInputError, match=message):
        config_from_options(SPEC, opts)


def test_kernel_larger_than_the_images_is_refused():
    with pytest.raises(UserInputError, match="kernel_size 9 exceeds the 8x8 images"):
        SPEC.protect(_task(), CudaConfig(kernel_size=9), jax.random.key(0))


def test_cli_writes_an_unbounded_poison_dir_without_the_passphrase(tmp_path):
    out = tmp_path / "c"
    argv = [*TINY, "--method", "cuda", "--method-opt", "private_key=hunter2 hunter2", "--method-opt",
            "blur_parameter=0.5"]
    assert main([*argv, "--out", str(out)]) == 0
    poisons = read_poison_dir(out)
    m = poisons.manifest
    assert m["method"] == "cuda" and m["norm"] == "none" and "eps" not in m
    assert m["blur_parameter"] == 0.5 and m["info_private_key_sha256"] == private_key_record("hunter2 hunter2")
    assert "hunter2" not in (out / "manifest.json").read_text()
    assert json.loads((out / "manifest.json").read_text())["private_key"].startswith("pbkdf2-sha256:")
    assert poisons.x.dtype == np.uint8 and poisons.x.shape[0] == 60
    assert np.all(poisons.x.reshape(60, -1).max(axis=1) == 255)
    # Rerunning with the same passphrase reproduces the dataset byte for byte.
    assert main([*argv, "--out", str(tmp_path / "d")]) == 0
    np.testing.assert_array_equal(read_poison_dir(tmp_path / "d").x, poisons.x)
