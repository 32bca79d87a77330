"""``sep``: checkpoint schedule, feature capture, the ensemble attack's budget and effect, resume, CLI."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntga import workfiles

from ntga.train.inputs import channel_stats, standardize
from ntga.models import get_model
from ntga.budget import check_budget
from ntga.errors import UserInputError
from ntga.generate import main
from ntga.methods import ProtectTask, config_from_options, get_method
from ntga.methods import sep as sep_module
from ntga.methods.sep import CHECKPOINT_FILE, PROGRESS_FILE, make_target_grad, sep_attack
from ntga.methods.sep_surrogate import checkpoint_steps, init_variables, load_checkpoints, readout_features
from ntga.poisondir import read_poison_dir

SPEC = get_method("sep")
# Tiny settings shared by the tests, so the jitted steps compile once per process.
OPTS = ["surrogate_width=4", "epochs=3", "checkpoints=3", "steps=3", "train_batch_size=8", "attack_batch_size=8"]
TINY = ["--dataset", "digits", "--train-size", "60", "--target-size", "10", "--no-progress"]


def _config(*extra, channels=1):
    return SPEC.resolved(config_from_options(SPEC, [*OPTS, *extra]), (8, 8, channels))


def _task(workdir=None, resume=False, n=16, classes=4, seed=0):
    """Learnable toy data: a class-dependent bright quadrant plus noise, 8x8 greyscale."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % classes).astype(np.int64)
    x = rng.integers(0, 90, size=(n, 8, 8, 1))
    for i, c in enumerate(y):
        r, q = divmod(int(c), 2)
        x[i, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 150
    return ProtectTask(x=x.astype(np.uint8), y=y, num_classes=classes, workdir=workdir, resume=resume)


def _target_losses(task, poisons, workdir, cfg):
    """Mean over checkpoints of the targeted CE and of the distance to the target's mean feature, per image."""
    spec = get_model("small-cnn")
    module = spec.build(task.num_classes, width=cfg.surrogate_width)
    template = jax.device_get(init_variables(module, task.x.shape[1:], jax.random.key(0)))
    ckpts = load_checkpoints(workdir / CHECKPOINT_FILE, template, cfg.checkpoints)
    mean, std = (jnp.asarray(a) for a in channel_stats(task.x))
    target = (task.y + task.num_classes // 2) % task.num_classes
    ce, dist = [], []
    for i in range(cfg.checkpoints):
        v = jax.tree.map(lambda a: a[i], ckpts.variables)
        feats_clean, _ = readout_features(module, v, standardize(jnp.asarray(task.x / 255, jnp.float32), mean, std))
        centres = np.stack([np.asarray(feats_clean)[task.y == c].mean(0) for c in range(task.num_classes)])
        per = []
        for x in (task.x, poisons):
            f, logits = readout_features(module, v, standardize(jnp.asarray(x / 255, jnp.float32), mean, std))
            logp = np.asarray(jax.nn.log_softmax(logits))
            per.append((-logp[np.arange(len(target)), target],
                        np.sum((np.asarray(f) - centres[target]) ** 2, axis=1)))
        ce.append([p[0] for p in per])
        dist.append([p[1] for p in per])
    ce, dist = np.mean(ce, axis=0), np.mean(dist, axis=0)  # [2 (clean, poisoned), N]
    return ce, dist


def test_checkpoints_are_evenly_spaced_like_the_paper():
    # 120 epochs of 10 steps, 15 checkpoints: the end of every 8th epoch.
    np.testing.assert_array_equal(checkpoint_steps(1200, 15), np.arange(1, 16) * 80)
    np.testing.assert_array_equal(checkpoint_steps(10, 4), [3, 5, 8, 10])
    with pytest.raises(UserInputError, match="checkpoints=5 exceeds the 4 training steps"):
        checkpoint_steps(4, 5)


@pytest.mark.parametrize("name, kwargs", [("small-cnn", {"width": 4}), ("fnn-relu", {"width": 8, "depth": 2})])
@pytest.mark.slow
def test_readout_features_are_the_input_of_the_readout(name, kwargs):
    module = get_model(name).build(3, **kwargs)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1), jnp.float32)
    v = init_variables(module, (8, 8, 1), jax.random.key(0))
    v = {"params": v["params"], **({"batch_stats": v["batch_stats"]} if v["batch_stats"] else {})}
    feats, logits = readout_features(module, v, x)
    dense = max((k for k in v["params"] if k.startswith("Dense")), key=lambda k: int(k.split("_")[1]))
    readout = v["params"][dense]
    np.testing.assert_allclose(feats @ readout["kernel"] + readout["bias"][None, :], logits, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_protect_is_deterministic_budgeted_and_moves_towards_the_target(tmp_path, key):
    cfg = _config()
    task = _task(workdir=tmp_path)
    a = SPEC.protect(task, cfg, key)
    b = SPEC.protect(_task(), cfg, key)
    c = SPEC.protect(_task(), cfg, jax.random.fold_in(key, 1))
    assert a.x.dtype == np.uint8 and a.x.shape == task.x.shape
    np.testing.assert_array_equal(a.y, task.y)
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)
    check_budget(task.x, a.x, cfg.eps, "linf")
    assert cfg.eps == 0.3 and cfg.step_size == pytest.approx(2.5 * 0.3 / 3)
    assert a.info["checkpoint_steps"] == [2, 4, 6] and a.info["target_shift"] == 2
    ce, _ = _target_losses(task, a.x, tmp_path, cfg)
    assert ce[1].mean() < ce[0].mean()  # the checkpoints now lean towards (y + K/2) mod K
    assert a.info["poisons_predicted_as_target"] > 0.5


@pytest.mark.slow
def test_feature_alignment_with_variance_reduction_pulls_features_to_the_target_centre(tmp_path, key):
    cfg = _config("feature_alignment=true", "vr_inner_steps=2", "normalize_grads=true")
    task = _task(workdir=tmp_path)
    out = SPEC.protect(task, cfg, key)
    check_budget(task.x, out.x, cfg.eps, "linf")
    _, dist = _target_losses(task, out.x, tmp_path, cfg)
    assert dist[1].mean() < 0.85 * dist[0].mean()


@pytest.fixture(scope="module")
def trained():
    """A tiny trained ensemble and the data it was trained on."""
    cfg = _config()
    task = _task()
    spec = get_model("small-cnn")
    module = spec.build(task.num_classes, width=cfg.surrogate_width)
    ckpts = sep_module.train_with_checkpoints(module, spec, task.x, task.y, task.num_classes, epochs=cfg.epochs,
                                              batch_size=cfg.train_batch_size, count=cfg.checkpoints,
                                              key=jax.random.key(0))
    mean, std = (jnp.asarray(a) for a in channel_stats(task.x))
    trees = [jax.tree.map(lambda a, i=i: a[i], ckpts.variables) for i in range(cfg.checkpoints)]
    return module, spec, trees, mean, std


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([2 / 255, 8 / 255, 0.3]), st.sampled_from([0, 2]))
def test_attack_stays_in_the_box_and_the_budget(trained, seed, eps, vr):
    module, spec, trees, mean, std = trained
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(8, 8, 8, 1), dtype=np.uint8)
    x[0] = 0
    x[1] = 255  # images at the box's edges must stay inside [0, 255]
    target = rng.integers(0, 4, size=8).astype(np.int32)
    cfg = dataclasses.replace(_config(), eps=eps, step_size=eps, vr_inner_steps=vr)
    grad = make_target_grad(module, spec, False, False)
    out = np.asarray(sep_attack(grad, trees, jnp.zeros((3, 4, 1), jnp.float32), x, target, jax.random.key(seed),
                                mean, std, cfg))
    assert out.dtype == np.uint8 and out.shape == x.shape
    check_budget(x, out, eps, "linf")
    assert np.any(out != x)


def test_resume_uses_saved_checkpoints_and_finished_batches(tmp_path, key, monkeypatch):
    cfg = _config()
    full = SPEC.protect(_task(workdir=tmp_path), cfg, key).x
    assert (tmp_path / CHECKPOINT_FILE).exists()
    # Pretend the run stopped after the first batch of 8, whose stored result is recognisable.
    # (Written through the checksummed work-file API, as the method itself writes it.)
    marker = _task().x[:8]
    workfiles.save_arrays(tmp_path / PROGRESS_FILE, x=marker)

    def no_training(*args, **kwargs):
        raise AssertionError("a resumed run must not retrain the surrogate")

    monkeypatch.setattr(sep_module, "train_with_checkpoints", no_training)
    resumed = SPEC.protect(_task(workdir=tmp_path, resume=True), cfg, key).x
    np.testing.assert_array_equal(resumed[:8], marker)
    np.testing.assert_array_equal(resumed[8:], full[8:])
    workfiles.save_arrays(tmp_path / PROGRESS_FILE, x=np.zeros((3, 8, 8, 3), np.uint8))
    with pytest.raises(UserInputError, match="does not belong to this run"):
        SPEC.protect(_task(workdir=tmp_path, resume=True), cfg, key)
    # Other bytes written behind the checksum's back are not trusted: that work is redone.
    np.savez(tmp_path / PROGRESS_FILE, x=marker[::-1])
    redone = SPEC.protect(_task(workdir=tmp_path, resume=True), cfg, key).x
    np.testing.assert_array_equal(redone, full)


@pytest.mark.parametrize("opts, message", [
    (["surrogate=nope"], "surrogate='nope' is invalid; accepted: fnn"),
    (["checkpoints=0"], "checkpoints must be an integer >= 1"),
    (["vr_inner_steps=-1"], "vr_inner_steps must be an integer >= 0"),
    (["eps=2"], r"--eps must be in \(0, 1\]"),
    (["feature_alignment=maybe"], "feature_alignment must be a bool"),
])
def test_bad_options_raise_one_clear_error(opts, message):
    with pytest.raises(UserInputError, match=message):
        config_from_options(SPEC, opts)


def test_settings_that_do_not_fit_the_data_are_refused(key):
    with pytest.raises(UserInputError, match="target_shift 4 is a multiple of the 4 classes"):
        SPEC.protect(_task(), _config("target_shift=4"), key)
    with pytest.raises(UserInputError, match="checkpoints=7 exceeds the 6 training steps"):
        SPEC.protect(_task(), _config("checkpoints=7"), key)


@pytest.mark.slow
def test_cli_writes_a_budgeted_poison_dir(tmp_path):
    out = tmp_path / "s"
    argv = [*TINY, "--method", "sep", "--eps", "8/255", *[a for o in OPTS for a in ("--method-opt", o)]]
    assert main([*argv, "--out", str(out)]) == 0
    poisons = read_poison_dir(out)
    m = poisons.manifest
    assert (m["method"], m["checkpoints"], m["surrogate"], m["norm"]) == ("sep", 3, "small-cnn", "linf")
    assert m["eps"] == pytest.approx(8 / 255) and m["step_size"] == pytest.approx(2.5 * 8 / 255 / 3)
    assert len(m["info_checkpoint_heldout_acc"]) == 3
    from ntga.data import load_dataset, make_split

    split = make_split(load_dataset("digits"), train_size=60, target_size=10, seed=0)
    check_budget(split.x_train, poisons.x, m["eps"], "linf")
    assert not np.array_equal(poisons.x, split.x_train)
