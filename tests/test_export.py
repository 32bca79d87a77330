"""Tests for exporting a poison directory as a folder of PNGs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ntga.errors import UserInputError
from ntga.data import load_dataset
from ntga.export import export_image_folder, main
from ntga.poisondir import read_poison_dir, write_poison_dir

CLASSES = ["zero", "one", "two"]


def _write(out, *, c=1, n=6):
    """A small poison directory; returns its images and labels."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 8, 8, c), dtype=np.uint8)
    y = rng.integers(0, len(CLASSES), n)
    write_poison_dir(out, x=x, y=y, source_indices=np.arange(10, 10 + n), manifest={"method": "random"},
                     class_names=CLASSES)
    return x, y


@pytest.mark.parametrize("c", [1, 3])
def test_export_round_trips_through_png_and_the_folder_loader(tmp_path, c):
    x, y = _write(tmp_path / "p", c=c)
    poisons = read_poison_dir(tmp_path / "p")
    x_test, y_test = x[:3][::-1].copy(), np.array([2, 0, 1])
    dest = export_image_folder(poisons, tmp_path / "export", class_names=CLASSES, x_test=x_test, y_test=y_test)
    # "zero", "one", "two" do not sort in label order, so the folders get a numeric prefix.
    assert sorted(p.name for p in (dest / "train").iterdir()) == ["0-zero", "1-one", "2-two"]
    for img, label, index in zip(x, y, poisons.source_indices):
        with Image.open(dest / "train" / f"{label}-{CLASSES[label]}" / f"{index:06d}.png") as im:
            assert im.mode == ("L" if c == 1 else "RGB")
            np.testing.assert_array_equal(np.asarray(im).reshape(img.shape), img)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial dir left
    # What a data owner publishes reads back with the same pixels and labels.
    ds = load_dataset(f"folder:{dest}", use_cache=False)
    order = np.argsort(poisons.source_indices)  # the loader reads files in name order within a class
    got = sorted(zip(ds.y_train.tolist(), [a.tobytes() for a in ds.x_train]))
    want = sorted(zip(y[order].tolist(), [a.tobytes() for a in x[order]]))
    assert got == want
    assert sorted(zip(ds.y_test.tolist(), [a.tobytes() for a in ds.x_test])) == sorted(
        zip(y_test.tolist(), [a.tobytes() for a in x_test]))


def test_sorted_class_names_are_used_verbatim(tmp_path):
    _write(tmp_path / "p")
    dest = export_image_folder(read_poison_dir(tmp_path / "p"), tmp_path / "e", class_names=["a", "b", "c"])
    assert {p.name for p in (dest / "train").iterdir()} <= {"a", "b", "c"}


def test_export_cli_on_a_digits_poison_dir(tmp_path):
    ds = load_dataset("digits")
    idx = np.arange(0, 40)
    write_poison_dir(tmp_path / "p", x=ds.x_train[idx], y=ds.y_train[idx], source_indices=idx,
                     manifest={"method": "random", "dataset": "digits", "dataset_content_hash": ds.content_hash},
                     class_names=ds.class_names)
    assert main(["--poisons", str(tmp_path / "p"), "--out", str(tmp_path / "pub")]) == 0
    back = load_dataset(f"folder:{tmp_path / 'pub'}", use_cache=False)
    assert back.x_train.shape == (40, 8, 8, 1) and back.x_test.shape == ds.x_test.shape
    np.testing.assert_array_equal(np.sort(back.y_test), np.sort(ds.y_test))
    with pytest.raises(UserInputError, match="content hash"):
        main(["--poisons", str(tmp_path / "p"), "--out", str(tmp_path / "pub2"), "--dataset",
              f"folder:{tmp_path / 'pub'}"])


def test_export_refuses_non_empty_dest_and_bad_names(tmp_path):
    _write(tmp_path / "p")
    poisons = read_poison_dir(tmp_path / "p")
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "x").write_text("")
    with pytest.raises(UserInputError, match="not an empty directory"):
        export_image_folder(poisons, tmp_path / "dest", class_names=CLASSES)
    with pytest.raises(UserInputError, match="cannot be folder names"):
        export_image_folder(poisons, tmp_path / "d2", class_names=["a", "b/c", "d"])
    with pytest.raises(UserInputError, match="class_names has 1 names"):
        export_image_folder(poisons, tmp_path / "d2", class_names=["a"])
    assert not (tmp_path / "d2").exists()


@pytest.mark.slow
def test_the_export_carries_a_datasheet(tmp_path):
    """README.md and datasheet.json say what was done, the budget, which files are protected and what is missing."""
    from ntga.generate import main as generate_main

    poisons = tmp_path / "p"
    assert generate_main(["--dataset", "digits", "--train-size", "40", "--target-size", "20", "--steps", "1",
                          "--fraction", "0.5", "--no-progress", "--out", str(poisons)]) == 0
    dest = tmp_path / "pub"
    assert main(["--poisons", str(poisons), "--out", str(dest)]) == 0
    sheet = json.loads((dest / "datasheet.json").read_text())
    loaded = read_poison_dir(poisons)
    assert sheet["method"] == "ntga" and "Neural Tangent Generalization Attacks" in sheet["method_reference"]
    assert sheet["budget"]["norm"] == "linf" and sheet["budget"]["eps"] == pytest.approx(0.3)
    train = sheet["splits"]["train"]
    assert train["files"] == 40 and train["protected"] == len(loaded.protected_positions) == 20
    assert sheet["splits"]["not_included"]["images"] == 20
    assert sheet["splits"]["test"]["files"] == len(list((dest / "test").rglob("*.png")))
    assert len(sheet["protected_files"]) == 20 and all((dest / f).exists() for f in sheet["protected_files"])
    # The listed files are exactly the ones that differ from the clean originals (file stem = source index).
    clean = load_dataset("digits").x_train
    changed = set()
    for png in (dest / "train").rglob("*.png"):
        with Image.open(png) as im:
            if not np.array_equal(np.asarray(im), clean[int(png.stem)][..., 0]):
                changed.add(f"train/{png.parent.name}/{png.name}")
    assert set(sheet["protected_files"]) == changed
    readme = (dest / "README.md").read_text()
    assert "20 of 40 training images carry protection" in readme and "held out" in readme
    assert "linf <= 0.3" in readme and "ICML 2021" in readme
    assert load_dataset(f"folder:{dest}").x_train.shape[0] == 40  # the datasheet does not disturb reading it back
