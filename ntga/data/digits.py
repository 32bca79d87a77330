"""``digits`` - the embedded default: UCI optical-recognition handwritten digits.

These are the 1,797 8x8 images bundled with scikit-learn (``load_digits``;
Alpaydin & Kaynak, UCI ML repository), 10 classes, pixel values 0..16. They
become uint8 with ``round(v * 255 / 16)`` (half rounds up, computed exactly in
integers), so 16 -> 255 and the 17 grey levels stay distinct.

Train/test split, fixed as part of the dataset definition: within each class,
in the file's order, every 4th image (ranks 3, 7, 11, ...) goes to test,
i.e. ``floor(count / 4)`` per class, 445 test and 1,352 train images.
Why this rule: it is exactly stratified (same class balance in both splits);
it interleaves so both splits span the whole file (the file is grouped
roughly by writer, so taking the last quarter would make the test set a
different set of writers); and it uses no random generator, so it cannot
change with a numpy version or platform.

Speed: importing scikit-learn takes seconds, so the bundled table
(``sklearn/datasets/data/digits.csv.gz``) is read directly when it is where
scikit-learn keeps it, without importing sklearn; otherwise ``load_digits`` is
used. The content hash covers the decoded arrays, so both paths agree.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from ntga.data.dataset import Arrays, source_hasher, update_with_arrays
from ntga.errors import UserInputError

VERSION = 1
TEST_EVERY = 4  # every 4th image of each class is a test image (25%)


def _bundled_table() -> Path | None:
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


def raw_digits(prefer_direct: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Pixel values 0..16 as int64 ``[1797, 64]`` and labels int64 ``[1797]``, in the file's order."""
    table = _bundled_table() if prefer_direct else None
    if table is not None:
        with gzip.open(table, "rt") as f:
            data = np.loadtxt(f, delimiter=",", dtype=np.int64)
        if data.shape == (1797, 65):
            return data[:, :-1], data[:, -1]
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserInputError("the 'digits' dataset needs scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    return d.data.astype(np.int64), d.target.astype(np.int64)


def split_mask(labels: np.ndarray) -> np.ndarray:
    """bool ``[n]``: True for test images (rank within its class % 4 == 3)."""
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels)
    rank = np.empty_like(labels)
    rank[order] = np.arange(len(labels)) - np.repeat(np.cumsum(counts) - counts, counts)
    return rank % TEST_EVERY == TEST_EVERY - 1


def load(prefer_direct: bool = True) -> tuple[Arrays, str]:
    """The digits arrays and their content hash."""
    values, labels = raw_digits(prefer_direct)
    images = ((values * 255 + 8) // 16).astype(np.uint8).reshape(-1, 8, 8, 1)
    test = split_mask(labels)
    arrays = Arrays(
        x_train=images[~test],
        y_train=labels[~test],
        x_test=images[test],
        y_test=labels[test],
        class_names=tuple(str(i) for i in range(10)),
    )
    h = source_hasher("digits", VERSION)
    update_with_arrays(h, [(k, v) for k, v in arrays._asdict().items() if k != "class_names"])
    return arrays, h.hexdigest()
