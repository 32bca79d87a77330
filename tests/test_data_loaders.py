"""Loaders: every spec form round-trips tiny arrays exactly; digits is as documented."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest
from PIL import Image

from ntga.data import (
    Dataset,
    digits,
    load_dataset,
    load_dataset_info,
    write_idx,
    write_image_folder,
    write_npz,
)
from ntga.data.dataset import Arrays
from ntga.data.images import _jpeg_frame, decode_image
from ntga.errors import UserInputError


def tiny(colour: bool = False, seed: int = 0) -> Arrays:
    """6 train + 3 test images of 8x8, three classes in sorted-name order."""
    rng = np.random.default_rng(seed)
    c = 3 if colour else 1
    return Arrays(
        x_train=rng.integers(0, 256, (6, 8, 8, c), dtype=np.uint8),
        y_train=np.array([0, 1, 2, 0, 1, 2]),
        x_test=rng.integers(0, 256, (3, 8, 8, c), dtype=np.uint8),
        y_test=np.array([2, 1, 0]),
        class_names=("ant", "bee", "cat"),
    )


def in_class_order(a: Arrays) -> Arrays:
    """What folder loaders return: examples grouped by class (stable within a class)."""
    tr, te = np.argsort(a.y_train, kind="stable"), np.argsort(a.y_test, kind="stable")
    return Arrays(a.x_train[tr], a.y_train[tr], a.x_test[te], a.y_test[te], a.class_names)


def assert_same(ds: Dataset, a: Arrays):
    for k in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(ds, k), getattr(a, k), err_msg=k)
        assert getattr(ds, k).dtype == (np.uint8 if k.startswith("x") else np.int64)
    assert ds.class_names == tuple(a.class_names)


# ---------------------------------------------------------------- digits


def test_digits_shapes_split_and_pixels():
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1352, 8, 8, 1) and ds.x_test.shape == (445, 8, 8, 1)
    assert ds.image_shape == (8, 8, 1) and ds.num_classes == 10
    assert ds.class_names == tuple("0123456789")
    per_class = np.bincount(np.concatenate([ds.y_train, ds.y_test]))
    np.testing.assert_array_equal(np.bincount(ds.y_test), per_class // 4)  # every 4th of each class
    levels = {(v * 255 + 8) // 16 for v in range(17)}
    assert set(np.unique(ds.x_train).tolist()) <= levels and ds.x_train.max() == 255
    assert len(ds.content_hash) == 64 and ds.content_hash == load_dataset("digits").content_hash


def test_digits_direct_table_matches_sklearn_api():
    direct, h1 = digits.load(prefer_direct=True)
    via_api, h2 = digits.load(prefer_direct=False)
    assert h1 == h2
    for a, b in zip(direct[:4], via_api[:4], strict=True):
        np.testing.assert_array_equal(a, b)


def test_dataset_arrays_are_read_only_and_repr_is_short():
    ds = load_dataset("digits")
    with pytest.raises(ValueError):
        ds.x_train[0, 0, 0, 0] = 1
    assert "digits" in repr(ds) and len(repr(ds)) < 200


def test_dataset_rejects_inconsistent_arrays():
    a = tiny()
    with pytest.raises(UserInputError, match="6 train images but 5 train labels"):
        Dataset("synthetic", a.x_train, a.y_train[:5], a.x_test, a.y_test, a.class_names, "0" * 64)
    with pytest.raises(UserInputError, match="uint8"):
        Dataset("synthetic", a.x_train.astype(np.float32), a.y_train, a.x_test, a.y_test, a.class_names, "0")


# ---------------------------------------------------------------- idx


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    a = tiny()
    write_idx(tmp_path / "mnist", a, compress=compress)
    ds = load_dataset(f"idx:{tmp_path / 'mnist'}")
    assert_same(ds, Arrays(*a[:4], class_names=("0", "1", "2")))


def test_idx_hash_depends_on_content_not_location(tmp_path):
    write_idx(tmp_path / "a", tiny())
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    write_idx(tmp_path / "c", tiny(seed=1))
    h = [load_dataset(f"idx:{tmp_path / d}").content_hash for d in "abc"]
    assert h[0] == h[1] != h[2]


def test_idx_accepts_other_dataset_prefixes_and_dot_names(tmp_path):
    a = tiny()
    write_idx(tmp_path, a, compress=False)
    for p in tmp_path.iterdir():  # Kaggle-style "train-images.idx3-ubyte", EMNIST-style prefixes
        p.rename(tmp_path / ("emnist-x-" + p.name.replace("-idx", ".idx")))
    assert_same(load_dataset(f"idx:{tmp_path}"), Arrays(*a[:4], class_names=("0", "1", "2")))


# ---------------------------------------------------------------- npz


def test_npz_round_trip_uint8_with_names(tmp_path):
    a = tiny(colour=True)
    assert_same(load_dataset(f"npz:{write_npz(tmp_path / 'd.npz', a)}"), a)


def test_npz_float_and_3d_images_and_default_names(tmp_path):
    a = tiny()
    f = tmp_path / "f.npz"
    np.savez(
        f,
        x_train=a.x_train[..., 0] / 255.0,
        y_train=a.y_train.astype(np.int32),
        x_test=(a.x_test / 255.0).astype(np.float32),
        y_test=a.y_test.astype(np.uint8),
    )
    ds = load_dataset(f"npz:{f}")
    assert_same(ds, Arrays(*a[:4], class_names=("0", "1", "2")))


def test_npz_float_conversion_rounds(tmp_path):
    a = tiny()
    x = np.zeros((6, 8, 8, 1))
    x[0, 0, 0, 0], x[0, 0, 1, 0], x[0, 0, 2, 0] = 0.6 / 255, 0.4 / 255, 1.0
    f = tmp_path / "r.npz"
    np.savez(f, x_train=x, y_train=a.y_train, x_test=a.x_test, y_test=a.y_test)
    assert load_dataset(f"npz:{f}").x_train[0, 0, :3, 0].tolist() == [1, 0, 255]


# ---------------------------------------------------------------- folder


@pytest.mark.parametrize("container", ["dir", "d.zip", "d.tar.gz", "d.tgz"])
@pytest.mark.parametrize("wrapper", [None, "mydata"])
def test_folder_round_trip(tmp_path, container, wrapper):
    a = tiny(colour=True)
    path = write_image_folder(tmp_path / container, a, wrapper=wrapper)
    assert_same(load_dataset(f"folder:{path}"), in_class_order(a))


def test_folder_same_hash_for_copied_directory_and_same_arrays_across_containers(tmp_path):
    a = tiny()
    write_image_folder(tmp_path / "one", a)
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    d1, d2 = load_dataset(f"folder:{tmp_path / 'one'}"), load_dataset(f"folder:{tmp_path / 'two'}")
    z = load_dataset(f"folder:{write_image_folder(tmp_path / 'z.zip', a)}")
    assert d1.content_hash == d2.content_hash != z.content_hash
    np.testing.assert_array_equal(d1.x_train, z.x_train)


def test_folder_skips_hidden_and_os_files_and_stray_top_level_files(tmp_path):
    a = tiny()
    root = write_image_folder(tmp_path / "d", a)
    (root / "train" / "ant" / ".DS_Store").write_bytes(b"\0junk")
    (root / "train" / "ant" / "Thumbs.db").write_bytes(b"junk")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    (root / "README.txt").write_text("about this data")
    assert_same(load_dataset(f"folder:{root}"), in_class_order(a))


def test_folder_zip_with_macos_metadata(tmp_path):
    a = tiny()
    z = write_image_folder(tmp_path / "d.zip", a)
    with zipfile.ZipFile(z, "a") as zf:
        zf.writestr("__MACOSX/train/ant/._00000.png", b"\0\5\26\7 resource fork")
    assert_same(load_dataset(f"folder:{z}"), in_class_order(a))


def test_folder_grey_and_colour_mixed_promotes_grey_to_rgb(tmp_path):
    a = tiny(colour=True)
    root = write_image_folder(tmp_path / "d", a)
    grey = np.full((8, 8), 77, np.uint8)
    Image.fromarray(grey).save(root / "train" / "ant" / "00000.png")  # replaces a colour image
    ds = load_dataset(f"folder:{root}")
    assert ds.image_shape == (8, 8, 3)
    np.testing.assert_array_equal(ds.x_train[0], np.full((8, 8, 3), 77, np.uint8))


@pytest.mark.parametrize(
    "mode, expect",
    [
        ("RGBA", lambda rgba: rgba[..., :3]),  # alpha dropped, colours kept
        ("LA", lambda la: la[..., :1]),
        ("P", None),  # palette: compared with Pillow's own RGB conversion
        ("1", None),
        ("I;16", None),
    ],
)
def test_mode_conversions(mode, expect):
    rng = np.random.default_rng(0)
    if mode in ("RGBA", "LA"):
        px = rng.integers(0, 256, (5, 4, len(mode)), dtype=np.uint8)
        im = Image.fromarray(px, mode)
        out = decode_image(_png(im), "x.png")
        np.testing.assert_array_equal(out if out.ndim == 3 else out[..., None], expect(px))
    elif mode == "P":
        im = Image.fromarray(rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)).quantize(8)
        np.testing.assert_array_equal(decode_image(_png(im), "x.png"), np.asarray(im.convert("RGB")))
    elif mode == "1":
        im = Image.fromarray(rng.integers(0, 2, (5, 4), dtype=np.uint8) * 255).convert("1")
        out = decode_image(_png(im), "x.png")
        assert out.shape == (5, 4) and set(np.unique(out)) <= {0, 255}
    else:
        v = np.array([[0, 257, 32896, 65535]], np.uint16)
        out = decode_image(_png(Image.fromarray(v)), "x.png")
        assert out.tolist() == [[0, 1, 128, 255]]


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _segments_dht_first(data: bytes) -> bytes:
    """The same JPEG with its Huffman tables (DHT) moved before the frame header (legal order)."""
    segs, i = [], 2
    while data[i + 1] != 0xDA:  # up to the start of scan
        n = int.from_bytes(data[i + 2 : i + 4], "big")
        segs.append(data[i : i + 2 + n])
        i += 2 + n
    dht = [s for s in segs if s[1] == 0xC4]
    return data[:2] + b"".join(dht + [s for s in segs if s[1] != 0xC4]) + data[i:]


@pytest.mark.parametrize("kind", ["baseline-rgb", "progressive-rgb", "grey", "dht-first", "cmyk"])
def test_jpeg_fast_path_matches_pillow_open(kind):
    rng = np.random.default_rng(1)
    px = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    im = Image.fromarray(px)
    im = {"grey": im.convert("L"), "cmyk": im.convert("CMYK")}.get(kind, im)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80, progressive=kind == "progressive-rgb")
    data = buf.getvalue()
    if kind == "dht-first":
        data = _segments_dht_first(data)
        assert data.index(b"\xff\xc4") < data.index(b"\xff\xc0")
    assert (_jpeg_frame(data) is None) == (kind == "cmyk")  # CMYK goes through Image.open
    with Image.open(io.BytesIO(data)) as ref:
        ref = ref.convert("RGB") if ref.mode == "CMYK" else ref
        np.testing.assert_array_equal(decode_image(data, "x.jpg"), np.asarray(ref))


def test_jpeg_fast_path_falls_back_on_corrupt_data():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="JPEG")
    with pytest.raises(UserInputError, match="cannot decode bad.jpg"):
        decode_image(buf.getvalue()[: len(buf.getvalue()) // 2], "bad.jpg")


# ---------------------------------------------------------------- tfds


def test_tfds_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(UserInputError, match=r"pip install -e '\.\[tfds\]'"):
        load_dataset("tfds:mnist")


def _fake_tfds(fail: Exception | None = None) -> types.ModuleType:
    a = tiny(colour=True)
    label = types.SimpleNamespace(names=list(a.class_names))

    class Builder:
        info = types.SimpleNamespace(features={"image": None, "label": label})

        def download_and_prepare(self):
            if fail is not None:
                raise fail

        def as_dataset(self, split, batch_size, as_supervised):
            assert split == ["train", "test"] and batch_size == -1 and as_supervised
            return [(a.x_train, a.y_train), (a.x_test, a.y_test)]

    mod = types.ModuleType("tensorflow_datasets")
    mod.builder = lambda name: Builder()
    mod.as_numpy = lambda x: x
    return mod


def test_tfds_arrays_become_a_dataset(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", _fake_tfds())
    ds = load_dataset("tfds:fake")
    assert_same(ds, tiny(colour=True))
    assert ds.content_hash != load_dataset_info("tfds:fake2")[0].content_hash  # name is hashed


def test_tfds_offline_download_failure_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", _fake_tfds(ConnectionError("no route to host")))
    with pytest.raises(UserInputError, match=r"tfds:cifar10: could not load .*no route to host.*offline"):
        load_dataset("tfds:cifar10")


def test_core_never_imports_tensorflow_or_sklearn():
    code = (
        "import sys; from ntga.data import load_dataset, make_split; "
        "make_split(load_dataset('digits'), train_size=10); "
        "bad = [m for m in ('tensorflow', 'tensorflow_datasets', 'sklearn') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=_repo())
    assert r.returncode == 0, r.stdout + r.stderr


def _repo():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]
