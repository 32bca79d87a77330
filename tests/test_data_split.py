"""Splits: the reference permutation semantics, exact stratification, validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntga.data import Dataset, default_target_size, load_dataset, make_split, stratified_subset
from ntga.errors import UserInputError


def dataset(labels_train, labels_test=(0, 0), k=None) -> Dataset:
    y, yt = np.asarray(labels_train, np.int64), np.asarray(labels_test, np.int64)
    k = k or int(max(y.max(), yt.max())) + 1
    return Dataset(
        "synthetic",
        np.zeros((len(y), 2, 2, 1), np.uint8),
        y,
        np.zeros((len(yt), 2, 2, 1), np.uint8),
        yt,
        tuple(str(i) for i in range(k)),
        "0" * 64,
    )


@pytest.mark.parametrize(
    "n, t", [(60_000, 10_000), (50_000, 10_000), (1352, 270), (7, 1), (3, 1), (2, 0), (0, 0)]
)
def test_default_target_size(n, t):
    assert default_target_size(n) == t == min(10_000, round(0.2 * n))


def test_reference_permutation_semantics():
    ds = dataset(np.arange(50) % 5)
    s = make_split(ds, seed=3)
    perm = np.random.default_rng(3).permutation(50)
    np.testing.assert_array_equal(s.target_idx, perm[40:])  # the LAST target_size are the targets
    np.testing.assert_array_equal(s.train_idx, perm[:40])  # the rest, in permuted order
    np.testing.assert_array_equal(s.test_idx, np.arange(2))
    assert s.train_idx.dtype == s.target_idx.dtype == s.test_idx.dtype == np.int64


def test_largest_remainder_counts_and_pool_order():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    ds = dataset(labels)
    s = make_split(ds, train_size=7, target_size=0, seed=0)
    # quotas 3.5, 2.1, 1.4 -> floors 3, 2, 1 (6); the one left goes to class 0 (remainder .5)
    np.testing.assert_array_equal(np.bincount(labels[s.train_idx], minlength=3), [4, 2, 1])
    pool = np.random.default_rng(0).permutation(100)
    pos = {int(v): i for i, v in enumerate(pool)}
    assert [pos[int(i)] for i in s.train_idx] == sorted(pos[int(i)] for i in s.train_idx)  # pool order kept


def test_test_subset_is_stratified_and_does_not_move_the_train_split():
    ds = dataset(np.arange(40) % 4, labels_test=np.arange(20) % 4)
    a = make_split(ds, train_size=8, seed=1)
    b = make_split(ds, train_size=8, test_size=8, seed=1)
    np.testing.assert_array_equal(a.train_idx, b.train_idx)
    np.testing.assert_array_equal(a.target_idx, b.target_idx)
    np.testing.assert_array_equal(np.bincount(b.y_test), [2, 2, 2, 2])
    assert len(set(b.test_idx.tolist())) == 8


def test_seeds_change_the_split_and_repeat_exactly():
    ds = dataset(np.arange(30) % 3)
    a, b, c = (make_split(ds, train_size=9, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.train_idx, b.train_idx)
    assert not np.array_equal(a.train_idx, c.train_idx)


def test_split_properties_index_the_dataset():
    ds = load_dataset("digits")
    s = make_split(ds, train_size=20, target_size=10, test_size=30, seed=0)
    assert (
        s.x_train.shape == (20, 8, 8, 1)
        and s.x_target.shape == (10, 8, 8, 1)
        and s.x_test.shape == (30, 8, 8, 1)
    )
    np.testing.assert_array_equal(s.y_train, ds.y_train[s.train_idx])
    np.testing.assert_array_equal(s.x_target, ds.x_train[s.target_idx])
    np.testing.assert_array_equal(s.y_test, ds.y_test[s.test_idx])
    assert "train=20" in repr(s)


def test_zero_target_size_is_allowed():
    s = make_split(dataset(np.arange(10) % 2), target_size=0)
    assert len(s.target_idx) == 0 and len(s.train_idx) == 10


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(train_size=9), r"train_size \(--train-size\) 9 is too large: .* at most 8"),
        (dict(train_size=10, target_size=1), r"train_size \(--train-size\) 10 is too large: .* at most 9"),
        (dict(target_size=10), r"target_size \(--target-size\) 10 is too large: .* at most 9"),
        (dict(test_size=3), r"test_size \(--test-size\) 3 is too large: .* at most 2"),
        (dict(train_size=0), r"train_size \(--train-size\) must be a positive integer, got 0"),
        (dict(test_size=-1), r"test_size \(--test-size\) must be a positive integer, got -1"),
        (dict(train_size=2.5), r"must be a positive integer, got 2.5"),
        (dict(train_size=True), r"must be a positive integer, got True"),
        (dict(target_size=-1), r"target_size \(--target-size\) must be a non-negative integer"),
        (dict(seed=-1), r"seed \(--seed\) must be a non-negative integer"),
    ],
)
def test_sizes_are_validated(kwargs, message):
    with pytest.raises(UserInputError, match=message):
        make_split(dataset(np.arange(10) % 2), **kwargs)


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(0, 12), min_size=1, max_size=5).filter(lambda c: sum(c) >= 2),
    frac=st.floats(0.0, 1.0),
    target_frac=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**31),
)
def test_split_invariants(counts, frac, target_frac, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    ds = dataset(labels, k=len(counts))
    n = len(labels)
    target = min(int(target_frac * n), n - 1)
    pool = n - target
    size = max(1, int(frac * pool))
    s = make_split(ds, train_size=size, target_size=target, seed=seed)
    assert len(s.train_idx) == size and len(s.target_idx) == target
    assert len(np.intersect1d(s.train_idx, s.target_idx)) == 0 and len(set(s.train_idx.tolist())) == size
    # Each class within one of its exact proportional share of the pool.
    pool_counts = np.bincount(
        labels[np.random.default_rng(seed).permutation(n)[:pool]], minlength=len(counts)
    )
    got = np.bincount(labels[s.train_idx], minlength=len(counts))
    share = pool_counts * size / pool
    assert np.all(got >= np.floor(share)) and np.all(got <= np.ceil(share)) and np.all(got <= pool_counts)
    again = make_split(ds, train_size=size, target_size=target, seed=seed)
    np.testing.assert_array_equal(s.train_idx, again.train_idx)


def test_stratified_subset_of_everything_is_the_identity():
    idx = np.array([5, 3, 9, 1])
    np.testing.assert_array_equal(stratified_subset(idx, np.array([1, 0, 1, 0]), 4, 2), idx)


def test_split_built_from_stored_indices_is_checked():
    from ntga.data import Split

    ds = dataset(np.arange(10) % 2)
    s = Split(ds, [0, 1, 2], np.array([3], np.int32), [1], seed=0)
    assert s.train_idx.dtype == np.int64 and not s.train_idx.flags.writeable
    with pytest.raises(UserInputError, match=r"Split.train_idx holds index 10, outside \[0, 10\)"):
        Split(ds, [0, 10], [], [0], seed=0)
    with pytest.raises(UserInputError, match="overlap"):
        Split(ds, [0, 1], [1], [0], seed=0)
