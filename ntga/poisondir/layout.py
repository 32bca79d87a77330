"""The poison directory's file names and the loaded form, :class:`PoisonSet` (layout in ``ntga.poisondir``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

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
