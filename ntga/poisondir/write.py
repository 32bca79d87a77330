"""Writing a poison directory (layout in ``ntga.poisondir``): arrays first, the manifest last."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ntga import atomic
from ntga.budget import check_budget
from ntga.errors import UserInputError
from ntga.pixels import NORMS
from ntga.poisondir.checks import (check_images, check_labels, checked_positions, index_array, jsonable,
                                   library_versions, sha256_of)
from ntga.poisondir.layout import (ARRAY_FILES, FORMAT_VERSION, MANIFEST, PREVIEW, PROTECTED_FILE, RESERVED_KEYS,
                                   SOURCE_FILE, TARGET_FILE, X_FILE, Y_FILE)


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
    return {"sha256": sha256_of(out / name), "shape": list(array.shape), "dtype": str(array.dtype)}


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
    preview: bool = True,
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
      preview: write preview.png when ``x_clean`` is given (False: only the budget check, e.g.
        for a secret mark, whose preview would show which images carry it).

    Returns:
      The directory path.
    """
    out = Path(out)
    x = check_images(x, "x")
    n = x.shape[0]
    if n == 0:
        raise UserInputError("x holds no images; a poison directory needs at least one")
    if class_names is not None:
        class_names = [str(c) for c in class_names]
    y = check_labels(y, n, None if class_names is None else len(class_names))
    source_indices = index_array(source_indices, "source_indices", n)
    if target_indices is not None:
        target_indices = index_array(target_indices, "target_indices")
    if protected_positions is not None:
        protected_positions = checked_positions(protected_positions, n)
    if not isinstance(manifest, dict):
        raise UserInputError(f"manifest must be a dict, got {type(manifest).__name__}")
    clash = sorted(set(manifest) & set(RESERVED_KEYS))
    if clash:
        raise UserInputError(f"manifest keys {clash} are written by write_poison_dir; remove them from the caller's manifest")
    record = jsonable(manifest, "manifest")
    if class_names is not None:
        if "class_names" in record and record["class_names"] != class_names:
            raise UserInputError(f"manifest class_names {record['class_names']} disagree with class_names={class_names}")
        record["class_names"] = class_names
    if x_clean is not None:
        x_clean = check_images(x_clean, "x_clean")
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
    if x_clean is not None and preview:
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
        library_versions=library_versions(),
    )
    atomic.write_json(out / MANIFEST, record)
    return out
