"""`python -m ntga.generate` end to end on tiny subsets of the embedded digits dataset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ntga.data import Split, load_dataset, make_split
from ntga.errors import UserInputError
from ntga.generate import main, parse_fraction, parse_kernel_opts
from ntga.poisondir import check_budget, read_poison_dir

TINY = ["--dataset", "digits", "--train-size", "48", "--target-size", "30", "--block-size", "16",
        "--steps", "3", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "out"
    assert main([*TINY, "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_writes_a_verified_poison_dir_within_budget(tiny_run):
    poisons = read_poison_dir(tiny_run)
    m = poisons.manifest
    assert poisons.x.shape == (48, 8, 8, 1) and poisons.x.dtype == np.uint8
    assert m["method"] == "ntga" and m["kernel"] == "fnn" and m["steps"] == 3
    assert m["eps"] == pytest.approx(0.3) and m["t"] == 64.0  # greyscale -> MNIST defaults
    assert m["step_size"] == pytest.approx(1.1 * 0.3 / 3)
    assert len(m["blocks"]) == 3 and m["target_size"] == 30
    ds = load_dataset("digits")
    clean = ds.x_train[poisons.source_indices]
    np.testing.assert_array_equal(poisons.y, ds.y_train[poisons.source_indices])
    check_budget(clean, poisons.x, 0.3, "linf")
    assert np.abs(poisons.x.astype(int) - clean.astype(int)).max() == 76  # floor(0.3 * 255): budget used
    assert not np.intersect1d(poisons.source_indices, poisons.target_indices).size
    # The attack's own health check: the GP trained on the poisons does worse on the targets.
    assert m["gp_target_acc_poisoned_mean"] < m["gp_target_acc_clean_mean"]
    assert not (tiny_run / ".work").exists()


@pytest.mark.slow
def test_same_seed_same_output(tiny_run, tmp_path):
    assert main([*TINY, "--out", str(tmp_path / "again")]) == 0
    np.testing.assert_array_equal(read_poison_dir(tmp_path / "again").x, read_poison_dir(tiny_run).x)


@pytest.mark.slow
def test_resume_on_a_complete_dir_is_a_no_op(tiny_run, capsys):
    before = (tiny_run / "manifest.json").read_text()
    main([*TINY, "--out", str(tiny_run), "--resume"])
    assert "already complete" in capsys.readouterr().out
    assert (tiny_run / "manifest.json").read_text() == before


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--eps", "0"], "eps=0.0 is invalid"),
        (["--eps", "1.5"], "eps=1.5 is invalid"),
        (["--eps", "abc"], "--eps must be a number"),
        (["--block-size", "49"], "--block-size 49 is larger than the training set"),
        (["--kernel", "rbf"], "rbf"),
        (["--t", "0"], "t=0.0 is invalid"),
        (["--t", "-1"], "t=-1.0 is invalid"),
        (["--steps", "0"], "steps=0 is invalid"),
        (["--step-size", "-0.1"], "step_size=-0.1 is invalid"),
        (["--target-size", "0"], "target"),
        (["--kernel-opt", "depth"], "KEY=VALUE"),
        (["--shard", "3/2"], "--shard"),
    ],
)
def test_bad_settings_fail_clearly_and_write_nothing(tmp_path, flags, message):
    out = tmp_path / "out"
    with pytest.raises(UserInputError, match=message):
        main([*TINY, *flags, "--out", str(out)])
    assert not out.exists()


def test_existing_non_empty_out_without_resume(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    for extra in ([], ["--resume"]):  # a user's directory is refused with or without --resume
        with pytest.raises(UserInputError, match=r"is not empty \(mine.txt\) and does not hold an ntga.generate run"):
            main([*TINY, "--out", str(out), *extra])
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert (out / "mine.txt").read_text() == "keep me"


def test_overlapping_target_set_is_refused():
    split = make_split(load_dataset("digits"), train_size=40, target_size=20, seed=0)
    with pytest.raises(UserInputError, match="overlap"):
        Split(dataset=split.dataset, train_idx=split.train_idx, target_idx=split.train_idx[:5],
              test_idx=split.test_idx, seed=0)


def test_cli_exit_code_and_message(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ntga.generate", *TINY, "--eps", "2", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: eps=2.0 is invalid")
    assert "Traceback" not in proc.stderr


def test_help_lists_the_flags():
    proc = subprocess.run([sys.executable, "-m", "ntga.generate", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for flag in ("--dataset", "--kernel", "--eps", "--norm", "--steps", "--step-size", "--t", "--block-size",
                 "--target-size", "--dtype", "--seed", "--out", "--resume", "--shard"):
        assert flag in proc.stdout
    lines = proc.stdout.splitlines()  # the dataset forms stay a table, one per line
    for form in ("digits", "idx:DIR", "folder:PATH", "npz:FILE", "tfds:NAME"):
        assert any(line.strip().startswith(form + " ") for line in lines), form
    assert "--out DIR is required" in proc.stdout


def test_parse_helpers():
    assert parse_fraction("8/255", "--eps") == pytest.approx(8 / 255)
    assert parse_kernel_opts(["depth=3", "W_std=1.5", "activation=relu"]) == {
        "depth": 3, "W_std": 1.5, "activation": "relu"}


@pytest.mark.slow
def test_killed_run_resumes_to_identical_output(tmp_path, tiny_run):
    """SIGKILL mid-run, then --resume: the result equals an uninterrupted run."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "ntga.generate", *TINY, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    first = out / ".work" / "block_00000.json"
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if (out / "manifest.json").exists() and proc.returncode != 0:
        # The kill landed after the last atomic write (the tiny run can finish within one
        # poll): the manifest is written last, so the directory must then be whole.
        read_poison_dir(out)
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    np.testing.assert_array_equal(read_poison_dir(out).x, read_poison_dir(tiny_run).x)
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["blocks"]) == 3


@pytest.mark.slow
def test_the_summary_says_what_the_numbers_are_and_what_to_run_next(tmp_path, capsys):
    out = tmp_path / "o"
    assert main([*TINY, "--block-size", "20", "--out", str(out)]) == 0  # blocks of 20, 20 and 8 images
    printed = capsys.readouterr().out
    assert "block 2 (8 images): surrogate GP's target accuracy clean" in printed
    assert "Surrogate check (not a trained victim's accuracy)" in printed
    assert "blocks of 20 images, the last of 8, whose figures are noisier" in printed
    assert f"Next: python -m defenses.evaluate --poisons {out}" in printed
    assert f"python -m ntga.export --poisons {out} --out DIR" in printed
