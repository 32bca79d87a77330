"""Shared test configuration.

float64 is enabled for the whole suite because kernel parity with the
neural-tangents oracle is checked at 1e-6 relative error; float32 paths are
tested with explicit dtypes. Rank promotion raises, so silent broadcasting
bugs surface as errors.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NTGA_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def key():
    """A fixed PRNG key; tests split it rather than reuse it."""
    return jax.random.key(0)


@pytest.fixture
def shared_data():
    """Path to ../shared/data, or a skip when it is absent (e.g. outside this workplace)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared datasets at {SHARED_DATA} (absent here)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session gets its own dataset cache so tests never read a user's cache."""
    monkeypatch.setenv("NTGA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "ntga-cache"))
