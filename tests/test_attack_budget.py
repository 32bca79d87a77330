"""Budget invariants of the attack's building blocks (hypothesis), and the pixel helpers.

PGD iterates are built from the same public pieces poison_block uses (ascent
direction, projection, random start, rounding), driven by random gradients so
that many (eps, norm, steps) combinations run without compiling a kernel.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ntga.attack import (
    AttackConfig,
    ascent_direction,
    one_hot,
    project,
    quantize_to_budget,
    random_start,
    to_float,
    to_uint8,
    uint8_linf_cap,
)
from ntga.errors import UserInputError

SHAPE = (8, 6, 6, 1)


def float_budget_ok(x, x_block, eps, norm, tol):
    x, x_block = np.asarray(x, np.float64), np.asarray(x_block, np.float64)
    in_range = np.all(x >= 0) and np.all(x <= 1)
    delta = x - x_block
    if norm == "linf":
        return in_range and np.max(np.abs(delta)) <= eps + tol
    return in_range and np.all(np.sqrt(np.sum(delta**2, axis=(1, 2, 3))) <= eps * (1 + tol) + tol)


def uint8_budget_ok(x_u8, x_block, eps, norm):
    base = np.round(np.clip(np.asarray(x_block, np.float64), 0, 1) * 255).astype(np.int64)
    delta = np.asarray(x_u8).astype(np.int64) - base
    if norm == "linf":
        # uint8_linf_cap deliberately rounds a budget within 1e-9 levels of an integer up (8/255 * 255
        # can land just below 8), so eps = 1 - 1e-16 allows 255 levels: the same 1e-9 here, no more.
        return np.max(np.abs(delta)) <= uint8_linf_cap(eps) and np.max(np.abs(delta)) <= 255 * eps + 1e-9
    return np.all(np.sqrt(np.sum((delta / 255.0) ** 2, axis=(1, 2, 3))) <= eps)


budgets = st.one_of(
    st.tuples(st.just("linf"), st.floats(1 / 255, 1.0)),
    st.tuples(st.just("l2"), st.floats(1 / 255, 4.0)),
)


@settings(max_examples=30, deadline=None)
@given(budget=budgets, steps=st.integers(1, 6), seed=st.integers(0, 2**31 - 1), on_grid=st.booleans(),
       use_random_start=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]))
def test_pgd_iterates_and_rounding_stay_in_budget(budget, steps, seed, on_grid, use_random_start, dtype):
    norm, eps = budget
    config = AttackConfig(eps=eps, norm=norm, steps=steps)
    rng = np.random.default_rng(seed)
    x_block = rng.uniform(size=SHAPE)
    if on_grid:
        x_block = np.round(x_block * 255) / 255
    x_block = x_block.astype(dtype)
    key = jax.random.key(seed)
    x = random_start(key, x_block, eps, norm) if use_random_start else x_block
    tol = 4 * np.finfo(dtype).eps
    assert float_budget_ok(x, x_block, eps, norm, tol)
    for i in range(steps):
        grad = jax.random.normal(jax.random.fold_in(key, i), SHAPE, dtype)
        x = project(x + config.step_size * ascent_direction(grad, norm), x_block, eps, norm)
        assert x.dtype == dtype
        assert float_budget_ok(x, x_block, eps, norm, tol)
    x_u8 = np.asarray(quantize_to_budget(x, x_block, eps, norm))
    assert x_u8.dtype == np.uint8 and x_u8.shape == SHAPE
    assert uint8_budget_ok(x_u8, x_block, eps, norm)


@settings(max_examples=30, deadline=None)
@given(budget=budgets, seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from([np.float32, np.float64]))
def test_rounding_restores_budget_on_the_boundary(budget, seed, dtype):
    """Iterates exactly on the ball's surface are where naive rounding breaks the budget."""
    norm, eps = budget
    rng = np.random.default_rng(seed)
    x_block = (rng.integers(0, 256, size=SHAPE) / 255).astype(dtype)
    x = project(x_block + 10.0 * rng.normal(size=SHAPE).astype(dtype), x_block, eps, norm)
    x_u8 = np.asarray(quantize_to_budget(x, x_block, eps, norm))
    assert uint8_budget_ok(x_u8, x_block, eps, norm)


def test_linf_rounding_clips_to_the_cap():
    x_block = np.full((1, 2, 2, 1), 100 / 255)
    x_adv = x_block + 0.3  # 76.5 levels: plain rounding would give 77 > floor(76.5)
    x_u8 = np.asarray(quantize_to_budget(x_adv, x_block, 0.3, "linf"))
    np.testing.assert_array_equal(x_u8, 176)


def test_l2_rounding_shrinks_when_rounding_overshoots():
    x_block = np.full((1, 2, 2, 1), 100 / 255)
    eps = 1.2 / 255  # radius 1.2 uint8 levels
    x_adv = x_block + 0.6 / 255  # norm 1.2 levels, on the boundary; plain rounding gives 4 x 1 level, norm 2
    x_u8 = np.asarray(quantize_to_budget(x_adv, x_block, eps, "l2"))
    assert uint8_budget_ok(x_u8, x_block, eps, "l2")
    np.testing.assert_array_equal(x_u8, 100)  # shrunk and rounded toward zero


def test_linf_caps():
    assert uint8_linf_cap(8 / 255) == 8
    assert uint8_linf_cap(0.3) == 76
    assert uint8_linf_cap(1.0) == 255


def test_pixel_round_trip_and_one_hot():
    x = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)
    np.testing.assert_array_equal(to_uint8(to_float(x, np.float64)), x)
    np.testing.assert_array_equal(to_uint8(to_float(x, np.float32)), x)
    assert to_float(x).dtype == np.float32 and isinstance(to_float(x), np.ndarray)
    assert np.asarray(to_uint8(jax.numpy.asarray([[-0.2, 1.7]]))).tolist() == [[0, 255]]
    np.testing.assert_array_equal(one_hot(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
    with pytest.raises(UserInputError, match="labels range"):
        one_hot(np.array([0, 3]), 3)
    with pytest.raises(UserInputError, match="integer"):
        one_hot(np.array([0.5]), 3)
