"""The poison directory: what ``ntga.generate`` writes and ``defenses.evaluate`` reads.

Layout (format version 1)::

    out/
      x_train.npy         uint8 [N, H, W, C]  protected training images (C in 1, 3)
      y_train.npy         int64 [N]           their labels (may differ from the clean ones)
      source_indices.npy  int64 [N]           indices into the source dataset's training split
      target_indices.npy  int64 [M]           the attack's held-out target set (optional)
      protected_positions.npy int64 [P]       positions (rows of x_train) that carry protection,
                                              when only a fraction was protected (optional; absent = all)
      preview.png                             clean / poisoned / amplified difference (optional)
      manifest.json                           written LAST; its presence marks the directory complete

Every array is a plain ``.npy`` file readable with ``np.load(..., allow_pickle=False)``,
so the protected data can be used from PyTorch or anything else that reads numpy.
The manifest records the generation settings verbatim plus the sha256, shape and
dtype of every array file, which :func:`verify_poison_dir` checks before anything
trusts the arrays. Images are stored as uint8, so the budget must hold *after*
rounding: :func:`ntga.attack.quantize_to_budget` rounds within the budget and
:func:`ntga.budget.check_budget` checks it (the writer runs it when given the clean images).

Budget checks live in :mod:`ntga.budget` (``check_budget`` and ``perturbation_norms``
stay importable from here) and the PNG export in :mod:`ntga.export`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ntga import atomic
from ntga.budget import NORMS, check_budget, perturbation_norms
from ntga.errors import UserInputError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
PREVIEW = "preview.png"
X_FILE, Y_FILE, SOURCE_FILE, TARGET_FILE = "x_train.npy", "y_train.npy", "source_indices.npy", "target_indices.npy"
PROTECTED_FILE = "protected_positions.npy"
ARRAY_FILES = (X_FILE, Y_FILE, SOURCE_FILE, TARGET_FILE, PROTECTED_FILE)
REQUIRED_FILES = (X_FILE, Y_FILE, SOURCE_FILE)
# Keys the writer owns; a caller's manifest may not set them.
RESERVED_KEYS = ("format_version", "files", "num_examples", "image_shape", "created", "library_versions", "preview")
_RESUME_HINT = "incomplete or not a poison directory; if a generation run was interrupted, rerun it with --resume"
# Public names; check_budget and perturbation_norms come from ntga.budget and are
# re-exported so existing ``from ntga.poisondir import ...`` keeps working.
__all__ = [
    "ARRAY_FILES", "FORMAT_VERSION", "MANIFEST", "PREVIEW", "PROTECTED_FILE", "PoisonSet", "REQUIRED_FILES", "RESERVED_KEYS",
    "SOURCE_FILE", "TARGET_FILE", "X_FILE", "Y_FILE", "check_budget", "perturbation_norms",
    "read_poison_dir", "verify_poison_dir", "write_poison_dir",
]


@dataclasses.dataclass(frozen=True)
class PoisonSet:
    """A loaded, verified poison directory.

    Attributes:
      path: the directory.
      x: uint8 [N, H, W, C] protected training images.
      y: int64 [N] labels (may differ from the clean labels for label-changing methods).
      source_indices: int64 [N] indices into the source dataset's training split.
      target_indices: int64 [M] the attack's held-out target set, or None.
      manifest: the parsed manifest.json.
      protected_positions: int64 [P] rows of ``x`` that carry protection, or None (all of them).
    """

    path: Path
    x: np.ndarray
    y: np.ndarray
    source_indices: np.ndarray
    target_indices: np.ndarray | None
    manifest: dict
    protected_positions: np.ndarray | None = None


# ----------------------------------------------------------------------------- validation


def _index_array(a: Any, name: str, length: int | None = None) -> np.ndarray:
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


def _positions(a: Any, n: int, name: str = "protected_positions") -> np.ndarray:
    """Unique row numbers in [0, n) -> int64 (or UserInputError)."""
    a = _index_array(a, name)
    if a.size and a.max() >= n:
        raise UserInputError(f"{name} has position {a.max()} but there are only {n} images")
    return a


def _check_images(x: Any, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise UserInputError(f"{name} must be uint8 (round within the budget with ntga.attack.quantize_to_budget), got {x.dtype}")
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise UserInputError(f"{name} must have shape [N, H, W, C] with C in (1, 3), got {x.shape}")
    return x


def _check_labels(y: Any, n: int, num_classes: int | None, name: str = "y") -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) and y.dtype != np.bool_):
        raise UserInputError(f"{name} must be a 1-D integer array, got dtype {y.dtype} and shape {y.shape}")
    if y.shape[0] != n:
        raise UserInputError(f"{name} has {y.shape[0]} labels but there are {n} images")
    if y.size and y.min() < 0:
        raise UserInputError(f"{name} must be >= 0, found {y.min()}")
    if num_classes is not None and y.size and y.max() >= num_classes:
        raise UserInputError(f"{name} has label {y.max()} but there are only {num_classes} class names")
    return y.astype(np.int64)


def _jsonable(value: Any, where: str) -> Any:
    """Converts numpy scalars/arrays, tuples and paths to JSON types; refuses NaN/inf and unknown types."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise UserInputError(f"manifest key {where}.{k!r} must be a string (JSON would silently convert it)")
            out[k] = _jsonable(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist(), where)
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


def _library_versions() -> dict[str, str]:
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- writer


def _title_item(key: str, value: Any) -> str:
    if key == "eps" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"eps={value:.4g} ({value * 255:.3g}/255)"
    return f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserInputError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            kind = "an existing poison directory" if (out / MANIFEST).exists() else "not empty"
            raise UserInputError(f"output directory {out} is {kind}; choose a new directory or pass --overwrite")
        # Remove the completion marker first, so an interrupted rewrite is never mistaken for complete.
        for name in (MANIFEST, *ARRAY_FILES, PREVIEW):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _save_array(out: Path, name: str, array: np.ndarray) -> dict:
    with atomic.atomic_open(out / name) as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
    return {"sha256": _sha256(out / name), "shape": list(array.shape), "dtype": str(array.dtype)}


def write_poison_dir(
    out: str | Path,
    *,
    x: np.ndarray,
    y: np.ndarray,
    source_indices: np.ndarray,
    manifest: dict,
    target_indices: np.ndarray | None = None,
    x_clean: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    overwrite: bool = False,
    protected_positions: np.ndarray | None = None,
) -> Path:
    """Writes a complete poison directory; manifest.json goes last, atomically.

    Args:
      out: the directory (created; must be new or empty unless ``overwrite``).
      x: uint8 [N, H, W, C] protected images, C in (1, 3).
      y: integer [N] labels, stored as int64.
      source_indices: integer [N] unique indices into the source training split.
      manifest: the generation settings (method, kernel, eps, norm, t, ...), kept
        verbatim; values must be JSON-serialisable (numpy scalars are converted).
      target_indices: integer [M] unique indices of the attack's target set, if any.
      x_clean: uint8 [N, H, W, C] clean versions of ``x``: enables preview.png and,
        when the manifest has a numeric ``eps`` and ``norm`` in ("linf", "l2"),
        the budget check (so a directory over budget is never written).
      class_names: stored in the manifest and used to label the preview.
      overwrite: replace the poison files of an existing non-empty directory.
      protected_positions: integer [P] unique rows of ``x`` that carry protection when
        only a fraction of the data was protected (None: all rows).

    Returns:
      The directory path.
    """
    out = Path(out)
    x = _check_images(x, "x")
    n = x.shape[0]
    if n == 0:
        raise UserInputError("x holds no images; a poison directory needs at least one")
    if class_names is not None:
        class_names = [str(c) for c in class_names]
    y = _check_labels(y, n, None if class_names is None else len(class_names))
    source_indices = _index_array(source_indices, "source_indices", n)
    if target_indices is not None:
        target_indices = _index_array(target_indices, "target_indices")
    if protected_positions is not None:
        protected_positions = _positions(protected_positions, n)
    if not isinstance(manifest, dict):
        raise UserInputError(f"manifest must be a dict, got {type(manifest).__name__}")
    clash = sorted(set(manifest) & set(RESERVED_KEYS))
    if clash:
        raise UserInputError(f"manifest keys {clash} are written by write_poison_dir; remove them from the caller's manifest")
    record = _jsonable(manifest, "manifest")
    if class_names is not None:
        if "class_names" in record and record["class_names"] != class_names:
            raise UserInputError(f"manifest class_names {record['class_names']} disagree with class_names={class_names}")
        record["class_names"] = class_names
    if x_clean is not None:
        x_clean = _check_images(x_clean, "x_clean")
        if x_clean.shape != x.shape:
            raise UserInputError(f"x_clean has shape {x_clean.shape} but x has {x.shape}")
        eps, norm = record.get("eps"), record.get("norm")
        if isinstance(eps, (int, float)) and not isinstance(eps, bool) and norm in NORMS:
            check_budget(x_clean, x, eps, norm)

    _prepare_out(out, overwrite)
    files = {X_FILE: _save_array(out, X_FILE, x), Y_FILE: _save_array(out, Y_FILE, y),
             SOURCE_FILE: _save_array(out, SOURCE_FILE, source_indices)}
    if target_indices is not None:
        files[TARGET_FILE] = _save_array(out, TARGET_FILE, target_indices)
    if protected_positions is not None:
        files[PROTECTED_FILE] = _save_array(out, PROTECTED_FILE, protected_positions)
    if x_clean is not None:
        from ntga.preview import save_preview  # Pillow is only needed when a preview is asked for

        title = ", ".join(_title_item(k, record[k]) for k in ("method", "kernel", "norm", "eps", "t", "steps")
                          if record.get(k) is not None)
        save_preview(out / PREVIEW, x_clean, x, y, class_names, title=title or None)
        record["preview"] = PREVIEW
    record.update(
        format_version=FORMAT_VERSION,
        files=files,
        num_examples=int(n),
        image_shape=list(x.shape[1:]),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        library_versions=_library_versions(),
    )
    atomic.write_json(out / MANIFEST, record)
    return out


# ----------------------------------------------------------------------------- reader


def _read_manifest(path: Path) -> dict:
    if not path.exists():
        raise UserInputError(f"poison directory {path} does not exist")
    if not path.is_dir():
        raise UserInputError(f"{path} is not a directory; expected a poison directory containing {MANIFEST}")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise UserInputError(f"{path} has no {MANIFEST}: {_RESUME_HINT}")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserInputError(f"{mpath} is not readable JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise UserInputError(f"{mpath} must hold a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise UserInputError(f"{mpath} has format_version {manifest.get('format_version')!r}; this ntga reads {FORMAT_VERSION}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
        raise UserInputError(f"{mpath} has no valid 'files' table")
    unknown = sorted(set(files) - set(ARRAY_FILES))
    if unknown:  # also stops a manifest from pointing outside the directory
        raise UserInputError(f"{mpath} lists unknown files {unknown}; format {FORMAT_VERSION} has {list(ARRAY_FILES)}")
    missing = [f for f in REQUIRED_FILES if f not in files]
    if missing:
        raise UserInputError(f"{mpath} does not list the required files {missing}")
    return manifest


def _check_file(path: Path, name: str, entry: dict, verify: bool) -> None:
    """Checks one array file against its manifest entry by hash and .npy header (no data loaded)."""
    fpath = path / name
    if not fpath.is_file():
        raise UserInputError(f"{fpath} is missing (listed in {MANIFEST}); the poison directory is damaged")
    if verify:
        actual = _sha256(fpath)
        if actual != entry.get("sha256"):
            raise UserInputError(f"{fpath} was modified or corrupted: sha256 {actual} expected {entry.get('sha256')}")
    try:
        with open(fpath, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
    except (ValueError, OSError) as err:
        raise UserInputError(f"{fpath} is not a valid .npy file ({err})") from None
    if dtype.hasobject:
        raise UserInputError(f"{fpath} holds Python objects (dtype {dtype}); poison directories hold only numeric arrays")
    if list(shape) != entry.get("shape") or str(dtype) != entry.get("dtype"):
        raise UserInputError(
            f"{fpath} has shape {list(shape)} and dtype {dtype}, but {MANIFEST} says shape {entry.get('shape')} and dtype {entry.get('dtype')}"
        )


def _load(path: Path, name: str) -> np.ndarray:
    try:
        return np.load(path / name, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UserInputError(f"{path / name} could not be loaded ({err})") from None


def _check_metadata(path: Path, manifest: dict) -> None:
    files = manifest["files"]
    x_shape = files[X_FILE]["shape"]
    n = x_shape[0] if x_shape else None
    expect = {X_FILE: "uint8", Y_FILE: "int64", SOURCE_FILE: "int64", TARGET_FILE: "int64", PROTECTED_FILE: "int64"}
    for name, entry in files.items():
        if entry.get("dtype") != expect[name]:
            raise UserInputError(f"{path / name}: {MANIFEST} says dtype {entry.get('dtype')}, format {FORMAT_VERSION} requires {expect[name]}")
    if len(x_shape) != 4 or x_shape[-1] not in (1, 3):
        raise UserInputError(f"{path / X_FILE} has shape {x_shape}; expected [N, H, W, C] with C in (1, 3)")
    for name in (Y_FILE, SOURCE_FILE):
        if files[name]["shape"] != [n]:
            raise UserInputError(f"{path / name} has shape {files[name]['shape']} but {X_FILE} has {n} images")
    for name in (TARGET_FILE, PROTECTED_FILE):
        if name in files and len(files[name]["shape"]) != 1:
            raise UserInputError(f"{path / name} has shape {files[name]['shape']}; expected one dimension")
    if manifest.get("num_examples") != n or manifest.get("image_shape") != x_shape[1:]:
        raise UserInputError(
            f"{path / MANIFEST}: num_examples {manifest.get('num_examples')} / image_shape {manifest.get('image_shape')} "
            f"disagree with {X_FILE} shape {x_shape}"
        )


def _verify(path: Path, verify: bool) -> tuple[dict, dict[str, np.ndarray]]:
    """All checks; returns the manifest and the small arrays (labels, indices), loaded and validated."""
    manifest = _read_manifest(path)
    for name, entry in manifest["files"].items():
        _check_file(path, name, entry, verify)
    _check_metadata(path, manifest)
    n = manifest["num_examples"]
    names = manifest.get("class_names")
    small = {name: _load(path, name) for name in (Y_FILE, SOURCE_FILE, TARGET_FILE, PROTECTED_FILE)
             if name in manifest["files"]}
    small[Y_FILE] = _check_labels(small[Y_FILE], n, len(names) if isinstance(names, list) else None, f"{path / Y_FILE}")
    small[SOURCE_FILE] = _index_array(small[SOURCE_FILE], f"{path / SOURCE_FILE}", n)
    if TARGET_FILE in small:
        small[TARGET_FILE] = _index_array(small[TARGET_FILE], f"{path / TARGET_FILE}")
    if PROTECTED_FILE in small:
        small[PROTECTED_FILE] = _positions(small[PROTECTED_FILE], n, f"{path / PROTECTED_FILE}")
    return manifest, small


def verify_poison_dir(path: str | Path) -> None:
    """Checks a poison directory (manifest, hashes, headers, labels, indices) without loading the images.

    Raises:
      UserInputError: naming the first problem found.
    """
    _verify(Path(path), verify=True)


def read_poison_dir(path: str | Path, *, verify: bool = True) -> PoisonSet:
    """Loads a poison directory with numpy alone (never unpickles).

    Args:
      path: the directory written by :func:`write_poison_dir`.
      verify: check every file's sha256 against the manifest (shapes, dtypes and
        index validity are always checked; only hashing is skipped when False).

    Returns:
      The :class:`PoisonSet`.
    """
    path = Path(path)
    manifest, small = _verify(path, verify)
    x = _load(path, X_FILE)
    return PoisonSet(path=path, x=x, y=small[Y_FILE], source_indices=small[SOURCE_FILE],
                     target_indices=small.get(TARGET_FILE), manifest=manifest,
                     protected_positions=small.get(PROTECTED_FILE))
