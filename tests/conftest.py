"""Shared test configuration.

float64 is enabled for the whole suite because kernel parity with the
neural-tangents oracle is checked at 1e-6 relative error; float32 paths are
tested with explicit dtypes. Rank promotion raises, so silent broadcasting
bugs surface as errors.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# One persistent XLA compilation cache for the whole run: the pytest process, its xdist
# workers and the CLI subprocesses the tests start all inherit this variable (set before
# jax is imported), so the many identical small programs (one NTGA block attack, one
# training step) are compiled once instead of once per process. The cache is keyed by
# the program, the compile options and the jax version, so a hit is the same executable.
# It roughly halves the suite's wall time. A user's own JAX_COMPILATION_CACHE_DIR is kept.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="ntga-tests-xla-cache-")
    os.environ["NTGA_TESTS_OWN_XLA_CACHE"] = os.environ["JAX_COMPILATION_CACHE_DIR"]
# xdist runs one worker per core: one XLA thread each instead of every worker spreading
# its many small computations over all cores (oversubscription).
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

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


def pytest_sessionfinish(session):
    """The pytest process that made the compilation cache removes it (xdist workers leave it)."""
    own = os.environ.get("NTGA_TESTS_OWN_XLA_CACHE")
    if own and _OWN_CACHE and not hasattr(session.config, "workerinput"):
        shutil.rmtree(own, ignore_errors=True)
