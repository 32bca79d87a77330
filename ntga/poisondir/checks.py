"""Validation shared by the poison directory's writer and reader: index arrays, images,
labels, JSON-safe manifest values, library versions and file digests."""

from __future__ import annotations

import hashlib
import math
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ntga.errors import UserInputError


def index_array(a: Any, name: str, length: int | None = None) -> np.ndarray:
    """Integer 1-D array of unique non-negative values -> int64 (or UserInputError)."""
    a = np.asarray(a)
    if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) and a.dtype != np.bool_):
        raise UserInputError(f"{name} must be a 1-D integer array, got dtype {a.dtype} and shape {a.shape}")
    if length is not None and a.shape[0] != length:
        raise UserInputError(f"{name} has {a.shape[0]} entries but there are {length} images")
    if a.size and a.min() < 0:
        raise UserInputError(f"{name} must be >= 0, found {a.min()} at position {int(np.argmin(a))}")
    a = a.astype(np.int64)
    uniq, counts = np.unique(a, return_counts=True)
    if np.any(counts > 1):
        raise UserInputError(f"{name} must be unique, but {int(uniq[np.argmax(counts > 1)])} appears more than once")
    return a


def checked_positions(a: Any, n: int, name: str = "protected_positions") -> np.ndarray:
    """Unique row numbers in [0, n) -> int64 (or UserInputError)."""
    a = index_array(a, name)
    if a.size and a.max() >= n:
        raise UserInputError(f"{name} has position {a.max()} but there are only {n} images")
    return a


def check_images(x: Any, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise UserInputError(f"{name} must be uint8 (round within the budget with ntga.pixels.quantize_to_budget), got {x.dtype}")
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise UserInputError(f"{name} must have shape [N, H, W, C] with C in (1, 3), got {x.shape}")
    return x


def check_labels(y: Any, n: int, num_classes: int | None, name: str = "y") -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) and y.dtype != np.bool_):
        raise UserInputError(f"{name} must be a 1-D integer array, got dtype {y.dtype} and shape {y.shape}")
    if y.shape[0] != n:
        raise UserInputError(f"{name} has {y.shape[0]} labels but there are {n} images")
    if y.size and y.min() < 0:
        raise UserInputError(f"{name} must be >= 0, found {y.min()}")
    if y.size and int(y.max()) > np.iinfo(np.int64).max:
        raise UserInputError(f"{name} has label {int(y.max())}, too large for a class index (int64)")
    if num_classes is not None and y.size and y.max() >= num_classes:
        raise UserInputError(f"{name} has label {y.max()} but there are only {num_classes} class names")
    return y.astype(np.int64)


def jsonable(value: Any, where: str) -> Any:
    """Converts numpy scalars/arrays, tuples and paths to JSON types; refuses NaN/inf and unknown types."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise UserInputError(f"manifest key {where}.{k!r} must be a string (JSON would silently convert it)")
            out[k] = jsonable(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), where)
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        if not math.isfinite(float(value)):
            raise UserInputError(f"manifest value {where} is {float(value)}; only finite numbers can be recorded")
        return float(value)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    raise UserInputError(f"manifest value {where} has type {type(value).__name__}; use str, number, bool, None, list or dict")


def library_versions() -> dict[str, str]:
    # Distribution metadata only: importing jax just to record its version would cost seconds.
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for dist, key in (("jax", "jax"), ("jaxlib", "jaxlib"), ("flax", "flax"), ("ntga-jax", "ntga"), ("pillow", "pillow")):
        try:
            versions[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            module = sys.modules.get(key)
            if getattr(module, "__version__", None):
                versions[key] = module.__version__
    return versions


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
