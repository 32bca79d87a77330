"""ntga.pixels: conversion, image checks, the eps-ball pieces and rounding within the budget.

PGD iterates are built from the same public pieces poison_block uses (ascent
direction, projection, random start, rounding), driven by random gradients so
that many (eps, norm, steps) combinations run without compiling a kernel;
hypothesis checks the projections' invariants (within the budget, within
[0, 1], idempotent), and each variant a caller keeps (delta vs box projection,
L2 floor, step order) is pinned against the expression it replaced.
"""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ntga import pixels
from ntga.attack import AttackConfig
from ntga.errors import UserInputError
from ntga.pixels import (
    as_float,
    as_uint8,
    ascent_direction,
    ascent_step,
    check_images,
    check_norm,
    clip_delta,
    linf_box,
    project,
    project_ball,
    project_delta,
    quantize_to_budget,
    random_delta,
    random_start,
    to_float,
    to_uint8,
    uint8_linf_cap,
)

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
@pytest.mark.slow
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


def test_pixel_round_trip():
    x = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)
    np.testing.assert_array_equal(to_uint8(to_float(x, np.float64)), x)
    np.testing.assert_array_equal(to_uint8(to_float(x, np.float32)), x)
    assert to_float(x).dtype == np.float32 and isinstance(to_float(x), np.ndarray)
    assert np.asarray(to_uint8(jax.numpy.asarray([[-0.2, 1.7]]))).tolist() == [[0, 255]]


# --------------------------------------------------------------------------- the projections (hypothesis)

images = st.tuples(st.integers(0, 2**31 - 1), st.sampled_from([np.float32, np.float64]))


def _problem(seed, dtype, spread=0.5):
    """Clean images in [0, 1] and candidates that stray outside the ball and outside [0, 1]."""
    rng = np.random.default_rng(seed)
    x_clean = rng.uniform(size=SHAPE).astype(dtype)
    x = (x_clean + spread * rng.normal(size=SHAPE)).astype(dtype)
    return x_clean, x


@settings(max_examples=40, deadline=None)
@given(budget=budgets, problem=images)
def test_project_is_within_budget_within_unit_range_and_idempotent(budget, problem):
    norm, eps = budget
    (seed, dtype), tol = problem, 4 * np.finfo(problem[1]).eps
    x_clean, x = _problem(seed, dtype)
    once = np.asarray(project(x, x_clean, eps, norm))
    assert once.dtype == dtype and float_budget_ok(once, x_clean, eps, norm, tol)
    twice = np.asarray(project(once, x_clean, eps, norm))
    # x_clean + (once - x_clean) rounds, so a second pass may move an entry by an ulp, no more.
    np.testing.assert_allclose(twice, once, rtol=0, atol=tol)


@settings(max_examples=40, deadline=None)
@given(budget=budgets, problem=images)
def test_project_ball_and_project_delta_keep_the_budget_and_are_idempotent(budget, problem):
    norm, eps = budget
    (seed, dtype), tol = problem, 4 * np.finfo(problem[1]).eps
    x_clean, x = _problem(seed, dtype)
    delta = x - x_clean
    ball = np.asarray(project_ball(jnp.asarray(delta), eps, norm))
    assert float_budget_ok(np.clip(x_clean + ball, 0, 1), x_clean, eps, norm, tol)
    again = np.asarray(project_ball(jnp.asarray(ball), eps, norm))
    if norm == "linf":
        np.testing.assert_array_equal(again, ball)  # a clip of a clip
    else:
        np.testing.assert_allclose(again, ball, rtol=0, atol=tol)
    for floor in (None, 1e-12):
        d = np.asarray(project_delta(jnp.asarray(delta), x_clean, eps, norm, floor=floor))
        assert float_budget_ok(x_clean + d, x_clean, eps, norm, tol)
        np.testing.assert_allclose(np.asarray(project_delta(jnp.asarray(d), x_clean, eps, norm, floor=floor)), d,
                                   rtol=0, atol=tol)


@settings(max_examples=40, deadline=None)
@given(eps=st.floats(1e-9, 1.0), problem=images)
def test_linf_box_is_the_ball_within_unit_range_idempotent_and_equals_clip_then_clip(eps, problem):
    seed, dtype = problem
    x_clean, x = _problem(seed, dtype)
    lo, hi = linf_box(jnp.asarray(x_clean), eps)
    once = np.asarray(jnp.clip(jnp.asarray(x), lo, hi))
    assert np.all(once >= 0) and np.all(once <= 1)
    assert np.all(once >= np.asarray(x_clean - dtype(eps))) and np.all(once <= np.asarray(x_clean + dtype(eps)))
    np.testing.assert_array_equal(np.asarray(jnp.clip(jnp.asarray(once), lo, hi)), once)
    # BEO clipped to [x0 - eps, x0 + eps] and then to [0, 1]; the box is the same, bit for bit.
    x0 = jnp.asarray(x_clean)
    two_clips = jnp.clip(jnp.clip(jnp.asarray(x), x0 - eps, x0 + eps), 0.0, 1.0)
    np.testing.assert_array_equal(np.asarray(two_clips), once)


@settings(max_examples=30, deadline=None)
@given(budget=budgets, problem=images)
def test_random_delta_lies_in_the_ball_and_random_start_projects_it(budget, problem):
    norm, eps = budget
    (seed, dtype), tol = problem, 4 * np.finfo(problem[1]).eps
    x_clean, _ = _problem(seed, dtype)
    key = jax.random.key(seed)
    delta = np.asarray(random_delta(key, SHAPE, dtype, eps, norm))
    assert delta.dtype == dtype
    if norm == "linf":
        assert np.max(np.abs(delta)) <= eps
    else:
        assert np.all(np.sqrt(np.sum(np.asarray(delta, np.float64) ** 2, axis=(1, 2, 3))) <= eps * (1 + tol))
    start = np.asarray(random_start(key, x_clean, eps, norm))
    np.testing.assert_array_equal(start, np.asarray(project(x_clean + delta, x_clean, eps, norm)))
    assert float_budget_ok(start, x_clean, eps, norm, tol)


# --------------------------------------------------------------------------- each caller's exact arithmetic


def _l2(v, floor):
    return jnp.maximum(jnp.sqrt(jnp.sum(v * v, axis=(1, 2, 3), keepdims=True)), floor)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_steps_and_floors_reproduce_the_expressions_they_replaced(dtype):
    g = jax.random.normal(jax.random.key(1), SHAPE, dtype).at[0].set(0.0)  # one image with a zero gradient
    step = 0.03
    np.testing.assert_array_equal(ascent_step(g, step, "linf"), step * jnp.sign(g))
    np.testing.assert_array_equal(ascent_direction(g, "linf"), jnp.sign(g))
    tiny = jnp.finfo(dtype).tiny
    np.testing.assert_array_equal(ascent_step(g, step, "l2"), step * (g / _l2(g, tiny)))  # NTGA
    # Adversarial training: floor 1e-12 and (step * g) / ||g||.
    np.testing.assert_array_equal(ascent_step(g, step, "l2", floor=1e-12, scale_first=True), step * g / _l2(g, 1e-12))
    np.testing.assert_array_equal(ascent_step(g, step, "linf", scale_first=True), step * jnp.sign(g))
    assert np.all(np.asarray(ascent_direction(g, "l2"))[0] == 0)
    d = 0.4 * g
    np.testing.assert_array_equal(project_ball(d, 0.1, "l2", floor=1e-12),
                                  d * jnp.minimum(1.0, 0.1 / _l2(d, 1e-12)))
    np.testing.assert_array_equal(project_ball(d, 0.1, "l2"), d * jnp.minimum(1.0, 0.1 / _l2(d, tiny)))
    # A traced eps, as EM passes it.
    np.testing.assert_array_equal(jax.jit(lambda e: project_ball(d, e, "linf"))(jnp.asarray(0.1, dtype)),
                                  jnp.clip(d, -0.1, 0.1))


@pytest.mark.slow
def test_random_delta_reproduces_the_draws_it_replaced(key):
    shape, eps = (3, 4, 4, 2), 0.2
    np.testing.assert_array_equal(random_delta(key, shape, jnp.float32, eps, "linf"),
                                  jax.random.uniform(key, shape, jnp.float32, -eps, eps))
    k_dir, k_rad = jax.random.split(key)
    direction = jax.random.normal(k_dir, shape, jnp.float32)
    direction = direction / _l2(direction, 1e-12)
    radius = eps * jax.random.uniform(k_rad, (3, 1, 1, 1), jnp.float32) ** (1.0 / 32)
    np.testing.assert_array_equal(random_delta(key, shape, jnp.float32, eps, "l2", floor=1e-12), direction * radius)


def test_clip_delta_keeps_numpy_on_the_host():
    x = np.array([[[[0.0], [0.5]], [[0.95], [1.0]]]], np.float32)
    delta = np.array([[[[-0.1], [0.1]], [[0.1], [0.0]]]], np.float32)
    out = clip_delta(delta, x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.clip(x + delta, 0.0, 1.0) - x)
    assert isinstance(clip_delta(jnp.asarray(delta), jnp.asarray(x)), jax.Array)


def test_unknown_norms_are_refused_everywhere():
    x = jnp.zeros(SHAPE)
    calls = [lambda: check_norm("l1"), lambda: project(x, x, 0.1, "l1"), lambda: project_ball(x, 0.1, "l1"),
             lambda: ascent_direction(x, "l1"), lambda: random_delta(jax.random.key(0), SHAPE, jnp.float32, 0.1, "l1"),
             lambda: quantize_to_budget(x, x, 0.1, "l1"), lambda: pixels.perturbation_norms(x, x, "l1")]
    for call in calls:
        with pytest.raises(UserInputError, match="norm='l1' is invalid; accepted: linf, l2"):
            call()
    assert check_norm("l2") == "l2" and pixels.NORMS == ("linf", "l2")


# --------------------------------------------------------------------------- conversion and checks


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from([np.float16, np.float32, np.float64]))
def test_as_uint8_rounds_like_the_breakers_always_did(seed, dtype):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-0.2, 1.2, size=(2, 5, 5, 3)).astype(dtype)
    x.flat[:4] = (np.array([0.5, 1.5, 2.5, 254.5]) / 255).astype(dtype)  # near-ties
    historical = np.clip(np.rint(x.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(as_uint8(x), historical)
    np.testing.assert_array_equal(to_uint8(x, np.float64), historical)
    u8 = rng.integers(0, 256, size=(2, 3, 3, 1), dtype=np.uint8)
    assert as_uint8(u8) is u8 or np.shares_memory(as_uint8(u8), u8)


def test_as_float_converts_uint8_and_clips_floats_on_request():
    u8 = np.array([0, 1, 128, 255], np.uint8)
    np.testing.assert_array_equal(as_float(u8), u8.astype(np.float32) / np.float32(255.0))
    np.testing.assert_array_equal(as_float(u8, np.float64), u8 / 255.0)
    f = np.array([-0.5, 0.25, 1.5], np.float64)
    out = as_float(f)
    assert out.dtype == np.float32 and out.tolist() == [0.0, 0.25, 1.0]
    assert as_float(f, clip=False).tolist() == [-0.5, 0.25, 1.5]
    on_device = as_float(jnp.asarray(u8), clip=False)
    assert isinstance(on_device, jax.Array)
    np.testing.assert_array_equal(on_device, jnp.asarray(u8).astype(jnp.float32) / 255.0)
    np.testing.assert_array_equal(jax.jit(lambda v: as_float(v, clip=False))(jnp.asarray(u8)), on_device)


def test_check_images_accepts_both_conventions():
    u8 = np.zeros((2, 4, 4, 3), np.uint8)
    assert check_images(u8, "x") is u8
    floats = np.full((2, 4, 4, 1), 1 + 1e-7, np.float32)  # float error just above 1 is tolerated
    assert check_images(floats, "x").dtype == np.float32
    assert check_images(np.zeros((2, 4, 4)), "x", add_channel=True).shape == (2, 4, 4, 1)
    # Non-strict (the breakers): layout and dtype only.
    assert check_images(np.full((0, 4, 4, 1), 7.0), "breaker 'x'", strict=False).shape == (0, 4, 4, 1)


@pytest.mark.parametrize("x, kwargs, match", [
    (np.zeros((2, 4, 4), np.uint8), {}, r"x_train: expected images \[N, H, W, C\], got shape \(2, 4, 4\)"),
    (np.zeros((2, 4), np.uint8), dict(add_channel=True), r"\[N, H, W, C\] \(or \[N, H, W\]\), got shape \(2, 4\)"),
    (np.zeros((0, 4, 4, 1), np.uint8), {}, r"x_train: no images \(expected at least one\)"),
    (np.zeros((2, 4, 4, 1), np.int64), {}, r"expected uint8 in \[0, 255\] or float in \[0, 1\], got dtype int64"),
    (np.zeros((2, 4, 4, 1), np.int64), dict(strict=False), "got dtype int64"),
    (np.full((2, 4, 4, 1), 200.0), {}, r"float images must lie in \[0, 1\], found \[200, 200\] \(divide by 255"),
    (np.full((2, 4, 4, 1), -0.5), {}, r"found \[-0.5, -0.5\]$"),
    (np.full((2, 4, 4, 1), np.nan), {}, r"found NaN"),
    (np.full((2, 4, 4, 1), np.inf), {}, r"found \[inf, inf\]"),
])
def test_check_images_says_what_is_wrong_and_what_is_accepted(x, kwargs, match):
    with pytest.raises(UserInputError, match=match):
        check_images(x, "x_train", **kwargs)


def test_pixels_is_the_ground_floor():
    """Importing ntga.pixels loads nothing from the attack, the methods or defenses."""
    code = ("import sys, ntga.pixels; bad = sorted(m for m in sys.modules if m.startswith(('ntga.attack', "
            "'ntga.methods', 'defenses'))); print(bad); sys.exit(bool(bad))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
