"""Tests for the budget checks, and that the attack's uint8 rounding passes them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntga.budget import check_budget
from ntga.errors import UserInputError
from ntga.pixels import perturbation_norms, quantize_to_budget


def test_check_budget_linf_exact_and_over():
    clean = np.full((4, 8, 8, 3), 100, np.uint8)
    poison = clean.copy()
    poison[:, 0, 0, 0] = 108  # exactly 8/255 after uint8 rounding
    poison[1, 3, 3, 1] = 92
    check_budget(clean, poison, 8 / 255, "linf")
    check_budget(clean / 255.0, poison / 255.0, 8 / 255, "linf")  # float inputs too
    poison[3, 5, 5, 2] = 109
    with pytest.raises(UserInputError, match=r"1 of 4 images exceed the linf budget.*worst is image 3 .*norm 0.0352941"):
        check_budget(clean, poison, 8 / 255, "linf")


def test_check_budget_l2_exact_and_over():
    clean = np.full((3, 8, 8, 1), 50, np.uint8)
    poison = clean.copy()
    poison[0, :2, :2, 0] = 53  # four pixels of 3 levels: l2 = sqrt(4 * 9) / 255 = 6 / 255
    check_budget(clean, poison, 6 / 255, "l2")
    with pytest.raises(UserInputError, match="worst is image 0 with l2 norm 0.0235294"):
        check_budget(clean, poison, 5.99 / 255, "l2")
    np.testing.assert_allclose(perturbation_norms(clean, poison, "l2"), [6 / 255, 0, 0])


def test_check_budget_refuses_bad_arguments():
    x = np.zeros((2, 4, 4, 1), np.uint8)
    with pytest.raises(UserInputError, match="norm='l1' is invalid; accepted: linf, l2"):
        check_budget(x, x, 0.1, "l1")
    with pytest.raises(UserInputError, match="eps must be a finite number"):
        check_budget(x, x, -1.0, "linf")
    with pytest.raises(UserInputError, match=r"must lie in \[0, 1\]"):
        check_budget(x, np.full(x.shape, 1.5), 0.1, "linf")
    with pytest.raises(UserInputError, match="same shape"):
        check_budget(x, x[:1], 0.1, "linf")


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), norm=st.sampled_from(["linf", "l2"]), eps_levels=st.floats(0.0, 80.0))
def test_quantize_to_budget_passes_check_budget(seed, norm, eps_levels):
    """The attack's rounding and the writer's float64 check agree on the boundary of the budget."""
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 256, (4, 5, 5, 1), dtype=np.uint8)
    eps = eps_levels / 255
    direction = rng.normal(size=clean.shape)
    if norm == "linf":
        delta = eps * np.sign(direction)
    else:
        delta = eps * direction / np.linalg.norm(direction.reshape(4, -1), axis=1)[:, None, None, None]
    poison = np.clip(clean / 255.0 + delta, 0.0, 1.0)  # exactly at the budget before rounding
    q = np.asarray(quantize_to_budget(poison, clean / 255.0, eps, norm))
    assert q.dtype == np.uint8
    check_budget(clean, q, eps, norm)
    assert np.all(np.abs(q.astype(int) - np.round(poison * 255)) <= 1)
