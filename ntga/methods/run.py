"""Runs one registered method on a split and writes the poison directory.

The shared part of every non-NTGA method: resolve per-dataset defaults, choose
the protected share (``--fraction``), hand the method a :class:`ProtectTask`,
check what it returns (shape, dtype, labels, budget), merge the protected rows
back among the clean ones and write the poison directory with a full manifest.
Long methods keep progress files in ``OUT/.work/method`` so a killed run can
continue with ``--resume`` (the run's settings are fingerprinted exactly as
for NTGA, and resuming with other settings is refused).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ntga import outdir
from ntga.checkpoint import BlockStore, data_fingerprint, finished_with_same_settings
from ntga.data import Split
from ntga.errors import UserInputError
from ntga.methods.base import MethodSpec, Protected, ProtectTask
from ntga.methods.fraction import select_protected
from ntga.pipeline import next_steps
from ntga.poisondir import write_poison_dir


def _check_output(spec: MethodSpec, out: Protected, task: ProtectTask) -> None:
    """A method's output must be uint8 images of the input's shape with valid labels."""
    if not isinstance(out, Protected):
        raise TypeError(f"method {spec.name} returned {type(out).__name__}, expected Protected")
    x, y = np.asarray(out.x), np.asarray(out.y)
    if x.dtype != np.uint8 or x.shape != task.x.shape:
        raise RuntimeError(f"method {spec.name} returned images {x.dtype}{list(x.shape)}, "
                           f"expected uint8{list(task.x.shape)}")
    if not np.array_equal(y, task.y):
        raise RuntimeError(f"method {spec.name} changed the labels; protection methods keep them")


def generate_with_method(split: Split, spec: MethodSpec, config: Any, out: str | Path, *, seed: int = 0,
                         fraction: float = 1.0, resume: bool = False, progress: bool = True) -> Path:
    """Protects ``split``'s training images with ``spec`` and writes the poison directory ``out``.

    Args:
      split: the dataset split (``split.x_train`` is what gets protected).
      spec: the method (from :func:`ntga.methods.get_method`).
      config: an instance of ``spec.config_type``; None fields get per-dataset defaults.
      out: output directory (new or empty, unless ``resume``).
      seed: seeds the method's key and the ``fraction`` choice.
      fraction: share of each class to protect, in (0, 1].
      resume: continue an interrupted run with identical settings.
      progress: show progress bars.

    Returns:
      ``out``.

    Raises:
      UserInputError: bad settings (before anything is written) or a resume with other settings.
    """
    ds = split.dataset
    split.require_classes()
    config = spec.resolved(config, ds.image_shape)
    positions = select_protected(split.y_train, ds.num_classes, fraction, seed)
    out = Path(out)
    settings = dataclasses.asdict(config)
    fingerprint = {
        "method": spec.name, **settings, "seed": seed, "fraction": float(fraction), **data_fingerprint(split),
    }
    with outdir.writing(out):
        if resume and finished_with_same_settings(out, fingerprint):
            print(f"{out} is already complete; nothing to do")
            return out
        store = BlockStore(out)
        store.open(fingerprint, resume=resume)
        workdir = store.work / "method"
        workdir.mkdir(exist_ok=True)
        # A setting that only fails against the data (e.g. a filter larger than the images) raises
        # UserInputError inside protect: outdir.writing then removes the half-made directory.
        return _protect_and_write(split, spec, config, out, store, workdir, fingerprint, positions, seed=seed,
                                  resume=resume, progress=progress)


def _protect_and_write(split: Split, spec: MethodSpec, config: Any, out: Path, store: BlockStore, workdir: Path,
                       fingerprint: dict[str, Any], positions: np.ndarray, *, seed: int, resume: bool,
                       progress: bool) -> Path:
    ds = split.dataset
    rest = np.setdiff1d(np.arange(len(split.y_train)), positions)
    task = ProtectTask(
        x=split.x_train[positions], y=split.y_train[positions].astype(np.int64), num_classes=ds.num_classes,
        x_rest=split.x_train[rest], y_rest=split.y_train[rest].astype(np.int64),
        x_target=split.x_target, y_target=split.y_target.astype(np.int64),
        workdir=workdir, resume=resume, progress=progress,
    )
    start = time.perf_counter()
    result = spec.protect(task, config, jax.random.key(seed))
    wall = time.perf_counter() - start
    _check_output(spec, result, task)

    x_all = split.x_train.copy()
    y_all = split.y_train.astype(np.int64).copy()
    x_all[positions] = result.x
    y_all[positions] = result.y
    manifest = {
        **fingerprint,
        # A method with a configurable norm is bounded in the norm it was run with.
        "budget_norm": None if spec.budget_norm is None else getattr(config, "norm", spec.budget_norm),
        "dataset_class_names": list(ds.class_names),
        "num_poisoned": int(len(positions)),
        "num_training_images": int(len(y_all)),
        "target_size": int(len(split.target_idx)),
        "wall_time_s": wall,
        **{f"info_{k}": v for k, v in result.info.items()},
    }
    if spec.budget_norm is None:
        # Unbounded methods (cuda, ops) record no L-p budget, so none is checked.
        manifest.pop("eps", None)
        manifest["norm"] = "none"
    elif "norm" not in manifest:
        manifest["norm"] = spec.budget_norm
    path = write_poison_dir(out, x=x_all, y=y_all, source_indices=split.train_idx, manifest=manifest,
                            target_indices=split.target_idx if len(split.target_idx) else None,
                            x_clean=split.x_train, class_names=ds.class_names, overwrite=True,
                            protected_positions=None if len(positions) == len(y_all) else positions)
    store.remove()
    print(f"wrote {path}: {spec.name}, {len(positions)} of {len(y_all)} training images protected in {wall:.1f}s")
    print(next_steps(path))
    return path
