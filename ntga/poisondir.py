"""The poison directory: what ``ntga.generate`` writes and ``defenses.evaluate`` reads.

Layout (format version 1)::

    out/
      x_train.npy         uint8 [N, H, W, C]  protected training images (C in 1, 3)
      y_train.npy         int64 [N]           their labels (may differ from the clean ones)
      source_indices.npy  int64 [N]           indices into the source dataset's training split
      target_indices.npy  int64 [M]           the attack's held-out target set (optional)
      preview.png                             clean / poisoned / amplified difference (optional)
      manifest.json                           written LAST; its presence marks the directory complete

Every array is a plain ``.npy`` file readable with ``np.load(..., allow_pickle=False)``,
so the protected data can be used from PyTorch or anything else that reads numpy.
The manifest records the generation settings verbatim plus the sha256, shape and
dtype of every array file, which :func:`verify_poison_dir` checks before anything
trusts the arrays. Images are stored as uint8, so the budget must hold *after*
rounding: :func:`quantize` rounds within the budget and :func:`check_budget` checks it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ntga.errors import UserInputError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
PREVIEW = "preview.png"
X_FILE, Y_FILE, SOURCE_FILE, TARGET_FILE = "x_train.npy", "y_train.npy", "source_indices.npy", "target_indices.npy"
ARRAY_FILES = (X_FILE, Y_FILE, SOURCE_FILE, TARGET_FILE)
REQUIRED_FILES = (X_FILE, Y_FILE, SOURCE_FILE)
# Keys the writer owns; a caller's manifest may not set them.
RESERVED_KEYS = ("format_version", "files", "num_examples", "image_shape", "created", "library_versions", "preview")
NORMS = ("linf", "l2")
BUDGET_RTOL = 1e-6
_RESUME_HINT = "incomplete or not a poison directory; if a generation run was interrupted, rerun it with --resume"


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
    """

    path: Path
    x: np.ndarray
    y: np.ndarray
    source_indices: np.ndarray
    target_indices: np.ndarray | None
    manifest: dict


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


def _check_images(x: Any, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise UserInputError(f"{name} must be uint8 (round within the budget with ntga.poisondir.quantize), got {x.dtype}")
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


# ----------------------------------------------------------------------------- budget


def _unit(x: np.ndarray, name: str) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float64) / 255.0
    if not np.issubdtype(x.dtype, np.floating):
        raise UserInputError(f"{name} must be uint8 or float in [0, 1], got dtype {x.dtype}")
    x = x.astype(np.float64)
    if x.size and not (np.all(np.isfinite(x)) and x.min() >= 0.0 and x.max() <= 1.0):
        raise UserInputError(f"{name} must lie in [0, 1], found values in [{np.nanmin(x)}, {np.nanmax(x)}] (or NaN/inf)")
    return x


def _check_eps_norm(eps: float, norm: str) -> float:
    if norm not in NORMS:
        raise UserInputError(f"unknown norm {norm!r}; accepted: {', '.join(NORMS)}")
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        raise UserInputError(f"eps must be a number, got {eps!r}") from None
    if not (math.isfinite(eps) and eps >= 0.0):
        raise UserInputError(f"eps must be a finite number >= 0, got {eps}")
    return eps


def perturbation_norms(x_clean: np.ndarray, x_poison: np.ndarray, norm: str, chunk: int = 4096) -> np.ndarray:
    """Per-image perturbation norms in [0, 1] pixel units.

    Args:
      x_clean, x_poison: [N, ...] uint8, or float in [0, 1]; same shape.
      norm: "linf" (max |delta|) or "l2" (sqrt of the sum of squares over all pixels of one image).

    Returns:
      float64 [N].
    """
    _check_eps_norm(0.0, norm)
    x_clean, x_poison = np.asarray(x_clean), np.asarray(x_poison)
    if x_clean.shape != x_poison.shape or x_clean.ndim < 1:
        raise UserInputError(f"clean images {x_clean.shape} and poisoned images {x_poison.shape} must have the same shape [N, ...]")
    out = np.empty(x_clean.shape[0], np.float64)
    # Chunked so a 50k-image CIFAR set never needs a float64 copy of the whole array.
    for start in range(0, x_clean.shape[0], chunk):
        sl = slice(start, start + chunk)
        delta = (_unit(x_poison[sl], "poisoned images") - _unit(x_clean[sl], "clean images")).reshape(len(out[sl]), -1)
        out[sl] = np.abs(delta).max(axis=1, initial=0.0) if norm == "linf" else np.sqrt(np.sum(delta * delta, axis=1))
    return out


def check_budget(x_clean: np.ndarray, x_poison: np.ndarray, eps: float, norm: str) -> None:
    """Raises UserInputError unless every image is within ``eps`` of its clean version.

    Args:
      x_clean, x_poison: [N, H, W, C] uint8, or float in [0, 1].
      eps: the budget in [0, 1] pixel units (e.g. 8/255).
      norm: "linf" or "l2" (per image, over all pixels).

    A relative tolerance of 1e-6 absorbs float rounding, so an image exactly at
    the budget after uint8 rounding (e.g. 8 levels for eps = 8/255) passes.
    """
    eps = _check_eps_norm(eps, norm)
    norms = perturbation_norms(x_clean, x_poison, norm)
    over = norms > eps * (1.0 + BUDGET_RTOL)
    if np.any(over):
        worst = int(np.argmax(norms))
        raise UserInputError(
            f"{int(over.sum())} of {len(norms)} images exceed the {norm} budget eps = {eps:.6g}; "
            f"worst is image {worst} with {norm} norm {norms[worst]:.6g} ({norms[worst] * 255:.4g}/255)"
        )


def quantize(x_clean: np.ndarray, x_poison: np.ndarray, eps: float | None = None, norm: str | None = None) -> np.ndarray:
    """Rounds float poisoned images to uint8 without leaving the budget.

    Rounding to the nearest level can push an image past eps (e.g. eps = 0.3 is
    76.5 levels). Images that would exceed it are instead rounded towards their
    clean version, which never increases any |delta| and so keeps both norms.

    Args:
      x_clean: uint8 [N, H, W, C] clean images.
      x_poison: float [N, H, W, C] in [0, 1] (or uint8, returned as is after the check).
      eps, norm: the budget; when omitted, plain rounding.

    Returns:
      uint8 [N, H, W, C].
    """
    x_clean = _check_images(x_clean, "x_clean")
    x_poison = np.asarray(x_poison)
    if x_poison.shape != x_clean.shape:
        raise UserInputError(f"poisoned images {x_poison.shape} and clean images {x_clean.shape} differ in shape")
    levels = _unit(x_poison, "poisoned images") * 255.0
    out = np.clip(np.round(levels), 0, 255).astype(np.uint8)
    if eps is None:
        return out
    eps = _check_eps_norm(eps, norm)
    if norm == "linf":
        # Per pixel: the largest whole number of levels inside the budget.
        cap = math.floor(eps * 255.0 * (1.0 + BUDGET_RTOL))
        delta = np.clip(out.astype(np.int16) - x_clean.astype(np.int16), -cap, cap)
        out = (x_clean.astype(np.int16) + delta).astype(np.uint8)
    over = perturbation_norms(x_clean, out, norm) > eps * (1.0 + BUDGET_RTOL)
    if np.any(over):
        delta = levels[over] - x_clean[over].astype(np.float64)
        out[over] = np.clip(x_clean[over] + np.trunc(delta), 0, 255).astype(np.uint8)
    check_budget(x_clean, out, eps, norm)
    return out


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
    tmp = out / f".{name}.tmp"
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
    os.replace(tmp, out / name)
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
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".tmp", dir=out)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, out / MANIFEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
    expect = {X_FILE: "uint8", Y_FILE: "int64", SOURCE_FILE: "int64", TARGET_FILE: "int64"}
    for name, entry in files.items():
        if entry.get("dtype") != expect[name]:
            raise UserInputError(f"{path / name}: {MANIFEST} says dtype {entry.get('dtype')}, format {FORMAT_VERSION} requires {expect[name]}")
    if len(x_shape) != 4 or x_shape[-1] not in (1, 3):
        raise UserInputError(f"{path / X_FILE} has shape {x_shape}; expected [N, H, W, C] with C in (1, 3)")
    for name in (Y_FILE, SOURCE_FILE):
        if files[name]["shape"] != [n]:
            raise UserInputError(f"{path / name} has shape {files[name]['shape']} but {X_FILE} has {n} images")
    if TARGET_FILE in files and len(files[TARGET_FILE]["shape"]) != 1:
        raise UserInputError(f"{path / TARGET_FILE} has shape {files[TARGET_FILE]['shape']}; expected [M]")
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
    small = {name: _load(path, name) for name in (Y_FILE, SOURCE_FILE, TARGET_FILE) if name in manifest["files"]}
    small[Y_FILE] = _check_labels(small[Y_FILE], n, len(names) if isinstance(names, list) else None, f"{path / Y_FILE}")
    small[SOURCE_FILE] = _index_array(small[SOURCE_FILE], f"{path / SOURCE_FILE}", n)
    if TARGET_FILE in small:
        small[TARGET_FILE] = _index_array(small[TARGET_FILE], f"{path / TARGET_FILE}")
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
                     target_indices=small.get(TARGET_FILE), manifest=manifest)


# ----------------------------------------------------------------------------- export


def _check_class_names(class_names: Sequence[str], num_classes: int) -> list[str]:
    names = [str(c) for c in class_names]
    if len(names) < num_classes:
        raise UserInputError(f"class_names has {len(names)} names but labels go up to {num_classes - 1}")
    bad = [c for c in names if not c or c in (".", "..") or "/" in c or "\\" in c or "\0" in c]
    if bad:
        raise UserInputError(f"class names {bad} cannot be folder names; use non-empty names without '/' or '\\'")
    if len(set(names)) != len(names):
        raise UserInputError(f"class names must be unique, got {names}")
    return names


def _save_pngs(root: Path, images: np.ndarray, labels: np.ndarray, stems: np.ndarray, names: list[str]) -> None:
    from PIL import Image

    for label in np.unique(labels):
        (root / names[int(label)]).mkdir(parents=True)
    for img, label, stem in zip(images, labels, stems):  # one file per image: I/O bound, no array work to batch
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(root / names[int(label)] / f"{int(stem):06d}.png")


def export_image_folder(
    poisons: PoisonSet,
    dest: str | Path,
    *,
    class_names: Sequence[str],
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
) -> Path:
    """Writes the protected set as a folder of lossless PNGs, the form a data owner publishes.

    Layout: ``dest/train/<class>/<source_index:06d>.png`` and, with a test set,
    ``dest/test/<class>/<position:06d>.png`` (grey images as mode 'L', colour as 'RGB'),
    which the ``folder:`` dataset spec reads back. Files are written into a hidden
    sibling directory and renamed into place at the end, so an interrupted export
    leaves no half-written ``dest``.

    Args:
      poisons: a loaded poison directory.
      dest: a new or empty directory.
      class_names: folder name of each label (index = label).
      x_test: optional uint8 [M, H, W, C] clean test images; y_test: their int labels [M].

    Returns:
      ``dest``.
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserInputError(f"export destination {dest} exists and is not an empty directory; choose a new one")
    if (x_test is None) != (y_test is None):
        raise UserInputError("give both x_test and y_test, or neither")
    max_label = int(poisons.y.max()) if poisons.y.size else -1
    if x_test is not None:
        x_test = _check_images(x_test, "x_test")
        y_test = _check_labels(y_test, x_test.shape[0], None, "y_test")
        max_label = max(max_label, int(y_test.max()) if y_test.size else -1)
    names = _check_class_names(class_names, max_label + 1)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        _save_pngs(tmp / "train", poisons.x, poisons.y, poisons.source_indices, names)
        if x_test is not None:
            _save_pngs(tmp / "test", x_test, y_test, np.arange(x_test.shape[0]), names)
        if dest.exists():
            dest.rmdir()  # empty (checked above); rename cannot replace it portably
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
