"""``npz:FILE`` - numpy arrays ``x_train, y_train, x_test, y_test`` (+ optional ``class_names``).

Images: uint8 ``[N, H, W]`` or ``[N, H, W, C]`` (C = 1 or 3, channels last), or
float in ``[0, 1]`` converted with ``round(x * 255)``; other integer dtypes are
accepted when every value is in 0..255. Labels: a 1-D integer array in
``[0, K)``; ``K = len(class_names)`` when given (a str array), else the largest
label + 1 with names ``"0"``.. . Loaded with ``allow_pickle=False``: a file
holding object arrays is refused, never unpickled. The content hash covers
the file's bytes. Not cached: ``np.load`` already is the cache format.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from ntga.data.dataset import Arrays, source_hasher, update_with_file
from ntga.data.limits import DecodeBudget, DecodeLimits
from ntga.errors import UserInputError
from ntga.pixels import to_uint8

VERSION = 1
REQUIRED = ("x_train", "y_train", "x_test", "y_test")
MAX_CLASSES = 1 << 20  # without class_names, K = largest label + 1 names are made: bound K


def content_hash(path: Path) -> str:
    h = source_hasher("npz", VERSION)
    update_with_file(h, path)
    return h.hexdigest()


def _images(x: np.ndarray, name: str, where: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        hint = (
            " (looks channels-first; transpose to [N, H, W, C])"
            if x.ndim == 4 and x.shape[1] in (1, 3)
            else ""
        )
        raise UserInputError(
            f"{where}: {name} has shape {x.shape}; expected [N, H, W] or [N, H, W, C] with C = 1 or 3{hint}"
        )
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind == "f":
        if not np.isfinite(x).all() or x.min(initial=0.0) < 0.0 or x.max(initial=0.0) > 1.0:
            raise UserInputError(f"{where}: float {name} must lie in [0, 1] (found values outside or NaN)")
        return to_uint8(x)  # in [0, 1] already, so its clip changes nothing
    if x.dtype.kind in "iu":
        if x.size and (x.min() < 0 or x.max() > 255):
            raise UserInputError(f"{where}: integer {name} must lie in 0..255, found {x.min()}..{x.max()}")
        return x.astype(np.uint8)
    raise UserInputError(f"{where}: {name} has dtype {x.dtype}; use uint8 or float in [0, 1]")


def _labels(y: np.ndarray, name: str, where: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise UserInputError(
            f"{where}: {name} must be a 1-D integer array of class indices, got {y.dtype} {y.shape}"
            + (" (one-hot? use argmax)" if y.ndim == 2 else "")
        )
    # Checked on the stored dtype, before the cast could wrap a huge uint64 label into a negative one
    # (negative labels are reported by the dataset check with the class count).
    if y.size and int(y.max()) >= MAX_CLASSES:
        raise UserInputError(f"{where}: {name} holds label {int(y.max())}; class indices must lie in "
                             f"[0, {MAX_CLASSES})")
    return y.astype(np.int64)


def _declared(z: np.lib.npyio.NpzFile, key: str) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype from an array's .npy header inside the archive, without reading its data."""
    try:
        with z.zip.open(f"{key}.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
    except (KeyError, ValueError, OSError, zipfile.BadZipFile, EOFError):
        return None  # np.load's own reading below explains what is wrong
    return shape, dtype


def decode(path: Path, source: str, limits: DecodeLimits | None = None) -> Arrays:
    where = str(path)
    budget = DecodeBudget(limits, source)
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise UserInputError(f"{where}: cannot read as .npz ({err})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise UserInputError(f"{where}: a single .npy array, not an .npz archive with {', '.join(REQUIRED)}")
    with z:
        missing = [k for k in REQUIRED if k not in z.files]
        if missing:
            raise UserInputError(f"{where}: missing arrays {missing}; found {z.files}, need {list(REQUIRED)}")
        raw = {}
        for key in [*REQUIRED, *(["class_names"] if "class_names" in z.files else [])]:
            declared = _declared(z, key)
            if declared is not None:
                budget.charge_array(declared[0] if key.startswith("x_") else (math.prod(declared[0]),),
                                    f"{where}: {key}", itemsize=declared[1].itemsize)
            try:
                raw[key] = z[key]
            except ValueError as err:
                if "pickle" in str(err).lower():
                    raise UserInputError(
                        f"{where}: array {key!r} holds Python objects (needs pickle); refusing to unpickle "
                        "an untrusted file. Save plain numeric/str arrays."
                    ) from None
                raise UserInputError(f"{where}: cannot read array {key!r} ({err})") from None
            except (OSError, zipfile.BadZipFile, EOFError) as err:
                raise UserInputError(f"{where}: cannot read array {key!r} ({err}); truncated?") from None
    out = {}
    for split in ("train", "test"):
        out[f"x_{split}"] = _images(raw[f"x_{split}"], f"x_{split}", where)
        out[f"y_{split}"] = _labels(raw[f"y_{split}"], f"y_{split}", where)
    if "class_names" in raw:
        names = raw["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise UserInputError(
                f"{where}: class_names must be a 1-D str array, got {names.dtype} {names.shape}"
            )
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist())
    else:
        top = max(out["y_train"].max(initial=0), out["y_test"].max(initial=0))
        names = tuple(str(i) for i in range(int(top) + 1))
    return Arrays(class_names=names, **out)
