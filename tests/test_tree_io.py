"""Checkpoints of network state (ntga.methods.tree_io): exact round trip, and refusal of other settings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntga.errors import UserInputError
from ntga.methods.tree_io import load_tree, save_tree


def _tree(scale=1.0):
    return {"params": {"w": jnp.full((3, 2), scale, jnp.float32), "b": jnp.arange(2, dtype=jnp.float32)},
            "step": jnp.asarray(7, jnp.int32), "stats": [jnp.ones(4, jnp.float64) * scale]}


def test_round_trip_is_exact_with_extras(tmp_path):
    tree = _tree(0.25)
    save_tree(tmp_path / "c.npz", tree, rounds=3, acc=0.5, delta=np.arange(6, dtype=np.float32).reshape(2, 3))
    loaded, extras = load_tree(tmp_path / "c.npz", _tree(), extras=("rounds", "acc", "delta"))
    for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(a), b)
        assert np.asarray(a).dtype == b.dtype
    assert int(extras["rounds"]) == 3 and float(extras["acc"]) == 0.5 and extras["delta"].shape == (2, 3)


def test_stacked_leaves_need_the_leading_dimension(tmp_path):
    stacked = {"w": np.zeros((4, 3, 2), np.float32)}
    save_tree(tmp_path / "s.npz", stacked, steps=np.arange(4))
    loaded, _ = load_tree(tmp_path / "s.npz", {"w": np.zeros((3, 2), np.float32)}, leading=(4,))
    assert loaded["w"].shape == (4, 3, 2)
    with pytest.raises(UserInputError, match=r"network array 0 is float32\[4, 3, 2\], expected float32\[5, 3, 2\]"):
        load_tree(tmp_path / "s.npz", {"w": np.zeros((3, 2), np.float32)}, leading=(5,))


@pytest.mark.parametrize("template,message", [
    ({"w": np.zeros((3, 2), np.float32), "extra": np.zeros(1)}, "holds 1 network arrays, expected 2"),
    ({"w": np.zeros((3, 2), np.float64)}, "expected float64"),
    ({"w": np.zeros((2, 3), np.float32)}, r"expected float32\[2, 3\]"),
])
def test_other_settings_are_refused_with_the_fix(tmp_path, template, message):
    save_tree(tmp_path / "c.npz", {"w": np.zeros((3, 2), np.float32)})
    with pytest.raises(UserInputError, match=message) as err:
        load_tree(tmp_path / "c.npz", template)
    assert "--resume" in str(err.value)


def test_missing_extra_and_name_clash(tmp_path):
    save_tree(tmp_path / "c.npz", {"w": np.zeros(2)})
    with pytest.raises(UserInputError, match="lacks rounds"):
        load_tree(tmp_path / "c.npz", {"w": np.zeros(2)}, extras=("rounds",))
    with pytest.raises(ValueError, match="num_leaves"):
        save_tree(tmp_path / "d.npz", {"w": np.zeros(2)}, num_leaves=1)
