"""Deterministic splits: which training images to protect, which are the attack's targets.

Reference semantics (NTGA, Yuan & Wu 2021): the training split is permuted
with the seed; the *last* ``target_size`` images of the permutation form the
attack's held-out target set (true labels), the rest is the pool to poison.
``perm = default_rng(seed).permutation(N)``, ``target = perm[N - t:]``,
``pool = perm[:N - t]``. With MNIST/CIFAR-10 and the default target size
(10,000) that is the reference's 50k/40k poisoned examples. (The generator
is numpy's PCG64 ``default_rng``, so a seed does not reproduce the reference's
exact indices, only its construction.)

Subsets (``train_size``, ``test_size``) are stratified: each class gets its
proportional share, ``floor(size * count / n)``, and the leftover slots go to
the classes with the largest remainders (ties to the lower class index), so
the counts sum exactly to the size. Within a class the earliest examples in
the seeded order are taken, and the result stays **in that seeded order**
(not sorted): contiguous blocks of ``train_idx`` are class-mixed, as the
reference's blocks of 512 are. Test indices are ``arange(M)`` when
``test_size`` is None, otherwise a stratified subset of a permutation drawn
from an independent stream (``default_rng([seed, 1])``), so choosing a test
size never changes the training split.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from ntga.data.dataset import Dataset
from ntga.errors import UserInputError

MAX_DEFAULT_TARGET = 10_000


def default_target_size(num_train: int) -> int:
    """``min(10_000, round(0.2 * num_train))``, computed exactly in integers."""
    return min(MAX_DEFAULT_TARGET, (2 * int(num_train) + 5) // 10)


def stratified_subset(indices: np.ndarray, labels: np.ndarray, size: int, num_classes: int) -> np.ndarray:
    """A class-proportional subset of ``indices``, kept in their order.

    Args:
      indices: int64 ``[n]`` candidate indices, in priority order.
      labels: int64 ``[n]`` class of each candidate.
      size: how many to keep, ``0 <= size <= n``.
      num_classes: K; labels lie in ``[0, K)``.

    Returns:
      int64 ``[size]``: per class ``floor(size * c_k / n)`` plus one for the
      classes with the largest remainders; the first candidates of each class.
    """
    n = len(indices)
    counts = np.bincount(labels, minlength=num_classes).astype(np.int64)
    quota = counts * size // n
    remainder = counts * size - quota * n
    short = size - int(quota.sum())
    # Largest remainder first; lexsort's last key is primary, ties -> lower class.
    order = np.lexsort((np.arange(num_classes), -remainder))
    quota[order[:short]] += 1
    # Rank of each candidate within its class, in candidate order.
    by_class = np.argsort(labels, kind="stable")
    rank = np.empty(n, np.int64)
    rank[by_class] = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    return indices[rank < quota[labels]].astype(np.int64)


@dataclass(frozen=True, eq=False)
class Split:
    """Index sets into one :class:`Dataset`.

    Attributes:
      dataset: the dataset the indices refer to.
      train_idx: int64 ``[n]`` indices into ``dataset.x_train``: the examples to
        protect/poison (and to train victims on), in the seeded order.
      target_idx: int64 ``[t]`` indices into ``dataset.x_train``: the attack's
        held-out target set, disjoint from ``train_idx``.
      test_idx: int64 ``[m]`` indices into ``dataset.x_test``.
      seed: the seed the split was drawn with.
    """

    dataset: Dataset
    train_idx: np.ndarray
    target_idx: np.ndarray
    test_idx: np.ndarray
    seed: int

    def __post_init__(self):
        # Splits are also rebuilt from stored indices (a poison directory), so
        # check they fit this dataset rather than fail later with an IndexError.
        sizes = {"train_idx": len(self.dataset.x_train), "target_idx": len(self.dataset.x_train)}
        sizes["test_idx"] = len(self.dataset.x_test)
        for name, n in sizes.items():
            idx = np.asarray(getattr(self, name))
            if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
                raise UserInputError(f"Split.{name} must be a 1-D integer array, got {idx.dtype} {idx.shape}")
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise UserInputError(
                    f"Split.{name} holds index {int(idx.max() if idx.max() >= n else idx.min())}, outside "
                    f"[0, {n}) for {self.dataset.spec}; were the indices made for another dataset?"
                )
            idx = idx.astype(np.int64)  # always a copy we own, so read-only does not touch the caller's array
            idx.setflags(write=False)
            object.__setattr__(self, name, idx)
        if np.intersect1d(self.train_idx, self.target_idx).size:
            raise UserInputError(
                "Split.train_idx and Split.target_idx overlap; the target set must be held out"
            )

    def require_classes(self, minimum: int = 2) -> None:
        """Refuses a training split with fewer than ``minimum`` classes present.

        Protection methods and victims need at least two classes; a protected
        directory of one class would only be refused later by ``defenses.evaluate``.
        """
        present = np.unique(self.y_train)
        if len(present) < minimum:
            names = [self.dataset.class_names[int(c)] for c in present]
            raise UserInputError(f"{self.dataset.spec}: the training split holds {len(present)} class(es) {names}; "
                                 f"protection and victims need at least {minimum} classes")

    @property
    def x_train(self) -> np.ndarray:
        """uint8 ``[n, H, W, C]``."""
        return self.dataset.x_train[self.train_idx]

    @property
    def y_train(self) -> np.ndarray:
        return self.dataset.y_train[self.train_idx]

    @property
    def x_target(self) -> np.ndarray:
        """uint8 ``[t, H, W, C]``."""
        return self.dataset.x_train[self.target_idx]

    @property
    def y_target(self) -> np.ndarray:
        return self.dataset.y_train[self.target_idx]

    @property
    def x_test(self) -> np.ndarray:
        """uint8 ``[m, H, W, C]``."""
        return self.dataset.x_test[self.test_idx]

    @property
    def y_test(self) -> np.ndarray:
        return self.dataset.y_test[self.test_idx]

    def __repr__(self) -> str:
        return (
            f"Split({self.dataset.spec!r}, seed={self.seed}, train={len(self.train_idx)}, "
            f"target={len(self.target_idx)}, test={len(self.test_idx)})"
        )


def _size(value, name: str, flag: str, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        what = "a positive integer" if minimum == 1 else "a non-negative integer"
        raise UserInputError(f"{name} ({flag}) must be {what}, got {value!r}")
    return int(value)


def make_split(
    ds: Dataset,
    *,
    train_size: int | None = None,
    target_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
) -> Split:
    """Draws the train (pool), target and test index sets of ``ds`` for ``seed``.

    Args:
      ds: the dataset.
      train_size: examples to protect; None = the whole pool (N - target_size).
      target_size: the attack's held-out target set; None =
        :func:`default_target_size` (N); 0 is allowed (no target set).
      test_size: test examples; None = the whole test split.
      seed: non-negative integer; the only randomness.

    Raises:
      UserInputError: a size that is not a positive integer or does not fit,
        naming the value and the largest allowed.
    """
    n, m = len(ds.x_train), len(ds.x_test)
    seed = _size(seed, "seed", "--seed", 0)
    train_size = _size(train_size, "train_size", "--train-size", 1)
    test_size = _size(test_size, "test_size", "--test-size", 1)
    target_size = _size(target_size, "target_size", "--target-size", 0)
    if target_size is None:
        target_size = default_target_size(n)
    if target_size > n - 1:
        raise UserInputError(
            f"target_size (--target-size) {target_size} is too large: {ds.spec} has {n} training images "
            f"and at least one must remain to protect; at most {n - 1}"
        )
    pool_size = n - target_size
    if train_size is not None and train_size > pool_size:
        raise UserInputError(
            f"train_size (--train-size) {train_size} is too large: {ds.spec} has {n} training images, "
            f"{target_size} go to the target set, so at most {pool_size} (or lower --target-size)"
        )
    if test_size is not None and test_size > m:
        raise UserInputError(
            f"test_size (--test-size) {test_size} is too large: {ds.spec} has {m} test images; at most {m}"
        )
    perm = np.random.default_rng(seed).permutation(n).astype(np.int64)
    target_idx, pool = perm[pool_size:], perm[:pool_size]
    train_idx = pool
    if train_size is not None:
        train_idx = stratified_subset(pool, ds.y_train[pool], train_size, ds.num_classes)
    test_idx = np.arange(m, dtype=np.int64)
    if test_size is not None:
        test_perm = np.random.default_rng([seed, 1]).permutation(m).astype(np.int64)
        test_idx = stratified_subset(test_perm, ds.y_test[test_perm], test_size, ds.num_classes)
    return Split(ds, train_idx, target_idx, test_idx, seed)
