"""Every malformed source gives ONE UserInputError naming the file and the problem."""

from __future__ import annotations

import gzip
import io
import pathlib
import zipfile

import numpy as np
import pytest
from PIL import Image

from ntga.data import load_dataset, write_idx, write_image_folder, write_npz
from ntga.data.dataset import Arrays
from ntga.errors import UserInputError


def tiny(colour: bool = False) -> Arrays:
    rng = np.random.default_rng(0)
    c = 3 if colour else 1
    return Arrays(
        rng.integers(0, 256, (6, 8, 8, c), dtype=np.uint8),
        np.array([0, 1, 2, 0, 1, 2]),
        rng.integers(0, 256, (3, 8, 8, c), dtype=np.uint8),
        np.array([2, 1, 0]),
        ("ant", "bee", "cat"),
    )


def png(shape=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros(shape, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- specs and paths


@pytest.mark.parametrize("kind", ["idx", "folder", "npz"])
def test_missing_path(tmp_path, kind):
    with pytest.raises(UserInputError, match=rf"{kind}:.*nowhere.* does not exist"):
        load_dataset(f"{kind}:{tmp_path / 'nowhere'}")


@pytest.mark.parametrize("spec", ["mnist", "csv:/tmp/x.csv", "DIGITS", "", "digits:extra", "idx:"])
def test_unknown_or_incomplete_spec_lists_accepted_forms(spec):
    with pytest.raises(UserInputError) as err:
        load_dataset(spec)
    msg = str(err.value)
    if spec in ("digits:extra", "idx:"):
        assert "takes no argument" in msg or "names no path" in msg
    else:
        assert all(form in msg for form in ("digits", "idx:DIR", "folder:PATH", "npz:FILE", "tfds:NAME"))


def test_bare_path_spec_suggests_the_prefix(tmp_path):
    f = write_npz(tmp_path / "d.npz", tiny())
    with pytest.raises(UserInputError, match=r"did you mean npz:"):
        load_dataset(str(f))


# ---------------------------------------------------------------- idx


def _idx_dir(tmp_path, compress=True):
    return write_idx(tmp_path / "m", tiny(), compress=compress)


def test_idx_wrong_magic(tmp_path):
    d = _idx_dir(tmp_path, compress=False)
    f = d / "train-images-idx3-ubyte"
    f.write_bytes(b"\x00\x00\x08\x01" + f.read_bytes()[4:])
    with pytest.raises(
        UserInputError, match=r"train-images-idx3-ubyte: IDX magic number is 0x00000801, expected 0x00000803"
    ):
        load_dataset(f"idx:{d}")


def test_idx_image_label_count_mismatch(tmp_path):
    d = _idx_dir(tmp_path)
    (d / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + bytes([0, 1, 2, 0, 1]))
    )
    with pytest.raises(
        UserInputError,
        match=r"train-images-idx3-ubyte.gz has 6 images but train-labels-idx1-ubyte.gz has 5 labels",
    ):
        load_dataset(f"idx:{d}")


def test_idx_truncated_data_and_truncated_gzip(tmp_path):
    d = _idx_dir(tmp_path, compress=False)
    f = d / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(UserInputError, match=r"t10k-images-idx3-ubyte: header says 3x8x8 .* truncated"):
        load_dataset(f"idx:{d}")
    d = _idx_dir(tmp_path / "gz")
    g = d / "t10k-images-idx3-ubyte.gz"
    g.write_bytes(g.read_bytes()[:-12])
    with pytest.raises(UserInputError, match=r"t10k-images-idx3-ubyte.gz: cannot decompress"):
        load_dataset(f"idx:{d}")


def test_idx_missing_and_ambiguous_files(tmp_path):
    d = _idx_dir(tmp_path)
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserInputError, match=r"no test labels file .*t10k-labels-idx1-ubyte"):
        load_dataset(f"idx:{d}")
    d = _idx_dir(tmp_path / "two")
    (d / "train-images-idx3-ubyte").write_bytes(
        gzip.decompress((d / "train-images-idx3-ubyte.gz").read_bytes())
    )
    with pytest.raises(UserInputError, match=r"several train images files"):
        load_dataset(f"idx:{d}")


def test_idx_needs_a_directory(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserInputError, match="is not a directory"):
        load_dataset(f"idx:{f}")


# ---------------------------------------------------------------- npz


def test_npz_labels_out_of_range(tmp_path):
    a = tiny()
    f = tmp_path / "bad.npz"
    np.savez(
        f,
        x_train=a.x_train,
        y_train=np.array([0, 1, 2, 0, 1, 3]),
        x_test=a.x_test,
        y_test=a.y_test,
        class_names=np.array(["ant", "bee", "cat"]),
    )
    with pytest.raises(UserInputError, match=r"bad.npz.*train label 3 is out of range.*\[0, 3\)"):
        load_dataset(f"npz:{f}")
    np.savez(f, x_train=a.x_train, y_train=a.y_train, x_test=a.x_test, y_test=np.array([2, -1, 0]))
    with pytest.raises(UserInputError, match=r"bad.npz.*test label -1 is out of range"):
        load_dataset(f"npz:{f}")


def test_npz_object_arrays_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "UNPICKLED"

    class Trap:  # unpickling this object would create the marker file
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    a = tiny()
    f = tmp_path / "evil.npz"
    labels = np.empty(6, dtype=object)
    labels[:] = [Trap()] * 6
    np.savez(f, x_train=a.x_train, y_train=labels, x_test=a.x_test, y_test=a.y_test, allow_pickle=True)
    with pytest.raises(
        UserInputError, match=r"evil.npz: array 'y_train' holds Python objects .*refusing to unpickle"
    ):
        load_dataset(f"npz:{f}")
    assert not marker.exists()


def test_npz_missing_arrays_wrong_shapes_and_ranges(tmp_path):
    a = tiny()
    f = tmp_path / "m.npz"
    np.savez(f, x_train=a.x_train, y_train=a.y_train)
    with pytest.raises(UserInputError, match=r"m.npz: missing arrays \['x_test', 'y_test'\]"):
        load_dataset(f"npz:{f}")
    np.savez(
        f,
        x_train=a.x_train.transpose(0, 3, 1, 2).repeat(3, 1),
        y_train=a.y_train,
        x_test=a.x_test,
        y_test=a.y_test,
    )
    with pytest.raises(UserInputError, match=r"x_train has shape \(6, 3, 8, 8\).*channels-first"):
        load_dataset(f"npz:{f}")
    np.savez(f, x_train=a.x_train * 2.0, y_train=a.y_train, x_test=a.x_test, y_test=a.y_test)
    with pytest.raises(UserInputError, match=r"float x_train must lie in \[0, 1\]"):
        load_dataset(f"npz:{f}")
    np.savez(f, x_train=a.x_train, y_train=a.y_train[:5], x_test=a.x_test, y_test=a.y_test)
    with pytest.raises(UserInputError, match=r"6 train images but 5 train labels"):
        load_dataset(f"npz:{f}")


def test_npz_not_an_npz(tmp_path):
    f = tmp_path / "junk.npz"
    f.write_bytes(b"this is not numpy")
    with pytest.raises(UserInputError, match=r"junk.npz: cannot read as .npz"):
        load_dataset(f"npz:{f}")


# ---------------------------------------------------------------- folder


def test_folder_mixed_image_sizes(tmp_path):
    root = write_image_folder(tmp_path / "d", tiny())
    (root / "train" / "bee" / "00001.png").write_bytes(png((9, 8)))
    with pytest.raises(
        UserInputError, match=r"train/bee/00001.png in folder:.* is 8x9 .* all images must have one size"
    ):
        load_dataset(f"folder:{root}")


def test_folder_truncated_tar_gz(tmp_path):
    arc = write_image_folder(tmp_path / "d.tar.gz", tiny())
    data = arc.read_bytes()
    for cut in (len(data) // 2, len(data) - 4):  # mid-stream, and only the gzip trailer missing
        arc.write_bytes(data[:cut])
        with pytest.raises(
            UserInputError, match=r"d.tar.gz: cannot read the tar archive .*truncated or corrupt"
        ):
            load_dataset(f"folder:{arc}", use_cache=False)


def test_folder_truncated_zip(tmp_path):
    arc = write_image_folder(tmp_path / "d.zip", tiny())
    arc.write_bytes(arc.read_bytes()[: arc.stat().st_size // 2])
    with pytest.raises(
        UserInputError, match=r"d.zip: cannot read the zip archive \(BadZipFile.*\); it may be truncated"
    ):
        load_dataset(f"folder:{arc}")


def test_folder_corrupt_zip_member(tmp_path):
    arc = write_image_folder(tmp_path / "d.zip", tiny())
    data = bytearray(arc.read_bytes())
    i = data.index(b"IDAT")  # flip bytes inside the first stored PNG: its CRC check fails
    data[i + 8 : i + 12] = b"\xff\xff\xff\xff"
    arc.write_bytes(bytes(data))
    with pytest.raises(
        UserInputError, match=r"d.zip: cannot read the zip archive .*Bad CRC-32 for file 'test/ant/00002.png'"
    ):
        load_dataset(f"folder:{arc}")


def test_folder_empty_class_folder(tmp_path):
    root = write_image_folder(tmp_path / "d", tiny())
    for f in (root / "test" / "bee").iterdir():
        f.unlink()
    with pytest.raises(UserInputError, match=r"empty class folder test/bee"):
        load_dataset(f"folder:{root}")


def test_folder_empty_class_folder_in_zip(tmp_path):
    arc = write_image_folder(tmp_path / "d.zip", tiny())
    with zipfile.ZipFile(arc, "a") as zf:
        zf.writestr("train/dog/", b"")
        zf.writestr("test/dog/", b"")
    with pytest.raises(UserInputError, match=r"empty class folder train/dog"):
        load_dataset(f"folder:{arc}")


def test_folder_classes_differ_between_train_and_test(tmp_path):
    root = write_image_folder(tmp_path / "d", tiny())
    (root / "test" / "cat").rename(root / "test" / "cow")
    with pytest.raises(
        UserInputError, match=r"class folders differ.*only in train: \['cat'\]; only in test: \['cow'\]"
    ):
        load_dataset(f"folder:{root}")


def test_folder_non_image_file(tmp_path):
    root = write_image_folder(tmp_path / "d", tiny())
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(UserInputError, match=r"cannot decode train/cat/notes.txt in folder:.* as an image"):
        load_dataset(f"folder:{root}")


def test_folder_layout_errors(tmp_path):
    root = write_image_folder(tmp_path / "d", tiny())
    (root / "train" / "stray.png").write_bytes(png())
    with pytest.raises(UserInputError, match=r"train/stray.png .*file directly inside train/"):
        load_dataset(f"folder:{root}")
    root = write_image_folder(tmp_path / "e", tiny())
    (root / "train" / "cat" / "sub").mkdir()
    with pytest.raises(UserInputError, match=r"train/cat/sub .*nested folder"):
        load_dataset(f"folder:{root}")
    root = tmp_path / "f"
    (root / "images").mkdir(parents=True)
    with pytest.raises(
        UserInputError, match=r"no class folders under train/; expected train/<class>/<image>"
    ):
        load_dataset(f"folder:{root}")


def test_folder_train_test_both_wrapped_and_not(tmp_path):
    root = write_image_folder(tmp_path / "d", tiny())
    write_image_folder(root / "extra", tiny())
    with pytest.raises(UserInputError, match=r"both at the top level and inside 'extra'/"):
        load_dataset(f"folder:{root}")


def test_folder_path_is_not_an_archive(tmp_path):
    f = tmp_path / "images.csv"
    f.write_text("a,b\n")
    with pytest.raises(UserInputError, match=r"images.csv: not a directory, .zip or tarball"):
        load_dataset(f"folder:{f}")


def test_bad_source_is_not_cached(tmp_path):
    root = write_image_folder(tmp_path / "d", tiny())
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    cache = tmp_path / "cache"
    for _ in range(2):  # the same clear error both times, nothing written
        with pytest.raises(UserInputError, match="cannot decode"):
            load_dataset(f"folder:{root}", cache_dir=cache)
    assert not cache.exists() or not any(cache.iterdir())
