"""A generation run's fingerprint: every setting and input that affects its output.

The driver writes it into the work directory when a run starts and into the
manifest when it finishes; ``--resume`` compares it with the saved one, so a run
is never continued, or a finished one returned, with other settings or data.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from ntga.errors import UserInputError
from ntga.poisondir import MANIFEST, read_poison_dir

# Fields added to the fingerprint after runs without them were made, with the value
# those runs implicitly had, so they still resume (NTGA recorded `fraction` only below 1).
LATER_FIELDS = {"fraction": 1.0, "protect_targets": False}


def array_sha256(a: np.ndarray) -> str:
    """sha256 of an array's C-order bytes (dtype and shape are the caller's to record)."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def run_fingerprint(method: str, settings: dict[str, Any], seed: int, fraction: float, split,
                    protect_targets: bool = False) -> dict[str, Any]:
    """The fingerprint of running ``method`` with resolved ``settings`` on ``split``."""
    return {"method": method, **settings, "seed": seed, "fraction": float(fraction),
            "protect_targets": bool(protect_targets), **data_fingerprint(split)}


def data_fingerprint(split) -> dict[str, Any]:
    """The part of a run's fingerprint that names its data: dataset, content hash, split indices.

    Every generation method puts this beside its own settings, so resuming on
    other data (or another split of it) is refused the same way everywhere.
    """
    import ntga

    ds = split.dataset
    return {"dataset": ds.spec, "dataset_content_hash": ds.content_hash,
            "train_indices_sha256": array_sha256(split.train_idx),
            "target_indices_sha256": array_sha256(split.target_idx),
            "ntga_version": ntga.__version__}


def differences(saved: dict[str, Any], fingerprint: dict[str, Any], keys) -> str:
    """``"key: was A, now B; ..."`` for the ``keys`` whose values differ (empty when none do)."""
    saved, fingerprint = {**LATER_FIELDS, **saved}, {**LATER_FIELDS, **fingerprint}
    diff = sorted(k for k in keys if saved.get(k) != fingerprint.get(k))
    return "; ".join(f"{k}: was {saved.get(k)!r}, now {fingerprint.get(k)!r}" for k in diff)


def finished_with_same_settings(out: Path, fingerprint: dict[str, Any]) -> bool:
    """Whether ``out`` is a complete poison directory made with ``fingerprint``'s settings.

    Raises:
      UserInputError: it is complete but was made with other settings (so ``--resume``
        never silently returns another run's output).
    """
    if not (Path(out) / MANIFEST).exists():
        return False
    saved = read_poison_dir(out, verify=True).manifest
    details = differences(saved, fingerprint, [k for k in fingerprint if k in saved or k in LATER_FIELDS])
    if details:
        raise UserInputError(f"cannot resume into {out}: it is complete but was made with different settings "
                             f"({details})")
    return True
