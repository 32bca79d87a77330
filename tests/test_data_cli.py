"""The shared dataset flags and the ``python -m ntga.data`` inspection command."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ntga.data import add_dataset_args, split_from_args
from ntga.data.cli import main
from ntga.errors import run_cli

REPO = Path(__file__).resolve().parents[1]


def parser(**kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_dataset_args(p, **kw)
    return p


def test_flag_defaults_and_split_from_args():
    args = parser().parse_args([])
    assert (args.dataset, args.train_size, args.test_size, args.target_size, args.seed) == (
        "digits",
        None,
        None,
        None,
        0,
    )
    assert args.cache_dir is None and args.no_cache is False
    s = split_from_args(
        parser().parse_args(["--train-size", "40", "--target-size", "0", "--test-size", "20", "--seed", "2"])
    )
    assert (len(s.train_idx), len(s.target_idx), len(s.test_idx), s.seed) == (40, 0, 20, 2)
    assert parser(default_dataset="idx:x").parse_args([]).dataset == "idx:x"


@pytest.mark.parametrize(
    "argv", [["--train-size", "0"], ["--train-size", "abc"], ["--seed", "-1"], ["--target-size", "-2"]]
)
def test_bad_flag_values_are_argparse_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        parser().parse_args(argv)
    assert exit_.value.code == 2 and "integer" in capsys.readouterr().err


def test_help_lists_every_spec_form(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert all(f in out for f in ("digits", "idx:DIR", "folder:PATH", "npz:FILE", "tfds:NAME", "--no-cache"))


def test_main_prints_summary_and_writes_preview(tmp_path, capsys):
    png = tmp_path / "grid.png"
    assert main(["--train-size", "30", "--target-size", "10", "--preview", str(png), "--per-class", "3"]) == 0
    out = capsys.readouterr().out
    assert "content hash" in out and "8x8x1 uint8" in out and "train (to protect) 30" in out
    rows = [line.split() for line in out.splitlines() if line[:1].isdigit()]
    assert len(rows) == 10 and sum(int(r[1]) for r in rows) == 30 and sum(int(r[2]) for r in rows) == 10
    with Image.open(png) as im:
        assert im.mode == "RGB" and im.height == 10 * (48 + 2) + 2  # 10 class rows of 8x8 upscaled to 48
        assert np.asarray(im).std() > 0


def test_run_cli_turns_bad_input_into_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, ["--dataset", "nonsense"])
    assert exit_.value.code == 2 and "unknown dataset spec 'nonsense'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, ["--train-size", "5000"])
    assert exit_.value.code == 2 and "at most 1082" in capsys.readouterr().err


def test_preview_into_missing_folder_is_a_user_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, ["--preview", str(tmp_path / "no" / "grid.png")])
    assert exit_.value.code == 2 and "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_module_entry_point():
    r = subprocess.run(
        [sys.executable, "-m", "ntga.data", "--train-size", "12"], cwd=REPO, capture_output=True, text=True
    )
    assert r.returncode == 0 and "dataset       digits" in r.stdout, r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "ntga.data", "--dataset", "npz:/no/such.npz"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert (
        r.returncode == 2 and r.stderr.startswith("error: npz:/no/such.npz") and "Traceback" not in r.stderr
    )
