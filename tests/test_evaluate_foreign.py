"""`defenses.evaluate --poisons` with poisons made by other tools: a pair of .npy
files or a dataset spec, against the clean data named by --dataset."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from defenses.evaluate import main
from defenses.evaluation import load_foreign_poisons
from defenses.evaluation.inputs import class_matched_subset
from ntga.data import load_dataset, write_npz
from ntga.data.dataset import Arrays
from ntga.errors import UserInputError

FAST = ["--model", "fnn-relu", "--model-opt", "width=16", "--epochs", "1", "--batch-size", "16",
        "--test-size", "50", "--seeds", "1", "--no-progress"]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture
def npy_pair(tmp_path, digits):
    """200 'poisoned' digits as float [0, 1] with one-hot labels, like the NTGA authors' release."""
    rng = np.random.default_rng(0)
    x = digits.x_train[:200].astype(np.float32) / 255
    x = np.clip(x + rng.uniform(-0.1, 0.1, x.shape).astype(np.float32), 0, 1)
    y = np.eye(10, dtype=np.float32)[digits.y_train[:200]]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    return f"{tmp_path / 'x.npy'},{tmp_path / 'y.npy'}", x, digits.y_train[:200]


def test_npy_pair_loads_rounded_with_a_class_matched_clean_baseline(npy_pair, digits):
    source, x, y = npy_pair
    data = load_foreign_poisons(source, dataset="digits")
    assert data.x_poison.dtype == np.uint8 and data.x_poison.shape == (200, 8, 8, 1)
    np.testing.assert_array_equal(data.x_poison, np.rint(x * 255).astype(np.uint8))
    np.testing.assert_array_equal(data.y_poison, y)
    # Unknown source indices: the clean baseline has the poisons' exact class counts.
    np.testing.assert_array_equal(np.bincount(data.y_clean, minlength=10), np.bincount(y, minlength=10))
    assert data.describe["source_indices"] == "unknown" and "class counts" in data.describe["clean_baseline"]
    assert "rounded to uint8" in data.describe["poison_pixels"]
    assert data.identity["mode"] == "poisons"


def test_dataset_spec_of_the_whole_training_split_uses_it_all(tmp_path, digits):
    path = tmp_path / "poisoned.npz"
    write_npz(path, Arrays(255 - digits.x_train, digits.y_train, digits.x_test, digits.y_test, digits.class_names))
    data = load_foreign_poisons(f"npz:{path}", dataset="digits")
    np.testing.assert_array_equal(data.x_poison, 255 - digits.x_train)
    np.testing.assert_array_equal(data.x_clean, digits.x_train)  # same size: the whole clean split
    assert "whole training split" in data.describe["clean_baseline"]


@pytest.mark.slow
def test_cli_end_to_end_says_the_source_indices_are_unknown(npy_pair, tmp_path):
    source, _, _ = npy_pair
    out = tmp_path / "eval"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["--poisons", source, "--dataset", "digits", *FAST, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and {r["condition"] for r in results["runs"]} == {"clean", "poisoned"}
    assert results["data"]["source_indices"] == "unknown"
    assert "which clean image each poison came from is unknown" in (out / "results.md").read_text()


@pytest.mark.parametrize("problem,match", [
    ("no-dataset", "--dataset SPEC is required"),
    ("shape", "do not match"),
    ("labels", "labels lie in"),
    ("range", "float images must lie in \\[0, 1\\].*divide by 255"),
    ("pickle", "without unpickling"),
    ("form", "accepted forms"),
    ("folder", "folder without manifest.json.*folder:PATH"),
    ("rows", "one largest, positive entry"),
])
def test_bad_foreign_poisons_are_refused_clearly(problem, match, tmp_path, digits):
    x, y = digits.x_train[:50], digits.y_train[:50]
    if problem == "shape":
        x = np.zeros((50, 9, 9, 1), np.uint8)
    if problem == "labels":
        y = y + 10
    if problem == "range":
        x = x.astype(np.float32)
    if problem == "rows":
        y = np.zeros((50, 10), np.float32)
    np.save(tmp_path / "x.npy", x)
    if problem == "pickle":
        np.save(tmp_path / "y.npy", np.array([object()] * 50), allow_pickle=True)
    else:
        np.save(tmp_path / "y.npy", y)
    source = {"form": str(tmp_path / "x.npy"), "folder": str(tmp_path)}.get(
        problem, f"{tmp_path / 'x.npy'},{tmp_path / 'y.npy'}")
    with pytest.raises(UserInputError, match=match):
        load_foreign_poisons(source, dataset=None if problem == "no-dataset" else "digits")


def test_class_matched_subset_is_seeded_and_refuses_what_it_cannot_match():
    labels = np.array([0, 1, 0, 1, 0, 1, 2])
    wanted = np.array([0, 0, 1, 2])
    a = class_matched_subset(labels, wanted, 3, seed=0, what="x")
    assert list(np.bincount(labels[a], minlength=3)) == [2, 1, 1]
    np.testing.assert_array_equal(a, class_matched_subset(labels, wanted, 3, seed=0, what="x"))
    with pytest.raises(UserInputError, match="class 2"):
        class_matched_subset(labels, np.array([2, 2]), 3, seed=0, what="x")
