"""The model-free shortcut baselines ``lsp``, ``ops`` and ``ar`` (ntga.methods.shortcuts)."""

from __future__ import annotations

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
from ntga.methods import ar_process
from ntga.methods.shortcuts import ar_noise, lsp_grid, ops_scores
from ntga.pixels import perturbation_norms
from ntga.poisondir import read_poison_dir

TINY = ["--dataset", "digits", "--train-size", "60", "--target-size", "10", "--no-progress"]


def _task(channels: int, *, classes: int = 3, per_class: int = 4, grey: bool = False, seed: int = 0) -> ProtectTask:
    """8x8 images, ``per_class`` of each class; ``grey``: flat mid-grey, so no change is clipped."""
    n = classes * per_class
    rng = np.random.default_rng(seed)
    x = np.full((n, 8, 8, channels), 128, np.uint8) if grey else rng.integers(0, 256, (n, 8, 8, channels), np.uint8)
    return ProtectTask(x=x, y=np.repeat(np.arange(classes), per_class).astype(np.int64), num_classes=classes)


def _run(name: str, task: ProtectTask, key, *options: str, **shared):
    spec = get_method(name)
    config = spec.resolved(config_from_options(spec, list(options), **shared), task.x.shape[1:])
    return spec.protect(task, config, key), config


def _delta(task: ProtectTask, out) -> np.ndarray:
    return out.x.astype(np.int64) - task.x.astype(np.int64)


# ----------------------------------------------------------------------------- budget and determinism


@settings(max_examples=6, deadline=None)
@given(method=st.sampled_from(["lsp", "ar"]), channels=st.sampled_from([1, 3]), norm=st.sampled_from(["l2", "linf"]),
       eps=st.sampled_from([None, 0.25, 0.5]), seed=st.integers(0, 3))
@pytest.mark.slow
def test_lsp_and_ar_stay_within_the_declared_budget(method, channels, norm, eps, seed):
    task = _task(channels, seed=seed)
    out, config = _run(method, task, jax.random.key(seed), eps=eps, norm=norm)
    assert out.x.dtype == np.uint8 and out.x.shape == task.x.shape and np.array_equal(out.y, task.y)
    check_budget(task.x, out.x, config.eps, norm)
    assert np.any(out.x != task.x)


@pytest.mark.parametrize("name", ["lsp", "ops", "ar"])
def test_same_key_same_output_and_ops_ignores_the_key(name, key):
    task = _task(3)
    a, b = _run(name, task, key)[0], _run(name, task, key)[0]
    c = _run(name, task, jax.random.fold_in(key, 1))[0]
    assert np.array_equal(a.x, b.x) and a.info == b.info
    assert np.array_equal(a.x, c.x) == (name == "ops")


def test_default_budgets_follow_the_papers():
    lsp, ar = get_method("lsp"), get_method("ar")
    assert lsp.resolved(lsp.default_config(), (32, 32, 3)).eps == pytest.approx(6 / 255 * np.sqrt(3072))
    assert lsp.resolved(lsp.default_config(), (28, 28, 1)).eps == pytest.approx(6 / 255 * 28)
    assert ar.resolved(ar.default_config(), (32, 32, 3)).eps == 1.0
    assert ar.resolved(config_from_options(ar, [], norm="linf"), (32, 32, 3)).eps == pytest.approx(8 / 255)
    assert lsp.resolved(config_from_options(lsp, [], norm="linf"), (28, 28, 1)).eps == 0.3
    assert (lsp.budget_norm, ar.budget_norm, get_method("ops").budget_norm) == ("linf", "linf", None)


@pytest.mark.parametrize("name, items, shared, message", [
    ("lsp", [], {"eps": -0.1}, "--eps must be"),
    ("lsp", [], {"eps": 2.0, "norm": "linf"}, r"--eps must be \(0, 1\] for norm linf"),
    ("lsp", ["patch_size=0"], {}, "patch_size must be an integer >= 1"),
    ("lsp", ["class_sep=0"], {}, "class_sep must be a finite number > 0"),
    ("lsp", ["noise=both"], {}, "noise must be one of sample-wise, class-wise"),
    ("ops", ["objective=best"], {}, "objective must be one of paper, official"),
    ("ops", [], {"eps": 0.1}, "--eps does not apply to --method ops"),
    ("ar", ["window=1"], {}, r"window must be an integer in \[2, 8\]"),
    ("ar", ["crop=-1"], {}, r"crop must be an integer in \[0, 64\]"),
    ("ar", ["min_response=-1"], {}, "min_response must be a finite number >= 0"),
])
def test_bad_settings_get_one_clear_error(name, items, shared, message):
    with pytest.raises(UserInputError, match=message):
        config_from_options(get_method(name), items, **shared)


def test_settings_that_do_not_fit_the_data_are_refused(key, monkeypatch):
    with pytest.raises(UserInputError, match="too few cells to separate 3 classes"):
        _run("lsp", _task(1), key, "patch_size=8")  # one 8x8 patch of one channel: 2 vertices
    monkeypatch.setattr(ar_process, "_MAX_ROUNDS", 2)  # the search gives up after this many batches
    with pytest.raises(UserInputError, match="found only .* lower --method-opt min_response"):
        _run("ar", _task(1), key, "min_response=1e9")


# ----------------------------------------------------------------------------- lsp


def test_lsp_grid_keeps_four_by_four_patches():
    assert lsp_grid(32, 32, None) == (8, 4, 4)
    assert lsp_grid(28, 28, None) == (7, 4, 4)
    assert lsp_grid(8, 8, None) == (2, 4, 4)
    assert lsp_grid(28, 28, 8) == (8, 4, 4)  # last row/column of patches cropped to 4 pixels


def test_lsp_class_wise_is_one_patch_pattern_per_class(key):
    patch = 3  # does not divide 8: the last row and column of patches are cropped
    task = _task(3, grey=True)
    out, config = _run("lsp", task, key, "noise=class-wise", f"patch_size={patch}", eps=1.0)
    d = _delta(task, out)
    for k in range(3):
        members = d[task.y == k]
        assert np.all(members == members[:1]) and np.any(members != 0)
    assert not np.array_equal(d[0], d[4]) and not np.array_equal(d[4], d[8])
    for i in range(0, 8, patch):  # constant on every (possibly cropped) patch of every channel
        for j in range(0, 8, patch):
            block = d[:, i:i + patch, j:j + patch, :]
            assert np.all(block == block[:, :1, :1, :])
    assert out.info == {"patch_size": patch, "grid": [-(-8 // patch)] * 2}
    norms = perturbation_norms(task.x, out.x, "l2")  # scaled to the radius; rounding within it may shrink a little
    assert np.all((norms > 0.9) & (norms <= 1.0 + 1e-9))


def test_lsp_sample_wise_draws_differ_but_stay_linearly_separable(key):
    task = _task(1, grey=True)
    d = _delta(task, _run("lsp", task, key, eps=1.0)[0]).reshape(12, -1).astype(float)
    assert len(np.unique(d, axis=0)) == 12  # every image its own draw
    means = np.stack([d[task.y == k].mean(axis=0) for k in range(3)])
    nearest = np.argmin(((d[:, None, :] - means[None, :, :]) ** 2).sum(axis=-1), axis=1)
    assert np.array_equal(nearest, task.y)  # a linear (nearest-mean) rule recovers the class


# ----------------------------------------------------------------------------- ops


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("objective", ["paper", "official"])
def test_ops_scores_match_the_direct_statistics(channels, objective):
    x = np.random.default_rng(channels).integers(0, 256, (9, 8, 8, channels), np.uint8)
    scores = ops_scores(x, objective)
    v = x.reshape(9, 64, channels) / 255.0
    for q in range(2 ** channels):
        xi = np.array([(q >> (channels - 1 - c)) & 1 for c in range(channels)], float)
        change = np.abs(v - xi[None, None, :])  # [n, P, C]
        if objective == "paper":
            g = change.sum(axis=-1)
            want = g.mean(axis=0) / g.var(axis=0)
        else:
            flat = change.transpose(1, 0, 2).reshape(64, -1)
            want = flat.mean(axis=1) / flat.std(axis=1)
        np.testing.assert_allclose(scores[:, q], want, rtol=1e-9)


@settings(max_examples=6, deadline=None)
@given(channels=st.sampled_from([1, 3]), classes=st.integers(2, 4), seed=st.integers(0, 9))
def test_ops_changes_one_shared_pixel_per_class(channels, classes, seed):
    task = _task(channels, classes=classes, per_class=3, seed=seed)
    out = get_method("ops").protect(task, get_method("ops").default_config(), jax.random.key(0))
    assert out.x.dtype == np.uint8 and out.x.shape == task.x.shape and np.array_equal(out.y, task.y)
    changed = np.any(out.x != task.x, axis=-1)  # [n, H, W]
    assert np.all(changed.sum(axis=(1, 2)) <= 1)
    picks = {p["class"]: (p["row"], p["col"], tuple(p["colour"])) for p in out.info["pixels"]}
    assert sorted(picks) == list(range(classes)) and len(set(picks.values())) == classes
    for i, k in enumerate(task.y):
        r, c, colour = picks[int(k)]
        assert tuple(out.x[i, r, c]) == colour and set(colour) <= {0, 255}
        assert changed[i].sum() == 0 or changed[i, r, c]


def test_ops_finds_a_planted_pixel_and_never_reuses_a_pair():
    task = _task(3, classes=2, per_class=5, seed=1)
    x = task.x.copy()
    x[task.y == 0, 2, 5, :] = (10, 245, 12)  # constant in class 0: changing it to (1, 0, 1) is large and stable
    x[task.y == 1] = x[task.y == 0]  # class 1 has the same images, so it must take another pair
    out = get_method("ops").protect(ProtectTask(x=x, y=task.y, num_classes=2), get_method("ops").default_config(), None)
    first, second = out.info["pixels"]
    assert (first["row"], first["col"], first["colour"]) == (2, 5, [255, 0, 255])
    assert (second["row"], second["col"], second["colour"]) != (2, 5, [255, 0, 255])


# ----------------------------------------------------------------------------- ar


@pytest.mark.slow
def test_ar_scan_matches_a_plain_raster_loop(key):
    coeffs = ar_process.random_coefficients(key, 2, 2, 3)
    start = np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (2, 2, 7, 6)))
    got = np.asarray(jax.jit(ar_process.generate)(coeffs, jnp.asarray(start)))
    want, b = start.copy(), np.asarray(coeffs)
    for i in range(2, 7):
        for j in range(2, 6):
            window = want[:, :, i - 2:i + 1, j - 2:j + 1]
            want[:, :, i, j] = np.sum(b[:, :, :, :] * window * (np.arange(9).reshape(3, 3) != 8), axis=(2, 3))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_ar_processes_are_stable_and_distinct(key):
    coeffs, summary = ar_process.find_processes(key, 3, 3, 3, (8, 8), 4, 0.1)
    noise = ar_noise(jax.random.fold_in(key, 1), coeffs, np.repeat(np.arange(3), 4), (8, 8), 4)[::4]
    signals = jnp.asarray(np.moveaxis(noise, -1, 1))
    resp = np.asarray(ar_process._responses(jnp.asarray(coeffs), signals))  # [filter, sample]
    assert np.all(np.sqrt(np.mean(noise ** 2, axis=(1, 2, 3))) <= ar_process.MAX_RMS * 3)
    assert np.all(np.abs(np.diag(resp)) < 1e-4) and summary["lowest_cross_response"] >= 0.1
    assert np.all(resp[~np.eye(3, dtype=bool)] > 0.01)


def test_ar_noise_is_predicted_by_its_own_class_filter_only(key):
    task = _task(3, classes=3, per_class=4, grey=True)
    out, config = _run("ar", task, key, eps=2.0)
    coeffs = np.asarray(out.info["coefficients"], np.float32)
    d = jnp.asarray(np.moveaxis(_delta(task, out), -1, 1).astype(np.float32) / 255.0)  # [n, C, H, W]
    own = ar_process.residual(jnp.asarray(coeffs[task.y]), d)
    rms = lambda a: np.sqrt(np.mean(np.asarray(a) ** 2, axis=(1, 2, 3)))  # noqa: E731
    for other in range(1, 3):
        wrong = ar_process.residual(jnp.asarray(coeffs[(task.y + other) % 3]), d)
        assert np.all(rms(own) < 0.5 * rms(wrong))  # uint8 rounding leaves a small own residual
    fresh = ar_noise(key, coeffs, task.y, (8, 8), config.crop)  # before rounding: exactly predictable
    own = ar_process.residual(jnp.asarray(coeffs[task.y]), jnp.asarray(np.moveaxis(fresh, -1, 1)))
    assert np.all(rms(own) < 1e-4 * rms(jnp.asarray(np.moveaxis(fresh, -1, 1))))
    assert not np.array_equal(fresh[0], fresh[1])  # each image its own sample of the class process


# ----------------------------------------------------------------------------- command line


@pytest.mark.parametrize("name, flags", [("lsp", []), ("lsp", ["--norm", "linf", "--eps", "16/255"]),
                                         ("ops", []), ("ar", [])])
@pytest.mark.slow
def test_cli_writes_a_loadable_poison_directory(tmp_path, name, flags):
    out = tmp_path / name
    assert main([*TINY, "--method", name, *flags, "--out", str(out)]) == 0
    poisons = read_poison_dir(out)
    from ntga.data import load_dataset, make_split

    split = make_split(load_dataset("digits"), train_size=60, target_size=10, seed=0)
    m = poisons.manifest
    assert m["method"] == name and poisons.x.shape == split.x_train.shape
    assert np.any(poisons.x != split.x_train)
    if name == "ops":
        assert m["norm"] == "none" and "eps" not in m and len(m["info_pixels"]) == 10
    else:
        assert m["norm"] == ("linf" if flags else "l2")
        check_budget(split.x_train, poisons.x, m["eps"], m["norm"])
