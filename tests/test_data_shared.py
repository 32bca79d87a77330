"""The real datasets in ../shared/data: counts, shapes, classes, cache round trip."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ntga.data import load_dataset, load_dataset_info, make_split

pytestmark = pytest.mark.shared_data

MNIST_TRAIN_PER_CLASS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def test_mnist(shared_data, tmp_path):
    ds = load_dataset(f"idx:{shared_data / 'mnist'}", cache_dir=tmp_path)
    assert ds.x_train.shape == (60_000, 28, 28, 1) and ds.x_test.shape == (10_000, 28, 28, 1)
    assert ds.class_names == tuple("0123456789")
    assert np.bincount(ds.y_train).tolist() == MNIST_TRAIN_PER_CLASS
    assert np.bincount(ds.y_test).sum() == 10_000 and ds.x_train.max() == 255
    # Pinned: the hash covers only the four files' bytes and the loader version,
    # so it is the same on every machine; a change here means a loader change.
    assert ds.content_hash == "7e162264e62679ec51be1cb49c30076ff3c7266101fcf7c002b8923cb9fc7856"
    s = make_split(ds)
    assert (len(s.train_idx), len(s.target_idx), len(s.test_idx)) == (
        50_000,
        10_000,
        10_000,
    )  # as the reference


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    # Module scope (decode once), so the function-scoped shared_data fixture is
    # not available here; same location rule as tests/conftest.py.
    shared = Path(os.environ.get("NTGA_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    archive = shared / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"needs {archive} (absent here)")
    cache = tmp_path_factory.mktemp("cifar-cache")
    return load_dataset_info(f"folder:{archive}", cache_dir=cache), cache, archive


@pytest.mark.slow
def test_cifar10_counts_shapes_classes(cifar):
    (ds, info), _, _ = cifar
    assert not info.from_cache
    assert ds.x_train.shape == (50_000, 32, 32, 3) and ds.x_test.shape == (10_000, 32, 32, 3)
    assert ds.class_names == CIFAR_CLASSES
    assert np.bincount(ds.y_train).tolist() == [5000] * 10 and np.bincount(ds.y_test).tolist() == [1000] * 10
    assert 80 < ds.x_train[:1000].mean() < 180  # decoded natural images, not blank


@pytest.mark.slow
def test_cifar10_warm_load_equals_cold(cifar):
    (cold, _), cache, archive = cifar
    warm, info = load_dataset_info(f"folder:{archive}", cache_dir=cache)
    assert info.from_cache and warm.content_hash == cold.content_hash
    for k in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(warm, k), getattr(cold, k)), k
