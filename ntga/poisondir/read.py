"""Reading and verifying a poison directory (layout in ``ntga.poisondir``): nothing is
trusted before the manifest's digests, shapes and dtypes match the files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ntga.errors import UserInputError
from ntga.poisondir.checks import check_labels, checked_positions, index_array, sha256_of
from ntga.poisondir.layout import (_RESUME_HINT, ARRAY_FILES, FORMAT_VERSION, MANIFEST, PROTECTED_FILE,
                                   REQUIRED_FILES, SOURCE_FILE, TARGET_FILE, X_FILE, Y_FILE, PoisonSet)


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
        actual = sha256_of(fpath)
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
    small[Y_FILE] = check_labels(small[Y_FILE], n, len(names) if isinstance(names, list) else None, f"{path / Y_FILE}")
    small[SOURCE_FILE] = index_array(small[SOURCE_FILE], f"{path / SOURCE_FILE}", n)
    if TARGET_FILE in small:
        small[TARGET_FILE] = index_array(small[TARGET_FILE], f"{path / TARGET_FILE}")
    if PROTECTED_FILE in small:
        small[PROTECTED_FILE] = checked_positions(small[PROTECTED_FILE], n, f"{path / PROTECTED_FILE}")
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
