"""`python -m defenses.evaluate` end to end on a tiny NTGA poison of the embedded digits.

Tiny everything (60 poisoned 8x8 images, 2 epochs, narrow victims): these
tests check the plumbing (files, rows, resume, refusals), not accuracies;
tests/test_repro.py checks that the numbers mean something.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from defenses.evaluate import main
from defenses.evaluation import load_poisoned, markdown_tables
from defenses.evaluation.inputs import digest
from ntga.data import load_dataset, make_split, write_npz
from ntga.data.dataset import Arrays
from ntga.errors import UserInputError
from ntga.generate import main as generate_main
from ntga.poisondir import write_poison_dir

REPO = Path(__file__).resolve().parents[1]
GEN = ["--dataset", "digits", "--train-size", "60", "--target-size", "30", "--block-size", "60", "--steps", "2",
       "--no-progress"]
FAST = ["--epochs", "2", "--batch-size", "16", "--test-size", "50", "--no-progress"]
FNN = ["--model", "fnn-relu", "--model-opt", "width=16", *FAST]
# fnn-relu trains its seeds vmapped, small-cnn one by one: both code paths.
FULL = ["--model", "fnn-relu,small-cnn", "--model-opt", "fnn-relu:width=16", "--model-opt", "small-cnn:width=4",
        "--breakers", "none,bdr@bits=1", "--seeds", "2", *FAST]


@pytest.fixture(scope="module")
def poison_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("poisons") / "ntga"
    assert generate_main([*GEN, "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_end_to_end_results_report_and_figures(poison_dir, tmp_path):
    # One test rather than a module fixture shared by several: under pytest-xdist each
    # worker would build such a fixture again, and this is the expensive part of the file.
    out = tmp_path / "results"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["--poisons", str(poison_dir), *FULL, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    for name in ("results.json", "results.md", "accuracy_bars.png", "accuracy_curves.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "accuracy_bars.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["complete"] and results["num_planned_runs"] == 12 and len(results["runs"]) == 12
    assert {(r["model"], r["condition"], r["seed"]) for r in results["runs"]} == {
        (m, c, s) for m in ("fnn-relu", "small-cnn") for c in ("clean", "poisoned", "poisoned/bdr@bits=1")
        for s in (0, 1)}
    for run in results["runs"]:
        assert len(run["test_acc_curve"]) == 2 and len(run["train_loss_curve"]) == 2
        assert 0 <= run["final_test_acc"] <= run["peak_test_acc"] <= 1 and run["peak_epoch"] in (1, 2)
        assert run["final_test_acc"] == run["test_acc_curve"][-1] and run["key_seed"] == run["seed"]
    # The settings that make runs comparable, and what the poisons were.
    assert results["settings"]["mode"] == "poisons" and results["settings"]["base_seed"] == 0
    assert results["settings"]["train_indices_sha256"] == digest(np.load(poison_dir / "source_indices.npy"))
    assert results["poison_manifest"]["method"] == "ntga" and results["poison_manifest"]["eps"] == 0.3
    assert results["data"]["num_train"] == 60 and results["data"]["num_test"] == 50
    assert results["models"]["small-cnn"]["model_opts"] == {"width": 4}
    assert results["models"]["fnn-relu"]["seeds_vmapped"] and not results["models"]["small-cnn"]["seeds_vmapped"]
    assert {"jax", "flax", "numpy", "python"} <= set(results["library_versions"])
    # The report: a table per model with every row, printed at the end as well.
    md = (out / "results.md").read_text()
    for model in ("fnn-relu", "small-cnn"):
        assert f"## {model}" in md
    assert md.count("| clean |") == 2 and md.count("| poisoned |") == 2 and md.count("| bdr@bits=1 |") == 2
    assert "Partial" not in md and "![accuracy_bars.png](accuracy_bars.png)" in md
    assert markdown_tables(results) in md and markdown_tables(results) in printed.getvalue()
    _check_summary(results)


def _check_summary(results):
    """The aggregated rows agree with the individual runs."""
    for model in ("fnn-relu", "small-cnn"):
        rows = results["summary"][model]
        for cond, row in rows.items():
            finals = [r["final_test_acc"] for r in results["runs"] if r["model"] == model and r["condition"] == cond]
            assert row["n"] == 2
            assert row["final_mean"] == pytest.approx(np.mean(finals))
            assert row["final_std"] == pytest.approx(np.std(finals, ddof=1))
        clean, poisoned, bdr = rows["clean"], rows["poisoned"], rows["poisoned/bdr@bits=1"]
        gap = clean["final_mean"] - poisoned["final_mean"]
        expected = (bdr["final_mean"] - poisoned["final_mean"]) / gap if gap >= 0.01 else None
        assert bdr["gap_recovered_final"] == (pytest.approx(expected) if expected is not None else None)
        assert clean["gap_recovered_final"] is None and poisoned["gap_recovered_final"] is None


@pytest.mark.slow
def test_clean_training_images_are_the_poisons_sources(poison_dir):
    data = load_poisoned(poison_dir, test_size=50)
    ds = load_dataset("digits")
    poisons_src = json.loads((poison_dir / "manifest.json").read_text())
    assert data.identity["poison_x_sha256"] == poisons_src["files"]["x_train.npy"]["sha256"]
    np.testing.assert_array_equal(data.x_clean, ds.x_train[np.load(poison_dir / "source_indices.npy")])
    assert data.x_poison.shape == data.x_clean.shape and not np.array_equal(data.x_poison, data.x_clean)
    assert poisons_src["dataset_content_hash"] == ds.content_hash


@pytest.mark.slow
def test_clean_only_mode_uses_the_split_generate_would_protect(tmp_path, poison_dir, capsys):
    out = tmp_path / "clean"
    assert main(["--dataset", "digits", "--train-size", "60", "--target-size", "30", "--breakers", "none,bdr@bits=1",
                 "--seeds", "1", *FNN, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["mode"] == "clean" and results["complete"]
    assert [c["id"] for c in results["plan"]["conditions"]] == ["clean", "clean/bdr@bits=1"]
    # Same flags as the poison's generation -> the same training images.
    assert results["settings"]["train_indices_sha256"] == digest(np.load(poison_dir / "source_indices.npy"))
    split = make_split(load_dataset("digits"), train_size=60, target_size=30, seed=0)
    assert results["settings"]["train_indices_sha256"] == digest(split.train_idx)
    md = (out / "results.md").read_text()
    assert "| clean |" in md and "| clean + bdr@bits=1 |" in md and "gap recovered" not in md
    assert "| clean + bdr@bits=1 |" in capsys.readouterr().out


# ----------------------------------------------------------------------------- resume


def _runs(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["runs"]


@pytest.mark.slow
def test_a_killed_evaluation_keeps_its_runs_and_resume_skips_them(tmp_path, poison_dir, monkeypatch, capsys):
    import defenses.evaluation.runs as runs_module

    out = tmp_path / "eval"
    argv = ["--poisons", str(poison_dir), *FNN, "--seeds", "1", "--out", str(out)]
    real, calls = runs_module.train_and_evaluate, []

    def killed_on_second_run(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runs_module, "train_and_evaluate", killed_on_second_run)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    monkeypatch.setattr(runs_module, "train_and_evaluate", real)
    partial = json.loads((out / "results.json").read_text())
    assert not partial["complete"] and [r["condition"] for r in partial["runs"]] == ["clean"]
    assert "Partial results: 1 of 2 runs" in (out / "results.md").read_text()
    assert not (out / "accuracy_bars.png").exists()

    with pytest.raises(UserInputError, match=r"already holds a defenses.evaluate run \(results.json\); pass --resume"):
        main(argv)
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    log = capsys.readouterr().out
    assert "1 finished run(s) skipped" in log and "[1/1] fnn-relu | poisoned | seed 0" in log
    first = _runs(out)
    assert first[0] == partial["runs"][0] and [r["condition"] for r in first] == ["clean", "poisoned"]

    # The plan may grow on resume (here: a breaker, also on clean data); finished runs stay as they were.
    grow = ["--resume", "--breakers", "bdr@bits=1", "--breakers-on-clean"]
    assert main([*argv, *grow]) == 0
    log = capsys.readouterr().out
    assert "2 finished run(s) skipped" in log and "(2 run(s) trained)" in log
    grown = json.loads((out / "results.json").read_text())
    assert grown["complete"] and grown["runs"][:2] == first
    assert [r["condition"] for r in grown["runs"][2:]] == ["poisoned/bdr@bits=1", "clean/bdr@bits=1"]
    row = grown["summary"]["fnn-relu"]["clean/bdr@bits=1"]
    assert row["gap_recovered_final"] is None and row["final_std"] is None  # not a poison row; one seed
    md = (out / "results.md").read_text()
    assert "| clean + bdr@bits=1 |" in md and "| bdr@bits=1 |" in md

    assert main([*argv, *grow]) == 0
    assert "(0 run(s) trained)" in capsys.readouterr().out and len(_runs(out)) == 4


@pytest.mark.parametrize("change, message", [
    (["--epochs", "3"], "different settings .*epochs: 2 before, 3 now"),
    (["--seed", "1"], "different settings .*base_seed"),
    (["--model-opt", "fnn-relu:width=8"], "fnn-relu was trained with different settings"),
    (["--test-size", "40"], "different settings .*test_indices_sha256"),
    (["--no-standardize"], "different settings .*standardize: True before, False now"),
])
@pytest.mark.slow
def test_resume_refuses_different_settings(tmp_path, poison_dir, monkeypatch, change, message):
    import defenses.evaluation.pipeline as pipeline

    # The settings check happens before any training, so an evaluation that trains
    # nothing (a results.json with the settings and no runs) is enough to test it.
    monkeypatch.setattr(pipeline, "run_all", lambda *args, **kwargs: 0)
    argv = ["--poisons", str(poison_dir), *FULL, "--out", str(tmp_path)]
    assert main(argv) == 0
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(UserInputError, match=message):
        main([*argv, *change, "--resume"])
    assert (tmp_path / "results.json").read_text() == before
    assert main([*argv, "--resume"]) == 0  # the same settings are accepted


# ----------------------------------------------------------------------------- refusals


def _npz_dataset(path: Path, size: int = 8):
    rng = np.random.default_rng(0)
    arrays = Arrays(x_train=rng.integers(0, 256, (40, size, size, 1), dtype=np.uint8), y_train=np.arange(40) % 4,
                    x_test=rng.integers(0, 256, (60, size, size, 1), dtype=np.uint8), y_test=np.arange(60) % 4,
                    class_names=("a", "b", "c", "d"))
    write_npz(path, arrays)
    return load_dataset(f"npz:{path}", use_cache=False)


def _poison_dir_for(ds, out: Path, n: int = 32) -> Path:
    """A small valid poison directory (uniform noise within 8/255) for the dataset ``ds``."""
    idx = np.arange(n)
    noise = np.random.default_rng(1).integers(-8, 9, ds.x_train[idx].shape)
    x = np.clip(ds.x_train[idx].astype(int) + noise, 0, 255).astype(np.uint8)
    return write_poison_dir(out, x=x, y=ds.y_train[idx], source_indices=idx,
                            manifest={"method": "random", "eps": 8 / 255, "norm": "linf", "seed": 0,
                                      "dataset": ds.spec, "dataset_content_hash": ds.content_hash})


@pytest.mark.slow
def test_default_results_folder_is_beside_the_poisons_not_inside(tmp_path, poison_dir, monkeypatch):
    from defenses.evaluate import build_parser, default_out

    before = sorted(p.name for p in poison_dir.iterdir())
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["--poisons", str(poison_dir)])
    assert default_out(args) == Path("runs") / f"eval-{poison_dir.name}"
    assert main(["--poisons", str(poison_dir), *FNN, "--seeds", "1"]) == 0
    assert (tmp_path / "runs" / f"eval-{poison_dir.name}" / "results.json").exists()
    assert sorted(p.name for p in poison_dir.iterdir()) == before  # what a data owner publishes stays untouched
    args = build_parser().parse_args(["--dataset", "folder:some/where/cifar.tar.gz/"])
    assert default_out(args) == Path("runs") / "eval-cifar.tar.gz"


def test_missing_poison_dir(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        main(["--poisons", str(tmp_path / "nope"), *FNN, "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tampered_poison_dir_is_refused(tmp_path, poison_dir):
    copy = tmp_path / "copy"
    shutil.copytree(poison_dir, copy, ignore=shutil.ignore_patterns("eval"))
    raw = bytearray((copy / "x_train.npy").read_bytes())
    raw[-1] ^= 1  # one pixel, one bit
    (copy / "x_train.npy").write_bytes(bytes(raw))
    with pytest.raises(UserInputError, match="x_train.npy was modified or corrupted"):
        main(["--poisons", str(copy), *FNN, "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--model", "vgg"], "unknown model 'vgg'; accepted: fnn, fnn-relu"),
    (["--breakers", "none,sharpen"], "unknown breaker 'sharpen'; accepted: none, grayscale"),
    (["--breakers", "jpeg@quality=500"], "bad value '500' for option quality"),
    (["--model-opt", "depth"], "KEY=VALUE"),
    (["--model-opt", "cnn:width=4"], "names model 'cnn', which is not among --model"),
    (["--model-opt", "colour=red"], "bad model override"),
    (["--batch-size", "500"], "--batch-size 500 exceeds the 60 training images"),
    (["--train-size", "30"], "--train-size does not apply with --poisons"),
])
@pytest.mark.slow
def test_bad_settings_are_refused_before_training(tmp_path, poison_dir, flags, message):
    out = tmp_path / "out"
    with pytest.raises(UserInputError, match=message):
        main(["--poisons", str(poison_dir), *FNN, *flags, "--out", str(out)])
    assert not out.exists()


def test_images_too_small_for_the_victims(tmp_path):
    ds = _npz_dataset(tmp_path / "tiny.npz", size=4)
    poisons = _poison_dir_for(ds, tmp_path / "p")
    with pytest.raises(UserInputError, match=r"'fnn-relu' cannot train on 4x4x1 images.*at least 8x8"):
        main(["--poisons", str(poisons), *FNN, "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_changed_source_dataset_is_refused_and_a_moved_copy_accepted(tmp_path):
    path = tmp_path / "data.npz"
    ds = _npz_dataset(path)
    poisons = _poison_dir_for(ds, tmp_path / "p")
    shutil.copy(path, tmp_path / "moved.npz")
    # The original changes (one pixel): its content hash no longer matches the manifest.
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["x_train"][0, 0, 0, 0] ^= 1
    np.savez(path, **arrays)
    with pytest.raises(UserInputError, match="the source dataset changed since the poisons were made"):
        main(["--poisons", str(poisons), *FNN, "--out", str(tmp_path / "out")])
    with pytest.raises(UserInputError, match=r"the source dataset changed.*\(from --dataset\)"):
        load_poisoned(poisons, dataset=f"npz:{path}")
    data = load_poisoned(poisons, dataset=f"npz:{tmp_path / 'moved.npz'}")
    np.testing.assert_array_equal(data.x_clean, ds.x_train[:32])
    # Gone altogether: the message says how to point at a copy.
    os.remove(path)
    with pytest.raises(UserInputError, match="cannot load the poisons' source dataset.*pass --dataset SPEC"):
        load_poisoned(poisons)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_exit_status_and_message(tmp_path, poison_dir):
    proc = subprocess.run([sys.executable, "-m", "defenses.evaluate", "--poisons", str(poison_dir),
                           "--breakers", "none,sharpen", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown breaker 'sharpen'") and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_help_lists_models_and_breakers():
    proc = subprocess.run([sys.executable, "-m", "defenses.evaluate", "--help"], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0
    for name in ("--poisons", "--breakers-on-clean", "--resume", "small-cnn", "orthogonal-projection", "@bits="):
        assert name in proc.stdout


@pytest.mark.slow
def test_skip_clean_trains_only_the_poisoned_rows(poison_dir, tmp_path):
    out = tmp_path / "skip"
    assert main(["--poisons", str(poison_dir), *FNN, "--seeds", "1", "--breakers", "none,bdr@bits=1",
                 "--skip-clean", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert sorted({r["condition"] for r in results["runs"]}) == ["poisoned", "poisoned/bdr@bits=1"]
    assert (out / "accuracy_bars.png").is_file()
    with pytest.raises(UserInputError, match="--skip-clean needs --poisons"):
        main(["--dataset", "digits", *FNN, "--skip-clean", "--out", str(tmp_path / "c")])


@pytest.mark.slow
def test_no_standardize_reaches_the_trainer_and_the_report(poison_dir, tmp_path):
    out = tmp_path / "raw"
    assert main(["--poisons", str(poison_dir), *FNN, "--seeds", "1", "--skip-clean", "--no-standardize",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["train_config"]["standardize"] is False
    assert "raw [0, 1] inputs" in (out / "results.md").read_text()
