"""What an evaluation trains on: clean and poisoned training sets and the test set.

Two modes:

* **poisons** (:func:`load_poisoned`): a poison directory (``ntga.poisondir``)
  and the dataset it was made from, reloaded from the spec recorded in its
  manifest (or from ``--dataset``, e.g. a moved copy) and checked by content
  hash. The clean training set is ``dataset.x_train[source_indices]``, i.e.
  exactly the images the poisons were made from, so clean and poisoned runs
  differ only by the protection.
* **clean** (:func:`load_clean`): a dataset split alone (``--dataset`` and the
  shared split flags); the same flags as ``ntga.generate`` select the same
  training images it would protect.

The test set is the dataset's full test split, or the stratified
``--test-size`` subset ``ntga.data.make_split`` draws for the seed. Test images
are never altered by any breaker.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from ntga.data import Dataset, Split, load_dataset, make_split
from ntga.data.limits import DecodeLimits
from ntga.errors import UserInputError
from ntga.poisondir import X_FILE, Y_FILE, PoisonSet, read_poison_dir

# Generation settings worth repeating next to the results (when present in a manifest).
MANIFEST_KEYS = (
    "method", "kernel", "kernel_overrides", "eps", "norm", "t", "steps", "step_size", "random_start",
    "block_size", "dtype", "seed", "dataset", "dataset_content_hash", "num_poisoned", "target_size",
    "gp_target_acc_clean_mean", "gp_target_acc_poisoned_mean", "created", "wall_time_s",
)


@dataclasses.dataclass(frozen=True)
class EvalData:
    """The arrays of one evaluation and where they came from.

    Attributes:
        x_clean: uint8 [N, H, W, C] clean training images.
        y_clean: int64 [N] their labels.
        x_poison: uint8 [N, H, W, C] protected versions of the same images (None in clean mode).
        y_poison: int64 [N] labels of the protected set (None in clean mode).
        x_test: uint8 [M, H, W, C] test images.
        y_test: int64 [M] test labels.
        num_classes: k, from the dataset (so every run has the same logits).
        dataset: the loaded source dataset.
        identity: what makes two evaluations comparable (hashes of the data and
            indices; no paths, so moved copies match); part of the resume settings.
        describe: human-readable facts for reports (paths, spec, sizes).
        poison_manifest: the key generation settings of the poison directory (empty in clean mode).
    """

    x_clean: np.ndarray
    y_clean: np.ndarray
    x_poison: np.ndarray | None
    y_poison: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    dataset: Dataset
    identity: dict[str, Any]
    describe: dict[str, Any]
    poison_manifest: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def poisoned(self) -> bool:
        return self.x_poison is not None

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(H, W, C) of every image."""
        return tuple(int(d) for d in self.x_clean.shape[1:])


def digest(a: np.ndarray) -> str:
    """sha256 of an index array's int64 bytes (identifies a subset independently of paths)."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(a, np.int64)).tobytes()).hexdigest()


def _test_split(ds: Dataset, test_size: int | None, seed: int) -> np.ndarray:
    # make_split draws the test subset from its own stream (default_rng([seed, 1])),
    # independent of the training split, so target_size=0 does not change it.
    return make_split(ds, target_size=0, test_size=test_size, seed=seed).test_idx


def _load_source(poisons: PoisonSet, dataset: str | None, cache_dir, use_cache: bool,
                 limits: DecodeLimits | None) -> Dataset:
    manifest_path = poisons.path / "manifest.json"
    recorded_spec = poisons.manifest.get("dataset")
    recorded_hash = poisons.manifest.get("dataset_content_hash")
    spec = dataset if dataset is not None else recorded_spec
    if not isinstance(spec, str) or not spec:
        raise UserInputError(f"{manifest_path} names no source dataset; pass --dataset SPEC with the data "
                             "the poisons were made from")
    try:
        ds = load_dataset(spec, cache_dir=cache_dir, use_cache=use_cache, limits=limits)
    except UserInputError as err:
        if dataset is not None:
            raise
        raise UserInputError(f"cannot load the poisons' source dataset {spec!r} (recorded in {manifest_path}): "
                             f"{err}. If the data moved, pass --dataset SPEC pointing at the copy") from None
    if not isinstance(recorded_hash, str):
        raise UserInputError(f"{manifest_path} records no dataset_content_hash, so the clean images cannot be "
                             "matched to the poisons; only poison directories written by ntga can be evaluated")
    if ds.content_hash != recorded_hash:
        given = f"{spec!r} (from --dataset)" if dataset is not None else f"{spec!r}"
        raise UserInputError(
            f"the source dataset changed since the poisons were made: {given} has content hash "
            f"{ds.content_hash[:16]}..., but {manifest_path} records {recorded_hash[:16]}...; "
            "pass --dataset SPEC pointing at an unchanged copy of the original data")
    return ds


def load_poisoned(poison_dir: str | Path, *, dataset: str | None = None, test_size: int | None = None,
                  seed: int = 0, cache_dir: str | Path | None = None, use_cache: bool = True,
                  limits: DecodeLimits | None = None) -> EvalData:
    """Loads a poison directory (sha256-verified) and the clean data it was made from.

    Args:
        poison_dir: written by ``ntga.generate`` (or ``ntga.poisondir.write_poison_dir``).
        dataset: a spec overriding the manifest's (e.g. the data moved); it must have
            the recorded content hash.
        test_size: stratified test subset (None: the whole test split).
        seed: seed of the test subset.
        cache_dir, use_cache: the dataset cache (``ntga.data.load_dataset``).
        limits: decode limits for the source dataset (``ntga.data.limits``).

    Raises:
        UserInputError: missing/corrupt poison directory, unloadable or changed source
            dataset, indices or image shapes that do not belong to it.
    """
    poisons = read_poison_dir(poison_dir)
    ds = _load_source(poisons, dataset, cache_dir, use_cache, limits)
    if tuple(poisons.x.shape[1:]) != ds.image_shape:
        raise UserInputError(f"{poisons.path / X_FILE} holds {'x'.join(map(str, poisons.x.shape[1:]))} images "
                             f"but {ds.spec} has {'x'.join(map(str, ds.image_shape))} images")
    if poisons.y.size and poisons.y.max() >= ds.num_classes:
        raise UserInputError(f"{poisons.path / Y_FILE} has label {poisons.y.max()} but {ds.spec} has only "
                             f"{ds.num_classes} classes")
    target = poisons.target_indices if poisons.target_indices is not None else np.zeros(0, np.int64)
    test_idx = _test_split(ds, test_size, seed)
    # Split validates that the stored indices fit this dataset and that the
    # target set was held out of the poisoned set.
    split = Split(ds, poisons.source_indices, target, test_idx, seed)
    files = poisons.manifest["files"]
    identity = {
        "mode": "poisons",
        "dataset_content_hash": ds.content_hash,
        "poison_x_sha256": files[X_FILE]["sha256"],
        "poison_y_sha256": files[Y_FILE]["sha256"],
        "train_indices_sha256": digest(split.train_idx),
        "test_indices_sha256": digest(split.test_idx),
    }
    manifest = {k: poisons.manifest[k] for k in MANIFEST_KEYS if k in poisons.manifest}
    describe = {
        "poisons": str(poisons.path), "dataset": ds.spec, "image_shape": list(ds.image_shape),
        "num_train": int(len(split.train_idx)), "num_test": int(len(split.test_idx)),
        "test_size": test_size, "num_classes": ds.num_classes,
        "labels_changed": int(np.sum(poisons.y != split.y_train)),
    }
    return EvalData(x_clean=split.x_train, y_clean=split.y_train, x_poison=poisons.x, y_poison=poisons.y,
                    x_test=split.x_test, y_test=split.y_test, num_classes=ds.num_classes, dataset=ds,
                    identity=identity, describe=describe, poison_manifest=manifest)


def load_clean(split: Split) -> EvalData:
    """Clean-only evaluation data from a split (its ``train_idx`` and ``test_idx``)."""
    ds = split.dataset
    identity = {
        "mode": "clean",
        "dataset_content_hash": ds.content_hash,
        "train_indices_sha256": digest(split.train_idx),
        "test_indices_sha256": digest(split.test_idx),
    }
    describe = {"dataset": ds.spec, "image_shape": list(ds.image_shape), "num_train": int(len(split.train_idx)),
                "num_test": int(len(split.test_idx)), "num_classes": ds.num_classes, "split_seed": split.seed}
    return EvalData(x_clean=split.x_train, y_clean=split.y_train, x_poison=None, y_poison=None,
                    x_test=split.x_test, y_test=split.y_test, num_classes=ds.num_classes, dataset=ds,
                    identity=identity, describe=describe)
