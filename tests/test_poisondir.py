"""Tests for the poison directory format: round trip, tamper detection, writer validation.

Budget checks are tested in test_budget.py, the PNG export in test_export.py.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntga import budget, pixels
from ntga import poisondir as pd
from ntga.poisondir.checks import sha256_of
from ntga.errors import UserInputError

CLASSES = ["zero", "one", "two"]


def _data(n=6, h=8, w=8, c=1, seed=0):
    rng = np.random.default_rng(seed)
    x_clean = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    delta = rng.integers(-8, 9, x_clean.shape)
    x = np.clip(x_clean.astype(np.int64) + delta, 0, 255).astype(np.uint8)
    y = rng.integers(0, len(CLASSES), n)
    return x_clean, x, y


def _write(out, *, n=6, c=1, target=True, **kw):
    x_clean, x, y = _data(n=n, c=c)
    manifest = {"method": "ntga", "eps": 8 / 255, "norm": "linf", "t": 64, "seed": 0}
    pd.write_poison_dir(out, x=x, y=y, source_indices=np.arange(10, 10 + n), manifest=manifest,
                        target_indices=np.arange(100, 104) if target else None, x_clean=x_clean,
                        class_names=CLASSES, **kw)
    return x_clean, x, y


def _rewrite_manifest(path: Path, edit) -> None:
    manifest = json.loads((path / pd.MANIFEST).read_text())
    edit(manifest)
    (path / pd.MANIFEST).write_text(json.dumps(manifest))


# ----------------------------------------------------------------------------- round trip

_manifest_values = st.one_of(
    st.integers(-(2**40), 2**40), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
    st.booleans(), st.none(), st.lists(st.integers(0, 9), max_size=3),
)


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 5), h=st.integers(1, 6), w=st.integers(1, 6), c=st.sampled_from([1, 3]),
    label_dtype=st.sampled_from([np.int8, np.uint8, np.int32, np.int64]),
    index_dtype=st.sampled_from([np.int32, np.uint16, np.int64]),
    with_target=st.booleans(), with_clean=st.booleans(),
    extra=st.dictionaries(st.text("abcdefgh_", min_size=1, max_size=6), _manifest_values, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_round_trip_is_bit_exact(n, h, w, c, label_dtype, index_dtype, with_target, with_clean, extra, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    y = rng.integers(0, 3, n).astype(label_dtype)
    source = rng.permutation(50)[:n].astype(index_dtype)
    target = rng.permutation(np.arange(50, 70))[:3].astype(index_dtype) if with_target else None
    manifest = {**extra, "method": "random", "eps": np.float32(0.25), "steps": np.int64(3), "kernel": None}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "poison"
        pd.write_poison_dir(out, x=x, y=y, source_indices=source, manifest=manifest, target_indices=target,
                            x_clean=x if with_clean else None)
        got = pd.read_poison_dir(out)
        pd.verify_poison_dir(out)
        assert (out / pd.PREVIEW).exists() == with_clean
    assert got.x.dtype == np.uint8 and got.y.dtype == np.int64 and got.source_indices.dtype == np.int64
    np.testing.assert_array_equal(got.x, x)
    np.testing.assert_array_equal(got.y, y.astype(np.int64))
    np.testing.assert_array_equal(got.source_indices, source.astype(np.int64))
    if with_target:
        np.testing.assert_array_equal(got.target_indices, target.astype(np.int64))
    else:
        assert got.target_indices is None
    for k, v in extra.items():
        if k not in ("method", "eps", "steps", "kernel"):
            assert got.manifest[k] == v
    assert got.manifest["method"] == "random" and got.manifest["steps"] == 3 and got.manifest["kernel"] is None
    assert got.manifest["eps"] == float(np.float32(0.25))
    assert got.manifest["num_examples"] == n and got.manifest["image_shape"] == [h, w, c]
    assert got.manifest["format_version"] == pd.FORMAT_VERSION


def test_manifest_records_files_versions_and_time(tmp_path):
    _write(tmp_path / "p")
    m = json.loads((tmp_path / "p" / pd.MANIFEST).read_text())
    assert set(m["files"]) == {"x_train.npy", "y_train.npy", "source_indices.npy", "target_indices.npy"}
    assert m["files"]["x_train.npy"]["shape"] == [6, 8, 8, 1] and m["files"]["x_train.npy"]["dtype"] == "uint8"
    assert all(len(e["sha256"]) == 64 for e in m["files"].values())
    assert {"python", "numpy", "ntga"} <= set(m["library_versions"])
    assert m["created"].endswith("Z") and m["class_names"] == CLASSES
    # Readable with numpy alone, without pickle.
    assert np.load(tmp_path / "p" / "x_train.npy", allow_pickle=False).shape == (6, 8, 8, 1)


# ----------------------------------------------------------------------------- tamper detection


@pytest.mark.parametrize("name", ["x_train.npy", "y_train.npy", "source_indices.npy", "target_indices.npy"])
def test_one_flipped_byte_is_refused(tmp_path, name):
    _write(tmp_path)
    data = bytearray((tmp_path / name).read_bytes())
    data[-1] ^= 0x01
    (tmp_path / name).write_bytes(bytes(data))
    with pytest.raises(UserInputError, match=rf"{name} was modified or corrupted: sha256 \w+ expected \w+"):
        pd.read_poison_dir(tmp_path)
    with pytest.raises(UserInputError, match="modified or corrupted"):
        pd.verify_poison_dir(tmp_path)


def test_verify_false_skips_only_the_hash(tmp_path):
    _, x, _ = _write(tmp_path)
    data = bytearray((tmp_path / "x_train.npy").read_bytes())
    data[-1] ^= 0x01
    (tmp_path / "x_train.npy").write_bytes(bytes(data))
    got = pd.read_poison_dir(tmp_path, verify=False)
    assert got.x.reshape(-1)[-1] == x.reshape(-1)[-1] ^ 1


@pytest.mark.parametrize("name", ["x_train.npy", "y_train.npy", "source_indices.npy", "target_indices.npy"])
def test_deleted_file_is_refused(tmp_path, name):
    _write(tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(UserInputError, match=rf"{name} is missing"):
        pd.read_poison_dir(tmp_path)


def test_edited_manifest_shape_is_refused(tmp_path):
    _write(tmp_path)
    _rewrite_manifest(tmp_path, lambda m: m["files"]["x_train.npy"].update(shape=[6, 8, 8, 3]))
    with pytest.raises(UserInputError, match=r"x_train.npy has shape \[6, 8, 8, 1\].*manifest.json says shape \[6, 8, 8, 3\]"):
        pd.read_poison_dir(tmp_path)


def test_edited_num_examples_is_refused(tmp_path):
    _write(tmp_path)
    _rewrite_manifest(tmp_path, lambda m: m.update(num_examples=7))
    with pytest.raises(UserInputError, match="num_examples 7"):
        pd.read_poison_dir(tmp_path)


def test_missing_manifest_gives_resume_hint(tmp_path):
    _write(tmp_path)
    (tmp_path / pd.MANIFEST).unlink()
    with pytest.raises(UserInputError, match=r"no manifest.json: incomplete or not a poison directory.*--resume"):
        pd.read_poison_dir(tmp_path)


def test_missing_directory_and_bad_json_and_version(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        pd.read_poison_dir(tmp_path / "nope")
    _write(tmp_path)
    text = (tmp_path / pd.MANIFEST).read_text()
    (tmp_path / pd.MANIFEST).write_text(text[:-20])
    with pytest.raises(UserInputError, match="manifest.json is not readable JSON"):
        pd.read_poison_dir(tmp_path)
    (tmp_path / pd.MANIFEST).write_text(text)
    _rewrite_manifest(tmp_path, lambda m: m.update(format_version=99))
    with pytest.raises(UserInputError, match="format_version 99"):
        pd.read_poison_dir(tmp_path)


def test_manifest_cannot_point_outside_the_directory(tmp_path):
    _write(tmp_path / "p")
    _rewrite_manifest(tmp_path / "p", lambda m: m["files"].update({"../evil.npy": m["files"]["y_train.npy"]}))
    with pytest.raises(UserInputError, match=r"unknown files \['../evil.npy'\]"):
        pd.read_poison_dir(tmp_path / "p")


def _inject_object_array(path: Path, update_manifest: bool) -> None:
    objects = np.empty(6, dtype=object)
    objects[:] = [{"payload": i} for i in range(6)]
    np.save(path / "y_train.npy", objects, allow_pickle=True)
    if update_manifest:
        sha = sha256_of(path / "y_train.npy")
        _rewrite_manifest(path, lambda m: m["files"]["y_train.npy"].update(sha256=sha, dtype="object"))


def test_object_array_injection_is_refused(tmp_path):
    _write(tmp_path)
    _inject_object_array(tmp_path, update_manifest=False)
    with pytest.raises(UserInputError, match="y_train.npy was modified or corrupted"):
        pd.read_poison_dir(tmp_path)
    # A forger who also fixes the manifest's hash is still refused, with or without hashing.
    _inject_object_array(tmp_path, update_manifest=True)
    for verify in (True, False):
        with pytest.raises(UserInputError, match="y_train.npy holds Python objects"):
            pd.read_poison_dir(tmp_path, verify=verify)


# ----------------------------------------------------------------------------- writer validation


def test_non_empty_out_is_refused_without_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserInputError, match="not empty.*--overwrite"):
        _write(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    _write(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"  # other files are left alone
    with pytest.raises(UserInputError, match="existing poison directory"):
        _write(tmp_path)


def test_overwrite_replaces_our_files(tmp_path):
    _write(tmp_path, n=6, target=True)
    _, x, _ = _write(tmp_path, n=4, c=3, target=False, overwrite=True)
    got = pd.read_poison_dir(tmp_path)
    assert not (tmp_path / "target_indices.npy").exists() and got.target_indices is None
    np.testing.assert_array_equal(got.x, x)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(x=np.zeros((2, 4, 4, 1), np.float32)), "x must be uint8"),
        (dict(x=np.zeros((2, 4, 4, 2), np.uint8)), r"C in \(1, 3\)"),
        (dict(x=np.zeros((2, 4, 4), np.uint8)), r"\[N, H, W, C\]"),
        (dict(x=np.zeros((0, 4, 4, 1), np.uint8), y=np.zeros(0, int), source_indices=np.zeros(0, int)), "no images"),
        (dict(y=np.array([0, 1, 2])), "y has 3 labels but there are 2 images"),
        (dict(y=np.array([0.0, 1.0])), "y must be a 1-D integer array"),
        (dict(source_indices=np.array([3, 3])), "source_indices must be unique, but 3"),
        (dict(source_indices=np.array([-1, 3])), "source_indices must be >= 0"),
        (dict(target_indices=np.array([5, 5])), "target_indices must be unique"),
        (dict(manifest={"eps": float("nan")}), r"manifest value manifest.eps is nan"),
        (dict(manifest={"cfg": {"t": np.float64(np.inf)}}), r"manifest.cfg.t is inf"),
        (dict(manifest={"files": {}}), r"\['files'\] are written by write_poison_dir"),
        (dict(manifest={"fn": print}), "has type builtin_function_or_method"),
        (dict(manifest={1: "a"}), "must be a string"),
        (dict(class_names=["only"], y=np.array([0, 1])), "label 1 but there are only 1 class names"),
    ],
)
def test_writer_refuses_bad_input(tmp_path, change, message):
    args = dict(x=np.zeros((2, 4, 4, 1), np.uint8), y=np.array([0, 1]), source_indices=np.array([0, 1]), manifest={})
    args.update(change)
    with pytest.raises(UserInputError, match=message):
        pd.write_poison_dir(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


def test_writer_refuses_over_budget_poisons(tmp_path):
    x_clean, x, y = _data()
    x = x.copy()
    x[2, 0, 0, 0] = 255 if x_clean[2, 0, 0, 0] < 128 else 0
    with pytest.raises(UserInputError, match="worst is image 2"):
        pd.write_poison_dir(tmp_path / "out", x=x, y=y, source_indices=np.arange(6), x_clean=x_clean,
                            manifest={"eps": 8 / 255, "norm": "linf"})
    assert not (tmp_path / "out").exists()


def test_moved_functions_stay_importable_from_poisondir():
    from ntga.poisondir import check_budget, perturbation_norms

    assert check_budget is budget.check_budget and perturbation_norms is pixels.perturbation_norms
    assert not hasattr(pd, "quantize")  # replaced by ntga.pixels.quantize_to_budget
