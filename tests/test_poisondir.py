"""Tests for the poison directory format: round trip, tamper detection, budget checks, export."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ntga import poisondir as pd
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
        sha = pd._sha256(path / "y_train.npy")
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


# ----------------------------------------------------------------------------- budget


def test_check_budget_linf_exact_and_over():
    clean = np.full((4, 8, 8, 3), 100, np.uint8)
    poison = clean.copy()
    poison[:, 0, 0, 0] = 108  # exactly 8/255 after uint8 rounding
    poison[1, 3, 3, 1] = 92
    pd.check_budget(clean, poison, 8 / 255, "linf")
    pd.check_budget(clean / 255.0, poison / 255.0, 8 / 255, "linf")  # float inputs too
    poison[3, 5, 5, 2] = 109
    with pytest.raises(UserInputError, match=r"1 of 4 images exceed the linf budget.*worst is image 3 .*norm 0.0352941"):
        pd.check_budget(clean, poison, 8 / 255, "linf")


def test_check_budget_l2_exact_and_over():
    clean = np.full((3, 8, 8, 1), 50, np.uint8)
    poison = clean.copy()
    poison[0, :2, :2, 0] = 53  # four pixels of 3 levels: l2 = sqrt(4 * 9) / 255 = 6 / 255
    pd.check_budget(clean, poison, 6 / 255, "l2")
    with pytest.raises(UserInputError, match="worst is image 0 with l2 norm 0.0235294"):
        pd.check_budget(clean, poison, 5.99 / 255, "l2")
    np.testing.assert_allclose(pd.perturbation_norms(clean, poison, "l2"), [6 / 255, 0, 0])


def test_check_budget_refuses_bad_arguments():
    x = np.zeros((2, 4, 4, 1), np.uint8)
    with pytest.raises(UserInputError, match="unknown norm 'l1'; accepted: linf, l2"):
        pd.check_budget(x, x, 0.1, "l1")
    with pytest.raises(UserInputError, match="eps must be a finite number"):
        pd.check_budget(x, x, -1.0, "linf")
    with pytest.raises(UserInputError, match=r"must lie in \[0, 1\]"):
        pd.check_budget(x, np.full(x.shape, 1.5), 0.1, "linf")
    with pytest.raises(UserInputError, match="same shape"):
        pd.check_budget(x, x[:1], 0.1, "linf")


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), norm=st.sampled_from(["linf", "l2"]), eps_levels=st.floats(0.0, 80.0))
def test_quantize_stays_within_budget(seed, norm, eps_levels):
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 256, (4, 5, 5, 1), dtype=np.uint8)
    eps = eps_levels / 255
    direction = rng.normal(size=clean.shape)
    if norm == "linf":
        delta = eps * np.sign(direction)
    else:
        delta = eps * direction / np.linalg.norm(direction.reshape(4, -1), axis=1)[:, None, None, None]
    poison = np.clip(clean / 255.0 + delta, 0.0, 1.0)  # exactly at the budget before rounding
    q = pd.quantize(clean, poison, eps, norm)
    assert q.dtype == np.uint8
    pd.check_budget(clean, q, eps, norm)
    assert np.all(np.abs(q.astype(int) - np.round(poison * 255)) <= 1)


def test_quantize_linf_at_half_level():
    clean = np.full((1, 2, 2, 1), 101, np.uint8)
    poison = clean / 255.0 + 0.3  # 76.5 levels: nearest rounding gives 178, i.e. 77 levels > eps
    assert np.all(np.round(poison * 255) == 178)
    q = pd.quantize(clean, poison, 0.3, "linf")
    assert np.all(q == 177)


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize("c", [1, 3])
def test_export_round_trips_through_png(tmp_path, c):
    _, x, y = _write(tmp_path / "p", c=c)
    poisons = pd.read_poison_dir(tmp_path / "p")
    x_test, y_test = x[:3][::-1].copy(), np.array([2, 0, 2])
    dest = pd.export_image_folder(poisons, tmp_path / "export", class_names=CLASSES, x_test=x_test, y_test=y_test)
    for img, label, index in zip(x, y, poisons.source_indices):
        with Image.open(dest / "train" / CLASSES[label] / f"{index:06d}.png") as im:
            assert im.mode == ("L" if c == 1 else "RGB")
            np.testing.assert_array_equal(np.asarray(im).reshape(img.shape), img)
    for i, (img, label) in enumerate(zip(x_test, y_test)):
        with Image.open(dest / "test" / CLASSES[label] / f"{i:06d}.png") as im:
            np.testing.assert_array_equal(np.asarray(im).reshape(img.shape), img)
    assert sum(1 for _ in (dest / "train").rglob("*.png")) == len(x)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial dir left


def test_export_refuses_non_empty_dest_and_bad_names(tmp_path):
    _write(tmp_path / "p")
    poisons = pd.read_poison_dir(tmp_path / "p")
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "x").write_text("")
    with pytest.raises(UserInputError, match="not an empty directory"):
        pd.export_image_folder(poisons, tmp_path / "dest", class_names=CLASSES)
    with pytest.raises(UserInputError, match="cannot be folder names"):
        pd.export_image_folder(poisons, tmp_path / "d2", class_names=["a", "b/c", "d"])
    with pytest.raises(UserInputError, match="class_names has 1 names"):
        pd.export_image_folder(poisons, tmp_path / "d2", class_names=["a"])
    assert not (tmp_path / "d2").exists()
