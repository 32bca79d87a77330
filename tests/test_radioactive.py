"""Radioactive data: p-values, alignment, the marking's budget and determinism, the key's privacy, detection.

The statistics are checked against ``jax.scipy.special.betainc`` and against
Monte-Carlo draws (p-values uniform under the null: Kolmogorov-Smirnov distance
below 0.02 for 20,000 draws, where the 0.1% critical value is 0.0138, and
below 0.03 for 5,000 draws, critical value 0.0276). The end-to-end test marks
the embedded digits, trains small-cnn on them with ``defenses.evaluate
--save-models`` and runs ``ntga.detect`` on the saved models.
"""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import betainc

from ntga.errors import UserInputError
from ntga.marking.detection import align_features, aligned_cosines, cosine_log_pvalues, white_box
from ntga.marking.key import (check_key_out, draw_carriers, find_key_dir, key_hash, marked_positions, read_key,
                              truth_labels, write_key)
from ntga.marking.network import content_hash, marking_key
from ntga.marking.stats import cosine_log_pvalue, fisher_log_pvalue, log_betainc, paired_t_log_pvalue
from ntga.methods import ProtectTask, get_method
from ntga.methods.base import config_from_options
from ntga.models.saved import load_model, save_model
from ntga.pixels import uint8_linf_cap

SPEC = get_method("radioactive")
TINY = {"marker_width": "4", "marker_epochs": "1", "marker_batch_size": "8", "steps": "4", "batch_size": "8"}


def _ks_uniform(p: np.ndarray) -> float:
    p = np.sort(p)
    n = len(p)
    grid = np.arange(1, n + 1) / n
    return float(max(np.max(grid - p), np.max(p - (grid - 1 / n))))


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("a,b,x", [(63.5, 0.5, 0.9), (63.5, 0.5, 0.05), (2.0, 3.0, 0.5), (0.5, 10.0, 0.01),
                                   (255.5, 0.5, 0.99), (4.5, 0.5, 0.5), (1.0, 1.0, 0.3)])
def test_log_betainc_matches_jax_betainc(a, b, x):
    assert math.exp(log_betainc(a, b, x)) == pytest.approx(float(betainc(a, b, x)), rel=1e-10)


def test_cosine_pvalue_is_uniform_under_the_null():
    rng = np.random.default_rng(0)
    d, n = 32, 20_000
    v = rng.standard_normal((n, d))
    c = v[:, 0] / np.linalg.norm(v, axis=1)
    p = np.exp([cosine_log_pvalue(ci, d) for ci in c])
    assert _ks_uniform(p) < 0.02
    # the tail too: P(c >= 0.3) in 32 dimensions
    assert np.mean(c >= 0.3) == pytest.approx(math.exp(cosine_log_pvalue(0.3, d)), abs=0.005)


def test_cosine_pvalue_stays_exact_far_below_float_range():
    lp = [cosine_log_pvalue(c, 4096) for c in (0.5, 0.9, 0.99)]
    assert all(math.isfinite(v) for v in lp) and lp[0] > lp[1] > lp[2]
    assert lp[1] / math.log(10) < -1000  # p far below 1e-308, still a finite log
    assert cosine_log_pvalue(0.0, 10) == pytest.approx(math.log(0.5))
    assert math.exp(cosine_log_pvalue(-0.2, 10)) == pytest.approx(1 - math.exp(cosine_log_pvalue(0.2, 10)))


def test_fisher_and_paired_t_are_uniform_under_the_null():
    rng = np.random.default_rng(1)
    p_fisher = np.exp([fisher_log_pvalue(np.log(rng.uniform(size=10))) for _ in range(5000)])
    assert _ks_uniform(p_fisher) < 0.03
    p_t = np.exp([paired_t_log_pvalue(rng.standard_normal(12))[0] for _ in range(5000)])
    assert _ks_uniform(p_t) < 0.03
    assert fisher_log_pvalue([math.log(0.05)]) == pytest.approx(math.log(0.05))


def test_alignment_recovers_a_known_rotation():
    rng = np.random.default_rng(2)
    d = 16
    f0 = rng.standard_normal((200, d))
    rot, _ = np.linalg.qr(rng.standard_normal((d, d)))
    m = align_features(f0, f0 @ rot)
    np.testing.assert_allclose(m, rot, atol=1e-10)
    carriers = draw_carriers(b"\1" * 32, 5, d)
    # a suspect whose classifier rows are the carriers expressed in its rotated feature space
    np.testing.assert_allclose(aligned_cosines(carriers @ rot, m, carriers), np.ones(5), atol=1e-10)


def test_alignment_with_a_non_orthogonal_map_into_more_dimensions():
    """phi_t = phi_0 M with M [D0, Dt] neither square nor orthogonal: rows w_k with M w_k = u_k are found."""
    rng = np.random.default_rng(7)
    d0, dt, k = 12, 20, 4
    f0 = rng.standard_normal((300, d0))
    m_true = rng.standard_normal((d0, dt)) * rng.uniform(0.2, 3.0, (d0, 1))  # scaled, sheared, wider
    m = align_features(f0, f0 @ m_true)
    assert m.shape == (d0, dt)
    np.testing.assert_allclose(m, m_true, atol=1e-9)
    carriers = draw_carriers(b"\2" * 32, k, d0)
    # suspect rows w_k [Dt] whose image under M is the carrier: w = pinv(M) u (minimum norm)
    rows = (np.linalg.pinv(m_true) @ carriers.T).T
    np.testing.assert_allclose(aligned_cosines(rows, m, carriers), np.ones(k), atol=1e-9)
    # rows that M maps elsewhere are not aligned
    other = (np.linalg.pinv(m_true) @ draw_carriers(b"\3" * 32, k, d0).T).T
    assert np.all(np.abs(aligned_cosines(other, m, carriers)) < 0.99)


def test_degenerate_statistics_give_exact_finite_results():
    # all paired differences equal: t is undefined, the exact sign test takes over
    lp, t = paired_t_log_pvalue(np.full(10, 0.5))
    assert t is None and lp == pytest.approx(-10 * math.log(2))
    assert paired_t_log_pvalue(np.zeros(5)) == (0.0, None)
    assert paired_t_log_pvalue(np.full(5, -1.0)) == (0.0, None)
    # a cosine that rounds to 1: an upper bound, flagged, never -inf
    log_ps, bound = cosine_log_pvalues(np.array([1.0, 0.5]), 64)
    assert bound == [True, False] and all(math.isfinite(v) for v in log_ps)
    assert log_ps[0] < -1000 and log_ps[0] < log_ps[1]


# ----------------------------------------------------------------------------- marking


def _task(n=16, k=4, channels=1, seed=0, secret=b"\7" * 32, tmp=None):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 8, 8, channels), dtype=np.uint8)
    y = np.arange(n) % k
    return ProtectTask(x=x, y=y, num_classes=k, secret=secret, secret_out=tmp)


def _mark(task, key, **options):
    config = config_from_options(SPEC, {**TINY, **options})
    config = SPEC.resolved(config, task.x.shape[1:], len(task.x))
    return SPEC.protect(task, config, key), config


@pytest.mark.parametrize("eps,channels", [("1/255", 1), ("10/255", 3), (None, 1)])
@pytest.mark.slow
def test_marking_is_uint8_within_the_budget_with_psnr_in_the_key(key, eps, channels):
    task = _task(channels=channels)
    # steps of eps each, so even 4 steps move pixels by whole uint8 levels
    out, config = _mark(task, key, **({} if eps is None else {"eps": eps, "step_size": eps}))
    assert out.x.dtype == np.uint8 and out.x.shape == task.x.shape
    assert config.eps == (0.1 if eps is None else eval(eps))
    change = np.abs(out.x.astype(int) - task.x.astype(int))
    assert change.max() <= uint8_linf_cap(config.eps)
    assert change.max() > 0
    # per-image PSNR (row order would say which rows are marked) only in the key; aggregates public
    assert len(out.secret.psnr_db) == len(task.x)
    assert set(out.info) == {"psnr_mean_db", "psnr_min_db", "psnr_max_db", "num_unchanged"}
    finite = out.secret.psnr_db[np.isfinite(out.secret.psnr_db)]
    assert out.info["psnr_min_db"] == pytest.approx(finite.min())
    assert out.secret.carriers.shape == (task.num_classes, out.secret.info["marking_net"]["feature_dim"])


def test_defaults_are_the_papers_with_the_stated_grey_budget():
    grey = SPEC.resolved(SPEC.default_config(), (28, 28, 1), 10)
    colour = SPEC.resolved(SPEC.default_config(), (32, 32, 3), 10)
    assert grey.eps == 0.1 and colour.eps == pytest.approx(10 / 255)
    assert (colour.steps, colour.lambda_ft, colour.lambda_img, colour.round_every) == (90, 0.01, 0.0005, 10)
    assert colour.augment == "crop-flip" and grey.augment == "crop"


@pytest.mark.slow
def test_same_secret_and_key_give_the_same_bytes_other_secret_other_carriers(key):
    a, _ = _mark(_task(), key)
    b, _ = _mark(_task(), key)
    c, _ = _mark(_task(secret=b"\10" * 32), key)
    assert np.array_equal(a.x, b.x) and a.secret.hash == b.secret.hash
    assert np.array_equal(a.secret.carriers, b.secret.carriers)
    assert not np.array_equal(a.secret.carriers, c.secret.carriers) and a.secret.hash != c.secret.hash
    norms = np.linalg.norm(a.secret.carriers, axis=1)
    np.testing.assert_allclose(norms, 1.0)


@pytest.mark.slow
def test_the_marking_network_is_cached_by_content_and_secret(key, capsys):
    _mark(_task(seed=5), key)
    first = capsys.readouterr().out
    out, _ = _mark(_task(seed=5), key)
    second = capsys.readouterr().out
    assert "training" in first and "loaded from the cache" in second
    assert out.secret.info["marking_net"]["cached"]
    _mark(_task(seed=5, secret=b"\11" * 32), key)
    assert "training" in capsys.readouterr().out  # another secret: another network, never the cached one


def test_the_marking_network_cannot_be_rebuilt_without_the_secret(key):
    """Its training key and cache name depend on the secret, not only on the public seed and settings."""
    a, b = marking_key(key, b"\1" * 32), marking_key(key, b"\2" * 32)
    data = [np.asarray(jax.random.key_data(k)).tolist() for k in (a, b, key)]
    assert data[0] != data[1] and data[2] not in data[:2]
    assert data[0] == np.asarray(jax.random.key_data(marking_key(key, b"\1" * 32))).tolist()
    from ntga.train import TrainConfig

    x, y = np.zeros((4, 8, 8, 1), np.uint8), np.arange(4) % 2
    h = [content_hash("small-cnn", {}, TrainConfig(), k, x, y, 2, s) for k, s in ((a, b"\1" * 32), (a, b"\2" * 32))]
    assert h[0] != h[1]


# ----------------------------------------------------------------------------- the key


def test_key_round_trip_and_tampering(tmp_path, key):
    out, _ = _mark(_task(), key)
    path = write_key(out.secret, tmp_path / "key")
    assert (path.stat().st_mode & 0o777) == 0o700
    loaded = read_key(path)
    assert loaded.hash == out.secret.hash == key_hash(loaded.secret, loaded.carriers)
    assert np.array_equal(loaded.x_marked, out.x)
    with pytest.raises(UserInputError, match="never overwritten"):
        write_key(out.secret, path)
    np.save(path / "carriers.npy", loaded.carriers[::-1].copy())
    with pytest.raises(UserInputError, match="sha256"):
        read_key(path)
    assert find_key_dir(path / "sub" / "dir") == path


def test_key_checksums_cover_the_marking_network_and_damage_is_one_error(tmp_path, key):
    out, _ = _mark(_task(), key)
    path = write_key(out.secret, tmp_path / "key")
    info = json.loads((path / "radioactive_key.json").read_text())
    assert {"marking_net/model.json", "marking_net/params.npz"} <= set(info["files_sha256"])
    meta = path / "marking_net" / "model.json"
    original = meta.read_bytes()
    meta.write_text(original.decode().replace('"eval_on"', '"eval_on "'))
    with pytest.raises(UserInputError, match="marking_net/model.json does not match its sha256"):
        read_key(path)
    meta.write_bytes(original)
    read_key(path)
    del info["key_sha256"]
    (path / "radioactive_key.json").write_text(json.dumps(info))
    with pytest.raises(UserInputError, match="cannot read the key"):
        read_key(path)


def test_key_out_may_not_be_published_with_the_poisons(tmp_path):
    with pytest.raises(UserInputError, match="inside the poison directory"):
        check_key_out(tmp_path / "p" / "key", tmp_path / "p")
    with pytest.raises(UserInputError, match="inside the private key"):
        check_key_out(tmp_path / "k", tmp_path / "k" / "poisons")
    with pytest.raises(UserInputError, match="inside the poison directory"):
        check_key_out(tmp_path / "same", tmp_path / "same")
    assert check_key_out(tmp_path / "k", tmp_path / "p") == tmp_path / "k"


@pytest.mark.slow
def test_saved_model_round_trip(tmp_path, key):
    from ntga.models import get_model
    from ntga.train.core import init_variables

    module = get_model("small-cnn").build(3, width=4)
    variables = jax.jit(lambda k: init_variables(module, (8, 8, 2), k))(key)
    save_model(tmp_path / "m", model="small-cnn", options={"width": 4}, num_classes=3, class_names="abc",
               input_shape=(8, 8, 2), variables=variables, mean=np.array([0.5, 0.4]), std=np.array([0.2, 0.3]),
               data_fingerprint={"x": "y"})
    net = load_model(tmp_path / "m")
    x = jax.random.uniform(key, (2, 8, 8, 2))
    ref = module.apply(variables, (x - jnp.array([0.5, 0.4]).reshape(1, 1, 1, 2)) / jnp.array([0.2, 0.3]).reshape(1, 1, 1, 2),
                       train=False)
    np.testing.assert_allclose(net.logits(x), ref, rtol=1e-5, atol=1e-6)
    assert net.class_names == ("a", "b", "c") and net.input_shape == (8, 8, 2)
    with open(tmp_path / "m" / "params.npz", "ab") as f:
        f.write(b"x")
    with pytest.raises(UserInputError, match="sha256"):
        load_model(tmp_path / "m")


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.update(params_file="../params.npz"), "not a file name inside the model directory"),
    (lambda m: m.update(options={"width": 4, "dtype": "float99"}), "dtype='float99' is invalid"),
    (lambda m: m.update(options={"width": 4, "no_such_option": 1}), "has unsupported options"),
    (lambda m: m.pop("mean"), "cannot read the saved model"),
    (lambda m: m.update(std=[0.0]), "positive stds"),
])
@pytest.mark.slow
def test_a_damaged_model_json_is_one_clear_error(tmp_path, key, edit, match):
    from ntga.models import get_model
    from ntga.train.core import init_variables

    module = get_model("small-cnn").build(3, width=4)
    save_model(tmp_path / "m", model="small-cnn", options={"width": 4}, num_classes=3, class_names="abc",
               input_shape=(8, 8, 1), variables=init_variables(module, (8, 8, 1), key), mean=None, std=None,
               data_fingerprint={})
    (tmp_path / "params.npz").write_bytes((tmp_path / "m" / "params.npz").read_bytes())
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    edit(meta)
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(UserInputError, match=match):
        load_model(tmp_path / "m")


def test_saved_model_logits_apply_the_recipes_test_time_flip(tmp_path, key):
    from ntga.models import get_model
    from ntga.train.core import init_variables

    module = get_model("small-cnn").build(3, width=4)
    variables = init_variables(module, (8, 8, 1), key)
    for tta in ("none", "flip"):
        save_model(tmp_path / tta, model="small-cnn", options={"width": 4}, num_classes=3, class_names="abc",
                   input_shape=(8, 8, 1), variables=variables, mean=None, std=None, data_fingerprint={},
                   train_config={"tta": tta})
    x = jax.random.uniform(key, (2, 8, 8, 1))
    plain = module.apply(variables, x, train=False)
    np.testing.assert_allclose(load_model(tmp_path / "none").logits(x), plain, rtol=1e-5, atol=1e-6)
    flipped = 0.5 * (plain + module.apply(variables, x[:, :, ::-1], train=False))
    np.testing.assert_allclose(load_model(tmp_path / "flip").logits(x), flipped, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_white_box_finds_a_classifier_built_on_the_carriers(tmp_path, key):
    out, _ = _mark(_task(n=16), key)
    path = write_key(out.secret, tmp_path / "key")
    mk = read_key(path)
    net = mk.marking_net
    heldout = np.random.default_rng(3).integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
    # a suspect whose readout rows are the carriers: detected; the marking net as it is: not
    params = jax.tree.map(lambda a: a, net.variables)
    readout = sorted(k for k in params["params"] if k.startswith("Dense"))[-1]
    params["params"][readout] = {**params["params"][readout], "kernel": jnp.asarray(mk.carriers.T, jnp.float32)}
    marked = dataclasses.replace(net, variables=params)
    hit = white_box(mk, marked, heldout)
    miss = white_box(mk, net, heldout)
    assert hit["log10_p"] < -10 and min(hit["cosines"]) > 0.99
    assert miss["log10_p"] > -3
    json.dumps(hit, allow_nan=False)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def marked_digits(tmp_path_factory):
    """digits (200 training images) marked, small-cnn trained clean and on the marks, models saved."""
    from defenses.evaluate import main as evaluate_main
    from ntga.generate import main as generate_main

    root = tmp_path_factory.mktemp("radio")
    argv = ["--dataset", "digits", "--train-size", "200", "--target-size", "50", "--no-progress",
            "--method", "radioactive@marker-epochs=3,steps=20", "--out", str(root / "poisons"),
            "--key-out", str(root / "key")]
    with pytest.raises(SystemExit) as done:
        from ntga.errors import run_cli
        run_cli(generate_main, argv)
    assert done.value.code == 0
    with pytest.raises(SystemExit) as done:
        run_cli(evaluate_main, ["--poisons", str(root / "poisons"), "--model", "small-cnn", "--epochs", "8",
                                "--batch-size", "32", "--seeds", "1", "--save-models", "--out", str(root / "eval"),
                                "--no-progress"])
    assert done.value.code == 0
    return root


def _detect(argv, capsys):
    from ntga.detect import main as detect_main
    from ntga.errors import run_cli

    with pytest.raises(SystemExit) as done:
        run_cli(detect_main, argv)
    captured = capsys.readouterr()
    return done.value.code, captured.out, captured.err


@pytest.mark.slow
def test_end_to_end_mark_train_detect(marked_digits, capsys):
    root = marked_digits
    manifest = json.loads((root / "poisons" / "manifest.json").read_text())
    key_json = json.loads((root / "key" / "radioactive_key.json").read_text())
    assert manifest["info_key_sha256"] == key_json["key_sha256"]
    assert "info_psnr_db" not in manifest and manifest["info_psnr_min_db"] <= manifest["info_psnr_mean_db"]
    models = root / "eval" / "models" / "small-cnn"
    results = {}
    for condition in ("clean", "poisoned"):
        for extra in ([], ["--black-box"]):
            code, out, err = _detect(["--key", str(root / "key"), "--model", str(models / condition / "seed0"),
                                      *extra], capsys)
            assert code == 0, err
            result = json.loads(out)
            assert {"p_value", "log10_p", "test"} <= set(result)
            results[condition, result["test"]] = result
    white = results["poisoned", "white-box"]
    assert len(white["cosines"]) == 10 and 0 < white["p_value"] <= 1
    assert json.loads((models / "poisoned" / "seed0" / "detect.json").read_text()) == white
    # the black-box test flags the model trained on the marked images (a membership signal)...
    assert results["poisoned", "black-box"]["log10_p"] < -2
    assert "membership" in results["poisoned", "black-box"]["shows"]
    # ...and not the one trained on their originals, which is no null control: it memorised the
    # originals, so it leans the other way (the honest null is a model trained on neither)
    assert results["clean", "black-box"]["log10_p"] > -1.3


@pytest.mark.slow
def test_detect_refuses_a_model_of_other_classes_in_one_line(marked_digits, tmp_path, capsys, key):
    from ntga.models import get_model
    from ntga.train.core import init_variables

    module = get_model("small-cnn").build(3, width=4)
    save_model(tmp_path / "m", model="small-cnn", options={"width": 4}, num_classes=3, class_names="abc",
               input_shape=(8, 8, 1), variables=init_variables(module, (8, 8, 1), key), mean=None, std=None,
               data_fingerprint={})
    code, out, err = _detect(["--key", str(marked_digits / "key"), "--model", str(tmp_path / "m")], capsys)
    assert code == 2 and "10 classes" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    module = get_model("small-cnn").build(10, width=4)
    save_model(tmp_path / "s", model="small-cnn", options={"width": 4}, num_classes=10, class_names="abcdefghij",
               input_shape=(16, 16, 1), variables=init_variables(module, (16, 16, 1), key), mean=None, std=None,
               data_fingerprint={})
    code, out, err = _detect(["--key", str(marked_digits / "key"), "--model", str(tmp_path / "s")], capsys)
    assert code == 2 and "8x8x1" in err and "16x16x1" in err


@pytest.mark.slow
def test_export_never_contains_key_material(marked_digits, tmp_path, capsys):
    from ntga.errors import run_cli
    from ntga.export import main as export_main

    root = marked_digits
    with pytest.raises(SystemExit) as done:
        run_cli(export_main, ["--poisons", str(root / "poisons"), "--out", str(tmp_path / "pub")])
    assert done.value.code == 0
    key_json = json.loads((root / "key" / "radioactive_key.json").read_text())
    secret = key_json["secret_hex"]
    carriers = np.load(root / "key" / "carriers.npy")
    needles = [secret.encode(), bytes.fromhex(secret), carriers.tobytes()[:64], b"carriers", b"secret_hex"]
    for place in (tmp_path / "pub", root / "poisons"):
        for f in place.rglob("*"):
            if f.is_file():
                data = f.read_bytes()
                assert not any(n in data for n in needles), f
    assert not list((tmp_path / "pub").rglob("radioactive_key.json"))
    with pytest.raises(SystemExit) as done:
        run_cli(export_main, ["--poisons", str(root / "poisons"), "--out", str(root / "key" / "pub")])
    assert done.value.code == 2 and "private key directory" in capsys.readouterr().err


# ----------------------------------------------------------------------------- secret rows, resume


TINY_CLI = "radioactive@marker-epochs=1,steps=2,marker-width=4,marker-batch-size=16,batch-size=16"


def _generate(argv):
    from ntga.errors import run_cli
    from ntga.generate import main as generate_main

    with pytest.raises(SystemExit) as done:
        run_cli(generate_main, ["--dataset", "digits", "--train-size", "60", "--target-size", "0", "--no-progress",
                                "--method", TINY_CLI, *argv])
    return done.value.code


@pytest.mark.slow
def test_a_fraction_run_publishes_nothing_that_says_which_rows_are_marked(tmp_path, capsys):
    from ntga.errors import run_cli
    from ntga.export import main as export_main
    from ntga.poisondir import read_poison_dir

    assert _generate(["--fraction", "0.5", "--out", str(tmp_path / "p"), "--key-out", str(tmp_path / "k")]) == 0
    assert not (tmp_path / "p" / "protected_positions.npy").exists()
    assert not (tmp_path / "p" / "preview.png").exists()  # its rows would show marked images
    poisons = read_poison_dir(tmp_path / "p")
    assert poisons.protected_positions is None
    manifest = poisons.manifest
    assert manifest["protected_rows"].startswith("secret") and manifest["num_poisoned"] == 30
    per_image = [k for k, v in manifest.items() if isinstance(v, list) and len(v) in (30, 60) and k != "files"]
    assert not per_image, per_image
    # the truth lives in the key: positions of the poison directory's rows
    key = read_key(tmp_path / "k")
    rows = marked_positions(tmp_path / "k")
    assert len(rows) == 30 and np.array_equal(poisons.x[rows], key.x_marked)
    labels = truth_labels(key)
    assert labels.shape == (60,) and labels.sum() == 30 and labels[rows].all()
    assert np.array_equal(poisons.source_indices[rows], key.source_indices)
    assert len(key.psnr_db) == 30
    # the export lists no protected files and says the share is secret
    with pytest.raises(SystemExit) as done:
        run_cli(export_main, ["--poisons", str(tmp_path / "p"), "--out", str(tmp_path / "pub")])
    assert done.value.code == 0
    sheet = json.loads((tmp_path / "pub" / "datasheet.json").read_text())
    assert sheet["protected_files"] == "secret" and "secret" in sheet["splits"]["train"]["statement"]
    readme = (tmp_path / "pub" / "README.md").read_text()
    assert "protected_files`" not in readme
    assert "marked (\"radioactive\")" in readme and "generalise poorly" not in readme
    capsys.readouterr()
    # The owner scores a detector against the truth from the key (defenses.detect --truth).
    from defenses.detect import main as detect_main

    argv = ["--poisons", str(tmp_path / "p"), "--detector", "linear", "--auroc"]
    assert detect_main([*argv, "--truth", str(tmp_path / "k"), "--out", str(tmp_path / "det")]) == 0
    result = json.loads((tmp_path / "det" / "detection.json").read_text())
    assert 0.0 <= result["detectors"]["linear"]["auroc"] <= 1.0
    with pytest.raises(UserInputError, match="--auroc needs protection labels"):
        detect_main([*argv, "--out", str(tmp_path / "det2")])
    assert _generate(["--out", str(tmp_path / "p2"), "--key-out", str(tmp_path / "k2")]) == 0
    with pytest.raises(UserInputError, match="is not the key of"):
        detect_main([*argv, "--truth", str(tmp_path / "k2"), "--out", str(tmp_path / "det3")])


@pytest.mark.slow
def test_resume_finishes_after_the_key_was_written_and_then_has_nothing_to_do(tmp_path, monkeypatch, capsys):
    import ntga.run.driver as driver

    args = ["--out", str(tmp_path / "p"), "--key-out", str(tmp_path / "k")]
    real = driver._write

    def killed(*a, **k):
        raise RuntimeError("killed after the key was written")

    monkeypatch.setattr(driver, "_write", killed)
    with pytest.raises(RuntimeError, match="killed"):
        _generate(args)
    monkeypatch.setattr(driver, "_write", real)
    key_json = (tmp_path / "k" / "radioactive_key.json").read_bytes()
    assert not (tmp_path / "p" / "manifest.json").exists()
    # without --resume: the key is never overwritten, and the message says how to continue
    assert _generate(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert _generate([*args, "--resume"]) == 0
    assert "reusing the private key" in capsys.readouterr().out
    assert (tmp_path / "k" / "radioactive_key.json").read_bytes() == key_json
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["info_key_sha256"] == json.loads(key_json)["key_sha256"]
    # a finished run: --resume has nothing to do (no "--key-out exists")
    assert _generate([*args, "--resume"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    # another run's settings with this key: refused, the key kept
    assert _generate([*args, "--resume", "--seed", "3", "--out", str(tmp_path / "q")]) == 2
    assert "another run" in capsys.readouterr().err


def test_generate_refuses_an_out_inside_a_key_directory(tmp_path, capsys):
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "radioactive_key.json").write_text("{}")
    from ntga.errors import run_cli
    from ntga.generate import main as generate_main

    with pytest.raises(SystemExit) as done:
        run_cli(generate_main, ["--dataset", "digits", "--method", "random", "--out", str(tmp_path / "k" / "p")])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "inside the private key directory" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "k" / "p").exists()


def test_detect_cli_names_a_folder_that_is_not_a_key(tmp_path):
    from ntga.detect import main as detect_main

    (tmp_path / "model").mkdir()
    with pytest.raises(UserInputError, match="key"):
        detect_main(["--key", str(tmp_path / "nokey"), "--model", str(tmp_path / "model")])
    with pytest.raises(UserInputError, match="--num-images must be >= 1"):
        detect_main(["--key", str(tmp_path), "--model", str(tmp_path / "model"), "--num-images", "0"])


def test_a_second_release_marked_with_the_same_secret_reuses_carriers_and_network(tmp_path, capsys):
    assert _generate(["--fraction", "0.5", "--out", str(tmp_path / "p1"), "--key-out", str(tmp_path / "k1")]) == 0
    capsys.readouterr()
    assert _generate(["--fraction", "0.25", "--same-secret-as", str(tmp_path / "k1"), "--out", str(tmp_path / "p2"),
                      "--key-out", str(tmp_path / "k2")]) == 0
    assert "loaded from the cache" in capsys.readouterr().out  # not retrained
    k1, k2 = read_key(tmp_path / "k1"), read_key(tmp_path / "k2")
    assert k1.secret == k2.secret and np.array_equal(k1.carriers, k2.carriers) and k1.hash == k2.hash
    assert len(k1.positions) == 30 and 0 < len(k2.positions) < 30
    assert _generate(["--same-secret-as", str(tmp_path / "nokey"), "--out", str(tmp_path / "p3"),
                      "--key-out", str(tmp_path / "k3")]) == 2
    assert "key" in capsys.readouterr().err
