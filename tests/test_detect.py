"""defenses.detect and the detectors: metrics on constructed cases, alignment, determinism, CD's
objective, the CLI's errors, and the filter breaker."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from defenses.breakers import parse_breaker
from defenses.breakers.filtering import kept_rows
from defenses.breakers.registry import DETECTOR_NAMES
from defenses.detect import main
from defenses.detectors import (DETECTORS, ModelConfig, SuspectModels, auroc, average_precision, otsu_threshold,
                                parse_detector, parse_detectors, roc_curve, run_detector, score_rows)
from defenses.detectors.cd import CDConfig, cd_scores, make_distill
from ntga.errors import UserInputError
from ntga.poisondir import write_poison_dir

TINY = ModelConfig(model="small-cnn", model_opts=(("width", 4),), epochs=2, batch_size=16)


# ----------------------------------------------------------------------------- metrics


def test_auroc_perfect_inverted_and_chance():
    labels = np.array([0, 0, 1, 1])
    assert auroc([0.1, 0.2, 0.8, 0.9], labels) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], labels) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], labels) == 0.5  # all tied: one half


def test_auroc_counts_ties_one_half():
    # pairs (pos, neg): pos 0.5 vs negs {0.1, 0.5}: 1 + 0.5; pos 0.9: 1 + 1 -> 3.5 / 4
    assert auroc([0.1, 0.5, 0.5, 0.9], [0, 0, 1, 1]) == pytest.approx(3.5 / 4, abs=1e-15)
    # brute force over all pairs on a random case with many ties
    rng = np.random.default_rng(0)
    s, t = rng.integers(0, 4, 60).astype(float), rng.integers(0, 2, 60)
    pos, neg = s[t == 1], s[t == 0]
    expect = (np.sum(pos[:, None] > neg[None, :]) + 0.5 * np.sum(pos[:, None] == neg[None, :])) / (len(pos) * len(neg))
    assert auroc(s, t) == pytest.approx(expect, abs=1e-12)


def test_average_precision_constructed_cases():
    # ranking P N P N: precision at the two hits 1 and 2/3 -> AP = (1 + 2/3) / 2
    assert average_precision([4, 3, 2, 1], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2, abs=1e-15)
    assert average_precision([4, 3, 2, 1], [1, 1, 0, 0]) == 1.0
    # a tie between a positive and a negative at the top enters together: precision 1/2 at recall 1/2
    assert average_precision([5, 5, 1, 0], [1, 0, 1, 0]) == pytest.approx(0.5 * 0.5 + 0.5 * (2 / 3), abs=1e-15)
    # constant scores: AP = share of positives
    assert average_precision([1, 1, 1, 1, 1], [1, 0, 0, 1, 0]) == pytest.approx(0.4, abs=1e-15)


def test_roc_curve_points_and_single_class_error():
    fpr, tpr, thr = roc_curve([0.1, 0.5, 0.5, 0.9], [0, 0, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
    assert thr[0] == np.inf
    with pytest.raises(UserInputError, match="only one kind"):
        auroc([1.0, 2.0], [1, 1])


def test_otsu_threshold_splits_two_groups():
    scores = np.r_[np.zeros(10), np.ones(5) * 3.0, [0.2, 2.9]]
    t = otsu_threshold(scores)
    assert 0.2 < t < 2.9
    with pytest.raises(UserInputError):
        otsu_threshold([1.0, 1.0])


# ----------------------------------------------------------------------------- detectors


def _shortcut_data(n=48, size=8, protected=16, seed=0):
    """Random grey images; the protected rows carry a strong class-wise pixel pattern."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.integers(0, 256, (n, size, size, 1)).astype(np.uint8)
    rows = rng.permutation(n)[:protected]
    for r in rows:
        x[r, :, :, 0] = 255 if y[r] else 0  # a solid class colour: trivially separable
        x[r, : size // 2, :, 0] = 0 if y[r] else 255
    return x, y.astype(np.int64), np.sort(rows)


def test_registry_names_match_the_filter_breaker():
    assert tuple(DETECTORS) == DETECTOR_NAMES


@pytest.mark.slow
def test_scores_aligned_with_rows_and_deterministic():
    x, y, _ = _shortcut_data()
    perm = np.random.default_rng(1).permutation(len(x))
    det = parse_detector("linear")
    a = score_rows(x, y, 2, det, key=jax.random.key(0))
    b = score_rows(x[perm], y[perm], 2, det, key=jax.random.key(0))
    assert a.shape == (len(x),) and a.dtype == np.float64
    np.testing.assert_allclose(b, a[perm], rtol=1e-4, atol=1e-5)  # row i's score follows row i
    for spec in ("early-loss", "cd@steps=3,batch_size=16"):
        det = parse_detector(spec)
        s1 = score_rows(x, y, 2, det, key=jax.random.key(3), model_cfg=TINY, log=lambda _: None)
        s2 = score_rows(x, y, 2, det, key=jax.random.key(3), model_cfg=TINY, log=lambda _: None)
        assert s1.shape == (len(x),)
        np.testing.assert_array_equal(s1, s2)


def test_linear_detector_finds_a_separable_shortcut():
    x, y, rows = _shortcut_data(n=64, protected=16)
    labels = np.zeros(len(x), bool)
    labels[rows] = True
    scores = score_rows(x, y, 2, parse_detector("linear@steps=50"), key=jax.random.key(0))
    assert auroc(scores, labels) > 0.9


@pytest.mark.slow
def test_cd_objective_decreases_on_a_tiny_model(key):
    # A tiny linear "model" that looks only at a 2x2 corner patch: the distilled mask should keep
    # that patch, drop the rest, and the objective should fall by far more than its step-to-step noise.
    w = jnp.zeros((8, 8, 3, 4), jnp.float32).at[:2, :2].set(
        jax.random.normal(key, (2, 2, 3, 4), jnp.float32)).reshape(-1, 4)
    f = lambda x: x.reshape(x.shape[0], -1) @ w
    x = jax.random.uniform(jax.random.fold_in(key, 1), (6, 8, 8, 3), jnp.float32)
    mask, history = jax.jit(make_distill(f, CDConfig(steps=100)))(x, jax.random.split(jax.random.fold_in(key, 2), 6))
    history = np.asarray(history)
    assert mask.shape == (6, 8, 8, 1) and float(mask.min()) >= 0 and float(mask.max()) <= 1
    assert history[-10:].mean() < 0.5 * history[:10].mean()
    assert float(mask[:, :2, :2].mean()) > 0.5 > float(mask[:, 4:, 4:].mean())


@pytest.mark.slow
def test_cd_scores_do_not_depend_on_the_batch_size(key):
    # Each row's colours come from fold_in(key, row), not from its batch or its place in it.
    w = jax.random.normal(key, (8 * 8 * 3, 4), jnp.float32)
    f = lambda x: x.reshape(x.shape[0], -1) @ w
    x = np.asarray(jax.random.randint(jax.random.fold_in(key, 1), (10, 8, 8, 3), 0, 256), np.uint8)
    k = jax.random.fold_in(key, 2)
    s4, _ = cd_scores(f, x, k, CDConfig(steps=5, batch_size=4))
    s7, _ = cd_scores(f, x, k, CDConfig(steps=5, batch_size=7))
    np.testing.assert_allclose(s4, s7, rtol=1e-5, atol=1e-6)
    assert np.ptp(s4) > 0  # the rows really differ (not a trivially constant score)
    s3, _ = cd_scores(f, x[3:], k, CDConfig(steps=5, batch_size=7))
    assert not np.allclose(s3, s4[3:], rtol=1e-5, atol=1e-6)  # ... and the key is per row index


def test_suspect_model_is_shared_between_detectors():
    x, y, _ = _shortcut_data()
    models = SuspectModels(x, y, 2, jax.random.key(0), log=lambda _: None)
    for spec in ("early-loss", "cd@steps=2,variant=features"):
        run_detector(parse_detector(spec), x, y, 2, jax.random.key(0), models, TINY)
    assert len(models._trained) == 1


def test_linear_lr_bound_and_a_diverging_fit_is_a_user_error(monkeypatch):
    from defenses.breakers.projection import MAX_LR
    from defenses.detectors import dynamics

    assert parse_detector(f"linear@lr={MAX_LR:g}").config.lr == MAX_LR
    with pytest.raises(UserInputError, match=r"lr in \(0, 3\]"):
        parse_detector("linear@lr=3.5")
    x, y, _ = _shortcut_data()

    def diverged(flat, labels, k, steps, lr):
        return jnp.full((flat.shape[1], k), jnp.inf, flat.dtype), jnp.zeros((k,), flat.dtype)

    monkeypatch.setattr(dynamics, "fit_linear_classifier", diverged)
    with pytest.raises(UserInputError, match=r"diverged.*linear@lr=0\.5"):
        score_rows(x, y, 2, parse_detector("linear@lr=2"), key=jax.random.key(0))


def test_non_finite_scores_name_the_setting_to_lower():
    import dataclasses

    x, y, _ = _shortcut_data(n=8)
    nan = lambda x, *args: (np.full(len(x), np.nan), {})
    hints = (("early-loss", "learning rate \\(defenses.detect --lr\\)"), ("cd", "cd@lr"), ("linear", "linear@lr"))
    for name, hint in hints:
        det = parse_detector(name)
        det = dataclasses.replace(det, entry=dataclasses.replace(det.entry, score=nan))
        with pytest.raises(UserInputError, match=f"8 of 8 scores are not finite.*{hint}"):
            run_detector(det, x, y, 2, jax.random.key(0), None, TINY)


def test_detector_parsing_errors():
    with pytest.raises(UserInputError, match="unknown detector 'strip'"):
        parse_detectors("strip")
    with pytest.raises(UserInputError, match="twice"):
        parse_detectors("linear,linear")
    with pytest.raises(UserInputError, match="variant"):
        parse_detector("cd@variant=pixels")


# ----------------------------------------------------------------------------- the command


@pytest.fixture
def fraction_dir(tmp_path):
    x, y, rows = _shortcut_data(n=64, protected=24)
    out = tmp_path / "poisons"
    write_poison_dir(out, x=x, y=y, source_indices=np.arange(len(x)), protected_positions=rows, manifest={"method": "test"})
    return out, rows


@pytest.mark.slow
def test_cli_scores_metrics_and_figures(fraction_dir, tmp_path, capsys):
    src, rows = fraction_dir
    out = tmp_path / "det"
    assert main(["--poisons", str(src), "--detector", "linear,early-loss", "--epochs", "1", "--batch-size", "16",
                 "--model", "small-cnn@width=4", "--out", str(out), "--auroc"]) == 0
    payload = json.loads((out / "detection.json").read_text())
    assert payload["complete"] and payload["source"]["num_protected"] == len(rows)
    for name in ("linear", "early-loss"):
        scores = np.load(out / name / "scores.npy", allow_pickle=False)
        assert scores.shape == (64,)
        assert 0 <= payload["detectors"][name]["auroc"] <= 1
        assert (out / name / "histogram.png").stat().st_size > 0
    assert (out / "roc.png").exists() and "AUROC" in (out / "summary.md").read_text()
    # --resume with the same settings recomputes nothing
    assert main(["--poisons", str(src), "--detector", "linear,early-loss", "--epochs", "1", "--batch-size", "16",
                 "--model", "small-cnn@width=4", "--out", str(out), "--resume"]) == 0
    assert "resumed" in capsys.readouterr().out


def test_cli_resume_recomputes_damaged_or_unverified_scores(fraction_dir, tmp_path, capsys):
    src, _ = fraction_dir
    out = tmp_path / "det"
    args = ["--poisons", str(src), "--detector", "linear", "--out", str(out)]
    assert main(args) == 0
    path = out / "linear" / "scores.npy"
    good = np.load(path, allow_pickle=False)
    assert (out / "linear" / "scores.npy.sha256").exists()
    damaged = good.copy()
    damaged[0] += 1.0  # a plausible-looking edit: same shape, finite, wrong
    np.save(path, damaged, allow_pickle=False)
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    captured = capsys.readouterr()
    assert "does not match its checksum" in captured.err
    assert "missing or damaged; recomputing" in captured.out and "(resumed)" not in captured.out
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), good)
    # a scores file without its checksum (e.g. copied in by hand) is not trusted either
    (out / "linear" / "scores.npy.sha256").unlink()
    assert main(args + ["--resume"]) == 0
    assert "has no checksum" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), good)
    assert main(args + ["--resume"]) == 0  # now verified: reused
    assert "(resumed)" in capsys.readouterr().out


def test_cli_auroc_without_protected_positions_is_a_clear_error(tmp_path):
    x, y, _ = _shortcut_data()
    src = tmp_path / "full"
    write_poison_dir(src, x=x, y=y, source_indices=np.arange(len(x)), manifest={"method": "test"})
    out = tmp_path / "det"
    with pytest.raises(UserInputError, match="--auroc needs protection labels.*protected_positions"):
        main(["--poisons", str(src), "--detector", "linear", "--auroc", "--out", str(out)])
    assert not out.exists()
    with pytest.raises(UserInputError, match="--auroc needs protection labels.*plain dataset"):
        main(["--poisons", "digits", "--detector", "linear", "--auroc", "--out", str(out)])
    # without --auroc, the same sources are scored
    assert main(["--poisons", "digits", "--train-size", "200", "--detector", "linear", "--out", str(out)]) == 0
    assert np.load(out / "linear" / "scores.npy").shape == (200,)
    assert np.load(out / "rows.npy").shape == (200,)
    assert not (out / "roc.png").exists()


# ----------------------------------------------------------------------------- the filter breaker


def test_kept_rows_drop_the_top_share_and_otsu():
    scores = np.array([0.1, 0.9, 0.3, 0.8, 0.2, 0.7, 0.0, 0.4, 0.5, 0.6])
    np.testing.assert_array_equal(kept_rows(scores, 0.3), [0, 2, 4, 6, 7, 8, 9])  # 0.9, 0.8, 0.7 go
    np.testing.assert_array_equal(kept_rows(scores, 0.0), np.arange(10))
    two = np.r_[np.zeros(6), np.full(4, 5.0)]
    np.testing.assert_array_equal(kept_rows(two, None), np.arange(6))


def test_filter_breaker_drops_the_detected_rows_and_composes():
    x, y, rows = _shortcut_data(n=64, protected=16)
    breaker = parse_breaker("filter@detector=linear,share=0.25")
    xk, yk = breaker.prepare(x, y, jax.random.key(0))
    scores = score_rows(x, y, 2, parse_detector("linear"), key=jax.random.key(0))
    keep = kept_rows(scores, 0.25)
    assert len(xk) == 48
    np.testing.assert_array_equal(xk, x[keep])
    np.testing.assert_array_equal(yk, y[keep])
    assert len(np.intersect1d(np.setdiff1d(np.arange(64), keep), rows)) >= 14  # mostly the protected rows
    composed = parse_breaker("filter@detector=linear,share=0.25+bdr@bits=1")
    xc, yc = composed.prepare(x, y, jax.random.key(0))
    assert xc.shape == (48, 8, 8, 1) and len(yc) == 48


def test_filter_rows_left_and_its_own_batch_size():
    from defenses.breakers.filtering import rows_left

    assert rows_left(64, detector="linear", share=0.25, batch_size=128) == 48  # linear trains no model
    assert rows_left(10, detector="early-loss", share=0.3, batch_size=4) == 7
    assert rows_left(10, detector="cd", share=None, batch_size=4) is None  # Otsu: known after scoring
    with pytest.raises(UserInputError, match=r"filter@batch_size to at most 40"):
        rows_left(40, detector="early-loss", share=0.5, batch_size=128)
    assert parse_breaker("jpeg+filter@detector=linear,share=0.5+bdr").rows_left(64) == 32
    assert parse_breaker("filter@share=0.5,batch_size=8+filter@detector=linear,share=0.5").rows_left(64) == 16
    assert parse_breaker("filter@batch_size=8+filter@detector=linear,share=0.5").rows_left(64) is None
    assert parse_breaker("jpeg").rows_left(64) == 64
    x, y, _ = _shortcut_data(n=40)
    with pytest.raises(UserInputError, match="filter@batch_size"):  # the library call says the same
        parse_breaker("filter@detector=early-loss").prepare(x, y, jax.random.key(0))


@pytest.mark.parametrize("breakers, message", [
    ("none,bdr@bits=1,filter@detector=linear,share=0.5",
     r"'clean \+ filter@detector=linear@share=0.5' trains on 32 of the 64 training rows, fewer than --batch-size "
     r"48.*smaller filter@share.*--batch-size at most 32"),
    ("none,filter@detector=early-loss,share=0.1", r"batch size 128 \(filter@batch_size\) but only 64 training rows"),
])
def test_evaluate_checks_every_conditions_size_before_training(tmp_path, monkeypatch, breakers, message):
    from defenses import evaluate
    from defenses.evaluation import runs

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the size check")

    monkeypatch.setattr(runs, "train_and_evaluate", no_training)
    monkeypatch.setattr(runs, "train_many_seeds", no_training)
    out = tmp_path / "out"
    with pytest.raises(UserInputError, match=message):
        evaluate.main(["--dataset", "digits", "--train-size", "64", "--target-size", "0", "--model", "small-cnn",
                       "--epochs", "1", "--batch-size", "48", "--breakers", breakers, "--test-size", "50",
                       "--no-progress", "--out", str(out)])
    assert not out.exists()
