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
from pathlib import Path
from typing import Any

import numpy as np

from ntga.data import Dataset, Split, load_dataset, make_split
from ntga.data.load import is_dataset_spec
from ntga.data.limits import DecodeLimits
from ntga.errors import UserInputError
from ntga.pixels import check_images, to_float, to_uint8
from ntga.run.fingerprint import array_sha256
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
    return array_sha256(np.asarray(a, np.int64))


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


# --- poisons made by other tools ---------------------------------------------------------

FOREIGN_FORMS = ("a poison directory written by ntga.generate", "IMAGES.npy,LABELS.npy (a pair of .npy files)",
                 "a dataset spec whose training split holds the poisoned images (e.g. folder:PATH, npz:FILE)")


def is_poison_dir(source: str | Path) -> bool:
    """Whether ``source`` is a folder with a poison-directory manifest (else: a foreign source)."""
    path = Path(source)
    return path.is_dir() and (path / "manifest.json").is_file()


def _foreign_images(x: Any, where: str, shape: tuple[int, ...]) -> tuple[np.ndarray, dict[str, Any]]:
    """Poisoned images as uint8 [N, H, W, C]; floats in [0, 1] are rounded to the nearest level."""
    x = check_images(x, where, add_channel=len(shape) == 3 and shape[-1] == 1)
    if tuple(x.shape[1:]) != tuple(shape):
        raise UserInputError(f"{where}: images of shape {x.shape} do not match the clean dataset's "
                             f"[N, {', '.join(map(str, shape))}]")
    if x.dtype == np.uint8:
        return x, {"pixels": "uint8"}
    out, change = np.empty(x.shape, np.uint8), 0.0
    for start in range(0, len(x), 4096):  # chunks: no float64 copy of a whole CIFAR-sized array
        part = np.clip(np.asarray(x[start:start + 4096], np.float64), 0.0, 1.0)
        out[start:start + 4096] = to_uint8(part)
        change = max(change, float(np.max(np.abs(to_float(out[start:start + 4096], np.float64) - part))))
    return out, {"pixels": f"float {x.dtype}, rounded to uint8 (largest change {change:.2g})"}


def _foreign_labels(y: Any, where: str, n: int, num_classes: int) -> np.ndarray:
    """int64 [N] labels from int labels [N] or one-hot / probability rows [N, k]."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[0] == n and y.shape[1] == num_classes:
        rows = np.asarray(y, np.float64)
        top = rows.max(axis=1, keepdims=True)
        if not np.all(np.isfinite(rows)) or np.any(top <= 0) or np.any((rows == top).sum(axis=1) != 1):
            raise UserInputError(f"{where}: label rows [{n}, {num_classes}] must each have one largest, positive "
                                 "entry (one-hot or class probabilities)")
        y = np.argmax(rows, axis=1)
    if y.ndim != 1 or y.shape[0] != n:
        raise UserInputError(f"{where}: labels of shape {y.shape} do not fit the {n} images (expected [{n}] "
                             f"or one-hot [{n}, {num_classes}])")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.isfinite(y)) or np.any(y != np.rint(y)):
            raise UserInputError(f"{where}: labels must be integer classes, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= num_classes:
        raise UserInputError(f"{where}: labels lie in [{y.min()}, {y.max()}], the clean dataset has "
                             f"{num_classes} classes [0, {num_classes - 1}]")
    return y


def _load_npy(path_text: str) -> np.ndarray:
    path = Path(path_text).expanduser()
    if path.suffix != ".npy":
        raise UserInputError(f"{path_text!r} is not a .npy file; accepted --poisons forms: " + "; ".join(FOREIGN_FORMS))
    if not path.is_file():
        raise UserInputError(f"{path_text}: no such file")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:  # object arrays need pickle, which is never used here
        raise UserInputError(f"{path_text}: cannot be read without unpickling ({err}); save it as a plain "
                             "numeric array") from None
    except OSError as err:
        raise UserInputError(f"{path_text}: not a readable .npy file ({err})") from None


def class_matched_subset(labels: np.ndarray, wanted: np.ndarray, num_classes: int, seed: int,
                         what: str) -> np.ndarray:
    """Indices into ``labels`` with exactly the class counts of ``wanted``, drawn with ``seed``, sorted."""
    need = np.bincount(wanted, minlength=num_classes)
    perm = np.random.default_rng([seed, 2]).permutation(len(labels))
    chosen = []
    for c in range(num_classes):
        pool = perm[labels[perm] == c]
        if len(pool) < need[c]:
            raise UserInputError(f"the poisons have {need[c]} images of class {c}, but {what} has only "
                                 f"{len(pool)}: the clean baseline cannot match them")
        chosen.append(pool[:need[c]])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def load_foreign_poisons(source: str, *, dataset: str | None, test_size: int | None = None, seed: int = 0,
                         cache_dir: str | Path | None = None, use_cache: bool = True,
                         limits: DecodeLimits | None = None) -> EvalData:
    """Poisons made by another tool, evaluated against the clean dataset ``dataset``.

    Args:
        source: ``IMAGES.npy,LABELS.npy`` (uint8 [N, H, W, C] or float in [0, 1]; int labels [N]
            or one-hot [N, k]; read without pickle), or a dataset spec whose *training* split
            holds the poisoned images (e.g. an APBench export as ``folder:PATH``).
        dataset: the clean dataset (required): its test split is the test set, and the clean
            baseline trains on its training images.
        test_size, seed: stratified test subset and seed, as for poison directories.

    Which clean image each poison came from is unknown, so the clean baseline is
    the whole clean training split when the sizes agree, and otherwise a seeded
    random subset of it with exactly the poisons' class counts; the results say so.

    Raises:
        UserInputError: no ``--dataset``, unreadable files, images or labels that do not
            fit the clean dataset.
    """
    if Path(source).is_dir():
        raise UserInputError(f"--poisons {source} is a folder without manifest.json, so not a poison directory "
                             "written by ntga.generate; for a folder of poisoned images write folder:PATH (and "
                             "--dataset SPEC for the clean data)")
    parts = [p.strip() for p in source.split(",")]
    is_pair = len(parts) == 2 and all(p.endswith(".npy") for p in parts)
    if not is_pair and not (len(parts) == 1 and is_dataset_spec(source)):
        where = "does not exist" if not Path(source).exists() else "is not understood"
        raise UserInputError(f"--poisons {source!r} {where}; accepted forms: " + "; ".join(FOREIGN_FORMS))
    if dataset is None:
        raise UserInputError(f"--poisons {source} is not a poison directory (no manifest.json), so --dataset "
                             "SPEC is required: the clean data whose test split is the test set and whose training "
                             "images are the clean baseline")
    ds = load_dataset(dataset, cache_dir=cache_dir, use_cache=use_cache, limits=limits)
    if is_pair:
        where = source
        x_raw, y_raw = _load_npy(parts[0]), _load_npy(parts[1])
        origin = "npy"
    else:
        poisoned = load_dataset(source, cache_dir=cache_dir, use_cache=use_cache, limits=limits)
        where, origin = f"{source} (training split)", "dataset"
        x_raw, y_raw = poisoned.x_train, poisoned.y_train
    x, pixels = _foreign_images(x_raw, where, ds.image_shape)
    y = _foreign_labels(y_raw, where, len(x), ds.num_classes)
    if len(x) == len(ds.x_train):
        train_idx = np.arange(len(ds.x_train), dtype=np.int64)
        baseline = f"the whole training split of {ds.spec} (the poisons' source indices are unknown)"
    else:
        train_idx = class_matched_subset(ds.y_train, y, ds.num_classes, seed, f"{ds.spec}'s training split")
        baseline = (f"a random subset of {ds.spec}'s training split with the poisons' class counts (seed {seed}); "
                    "the poisons' source indices are unknown")
    split = Split(ds, train_idx, np.zeros(0, np.int64), _test_split(ds, test_size, seed), seed)
    identity = {
        "mode": "poisons",
        "poisons_source": "external",
        "dataset_content_hash": ds.content_hash,
        "poison_x_sha256": array_sha256(x),
        "poison_y_sha256": array_sha256(y),
        "train_indices_sha256": digest(split.train_idx),
        "test_indices_sha256": digest(split.test_idx),
    }
    describe = {
        "poisons": source, "poisons_format": origin, "dataset": ds.spec, "image_shape": list(ds.image_shape),
        "num_train": int(len(x)), "num_test": int(len(split.test_idx)), "test_size": test_size,
        "num_classes": ds.num_classes, "source_indices": "unknown", "clean_baseline": baseline,
        "poison_pixels": pixels["pixels"],
    }
    return EvalData(x_clean=split.x_train, y_clean=split.y_train, x_poison=x, y_poison=y, x_test=split.x_test,
                    y_test=split.y_test, num_classes=ds.num_classes, dataset=ds, identity=identity,
                    describe=describe, poison_manifest={})
