"""The in-memory dataset every loader produces, and the checks it must pass.

A :class:`Dataset` is plain numpy: uint8 images ``[N, H, W, C]`` (C = 1 or 3,
pixel values 0..255) and int64 labels in ``[0, num_classes)``, for a train and
a test split, plus the spec it came from and a content hash that identifies the
source bytes (so a poison manifest can say exactly what it was made from).

The arrays are stored as read-only views: a dataset is shared by everything
that uses it, so an in-place edit by one consumer would silently corrupt the
others. Take a copy (``np.array(ds.x_train)``) to modify pixels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np

from ntga.errors import UserInputError


class Arrays(NamedTuple):
    """What a loader decodes; :func:`check_arrays` validates it before it becomes a Dataset."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]


def _read_only(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.setflags(write=False)
    return view


def check_arrays(arrays: Arrays, where: str) -> Arrays:
    """Validates shapes, dtypes and label ranges; returns int64 labels and a tuple of names.

    Args:
      arrays: decoded train/test images ``[N, H, W, C]`` uint8 and labels ``[N]``.
      where: the file or spec to name in error messages.

    Raises:
      UserInputError: naming ``where`` and the first problem found.
    """
    names = tuple(str(n) for n in arrays.class_names)
    if not names:
        raise UserInputError(f"{where}: the dataset has no classes")
    if len(set(names)) != len(names):
        raise UserInputError(f"{where}: class names must be unique, got {list(names)}")
    out = {}
    for split in ("train", "test"):
        x = np.asarray(getattr(arrays, f"x_{split}"))
        y = np.asarray(getattr(arrays, f"y_{split}"))
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise UserInputError(
                f"{where}: x_{split} must be uint8 images [N, H, W, C] with C = 1 or 3, "
                f"got {x.dtype} array of shape {x.shape}"
            )
        if x.shape[0] == 0:
            raise UserInputError(f"{where}: the {split} split has no images")
        if x.shape[1] == 0 or x.shape[2] == 0:
            raise UserInputError(f"{where}: the {split} images are {x.shape[2]}x{x.shape[1]} pixels (width x "
                                 "height); images need at least one pixel")
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise UserInputError(f"{where}: y_{split} must be a 1-D integer array, got {y.dtype} {y.shape}")
        if y.shape[0] != x.shape[0]:
            raise UserInputError(
                f"{where}: {x.shape[0]} {split} images but {y.shape[0]} {split} labels (counts must match)"
            )
        if y.size and (y.min() < 0 or y.max() >= len(names)):
            bad = int(y.min()) if y.min() < 0 else int(y.max())
            raise UserInputError(
                f"{where}: {split} label {bad} is out of range; labels must lie in [0, {len(names)}) "
                f"for {len(names)} classes"
            )
        out[f"x_{split}"] = x
        out[f"y_{split}"] = y.astype(np.int64, copy=False)
    if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
        raise UserInputError(
            f"{where}: train images are {_hwc(out['x_train'])} but test images are {_hwc(out['x_test'])}"
        )
    return Arrays(class_names=names, **out)


def _hwc(x: np.ndarray) -> str:
    return "x".join(str(d) for d in x.shape[1:])


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A labelled image dataset with a train and a test split.

    Attributes:
      spec: the ``--dataset`` spec it came from, e.g. ``"idx:/path/mnist"``.
      x_train: uint8 ``[N, H, W, C]`` training images (C = 1 or 3), read-only.
      y_train: int64 ``[N]`` labels in ``[0, num_classes)``.
      x_test: uint8 ``[M, H, W, C]`` test images, read-only.
      y_test: int64 ``[M]`` labels.
      class_names: one name per class, index = label.
      content_hash: sha256 hex of the source content plus the loader version;
        the same files give the same hash on any machine and from any path.

    Equality is identity (arrays have no useful ``==`` for a dataclass).
    """

    spec: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    content_hash: str

    def __post_init__(self):
        arrays = check_arrays(
            Arrays(self.x_train, self.y_train, self.x_test, self.y_test, tuple(self.class_names)),
            self.spec,
        )
        for name, value in arrays._asdict().items():
            object.__setattr__(self, name, value if name == "class_names" else _read_only(value))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of every image."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (
            f"Dataset(spec={self.spec!r}, train={len(self.x_train)}x{_hwc(self.x_train)}, "
            f"test={len(self.x_test)}x{_hwc(self.x_test)}, classes={self.num_classes}, "
            f"content_hash={self.content_hash[:12]}...)"
        )


def source_hasher(kind: str, version: int) -> "hashlib._Hash":
    """A sha256 pre-seeded with the loader kind and version, so a loader change changes every key."""
    h = hashlib.sha256()
    h.update(f"ntga.data/{kind}/v{version}\0".encode())
    return h


def update_with_file(h, path: Path, chunk: int = 1 << 20) -> None:
    """Feeds a file's size and bytes to ``h`` (size first, so concatenations cannot collide)."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        h.update(f.tell().to_bytes(8, "little"))
        f.seek(0)
        while block := f.read(chunk):
            h.update(block)


def update_with_arrays(h, named: Iterable[tuple[str, np.ndarray]]) -> None:
    """Feeds named arrays (name, dtype, shape, C-order bytes) to ``h``."""
    for name, a in named:
        a = np.ascontiguousarray(a)
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.reshape(-1).view(np.uint8))  # a byte view: no copy of large image arrays
