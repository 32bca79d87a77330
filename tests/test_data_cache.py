"""The decoded-array cache: hits, invalidation by content, corruption recovery, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ntga.data import load_dataset, load_dataset_info, write_idx, write_image_folder
from ntga.data.cache import resolve_cache_dir
from ntga.data.dataset import Arrays


def tiny(seed: int = 0) -> Arrays:
    rng = np.random.default_rng(seed)
    return Arrays(
        rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8),
        np.array([0, 1, 2, 0, 1, 2]),
        rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8),
        np.array([2, 1, 0]),
        ("ant", "bee", "cat"),
    )


def _same(d1, d2):
    for k in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(d1, k), getattr(d2, k))
    assert d1.class_names == d2.class_names and d1.content_hash == d2.content_hash


@pytest.mark.parametrize("container", ["dir", "d.zip", "d.tar.gz"])
def test_second_load_is_served_from_cache(tmp_path, container):
    spec = f"folder:{write_image_folder(tmp_path / container, tiny())}"
    cold, info1 = load_dataset_info(spec, cache_dir=tmp_path / "c")
    warm, info2 = load_dataset_info(spec, cache_dir=tmp_path / "c")
    assert not info1.from_cache and info2.from_cache
    assert info1.cache_file == info2.cache_file and info2.cache_file.parent == tmp_path / "c"
    _same(cold, warm)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [info1.cache_file.name]  # no temp files left


def test_changed_source_gets_a_new_key_never_a_stale_entry(tmp_path):
    root = write_image_folder(tmp_path / "d", tiny())
    before = load_dataset(f"folder:{root}", cache_dir=tmp_path / "c")
    Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(root / "train" / "ant" / "00000.png")
    after, info = load_dataset_info(f"folder:{root}", cache_dir=tmp_path / "c")
    assert not info.from_cache and after.content_hash != before.content_hash
    assert (after.x_train[0] == 9).all() and not (before.x_train[0] == 9).all()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong-hash"])
def test_corrupt_cache_is_discarded_and_rebuilt(tmp_path, damage):
    spec = f"folder:{write_image_folder(tmp_path / 'd.zip', tiny())}"
    ref, info = load_dataset_info(spec, cache_dir=tmp_path / "c")
    f = info.cache_file
    if damage == "garbage":
        f.write_bytes(b"not a zip at all")
    elif damage == "truncated":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    else:  # a well-formed file holding another source's arrays under this name
        other = load_dataset_info(
            f"folder:{write_image_folder(tmp_path / 'e.zip', tiny(1))}", cache_dir=tmp_path / "c"
        )[1]
        other.cache_file.replace(f)
    with pytest.warns(RuntimeWarning, match="discarding unreadable dataset cache"):
        rebuilt, info2 = load_dataset_info(spec, cache_dir=tmp_path / "c")
    assert not info2.from_cache
    _same(ref, rebuilt)
    assert load_dataset_info(spec, cache_dir=tmp_path / "c")[1].from_cache  # the rebuilt file is good


def test_use_cache_false_neither_reads_nor_writes(tmp_path):
    spec = f"folder:{write_image_folder(tmp_path / 'd', tiny())}"
    _, info = load_dataset_info(spec, cache_dir=tmp_path / "c", use_cache=False)
    assert info.cache_file is None and not (tmp_path / "c").exists()


def test_unwritable_cache_warns_and_still_loads(tmp_path):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    spec = f"folder:{write_image_folder(tmp_path / 'd', tiny())}"
    with pytest.warns(RuntimeWarning, match="could not write dataset cache"):
        ds, info = load_dataset_info(spec, cache_dir=blocker / "sub")
    assert ds.x_train.shape == (6, 8, 8, 3) and info.cache_file is None


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("NTGA_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("NTGA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir() == tmp_path / "xdg" / "ntga"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_cache_dir() == tmp_path / "home" / ".cache" / "ntga"


def test_env_cache_dir_is_used_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("NTGA_CACHE_DIR", str(tmp_path / "env"))
    _, info = load_dataset_info(f"folder:{write_image_folder(tmp_path / 'd', tiny())}")
    assert info.cache_file.parent == tmp_path / "env"


def test_only_slow_sources_are_cached(tmp_path):
    a = tiny()
    grey = Arrays(a.x_train[..., :1], a.y_train, a.x_test[..., :1], a.y_test, ("0", "1", "2"))
    gz = load_dataset_info(f"idx:{write_idx(tmp_path / 'gz', grey)}", cache_dir=tmp_path / "c")[1]
    raw = load_dataset_info(
        f"idx:{write_idx(tmp_path / 'raw', grey, compress=False)}", cache_dir=tmp_path / "c"
    )[1]
    digits = load_dataset_info("digits", cache_dir=tmp_path / "c")[1]
    assert gz.cache_file is not None and raw.cache_file is None and digits.cache_file is None
