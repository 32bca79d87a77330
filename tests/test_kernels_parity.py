"""Parity of ntga.kernels with neural-tangents 0.6.5 (values and input gradients, float64).

The reference numbers were produced by benchmarks/nt_reference.py in the
separate oracle environment (jax 0.4.35 + neural-tangents 0.6.5); this test
never imports neural-tangents. Relative error of an array = max |ours - ref| /
max |ref|, required below 1e-6 for every stored quantity.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntga import kernels

FIXTURE = Path(__file__).parent / "fixtures" / "nt_reference.npz"
RTOL = 1e-6


@lru_cache(maxsize=1)
def _fixture():
    data = np.load(FIXTURE, allow_pickle=False)
    return {k: data[k] for k in data.files}


def _cases():
    return json.loads(str(_fixture()["cases_json"]))


def _overrides(case):
    return {k: tuple(v) if isinstance(v, list) else v for k, v in case["overrides"].items()}


def _ours(kernel_fn, x1, x2, w, w_self):
    """Every quantity the oracle can store, from one jitted function per case.

    One forward pass per input pair serves both kernels (get=("ntk", "nngp"))
    and all four input gradients (one VJP, pulled back twice): a smaller graph
    compiles much faster than six separate grads.
    """

    @jax.jit
    def everything(x1, x2, w, w_self):
        cross, pull_cross = jax.vjp(lambda a, b: kernel_fn(a, b, ("ntk", "nngp")), x1, x2)
        same, pull_same = jax.vjp(lambda a: kernel_fn(a, None, ("ntk", "nngp")), x1)
        out = {"ntk": cross[0], "nngp": cross[1], "ntk_self": same[0], "nngp_self": same[1]}
        zero, zero_self = jnp.zeros_like(w), jnp.zeros_like(w_self)
        for i, g in enumerate(("ntk", "nngp")):
            cot = (w, zero) if i == 0 else (zero, w)
            out[f"grad_{g}_x1"], out[f"grad_{g}_x2"] = pull_cross(cot)
            (out[f"grad_{g}_self"],) = pull_same((w_self, zero_self) if i == 0 else (zero_self, w_self))
        return out

    return everything(x1, x2, w, w_self)


def test_fixture_is_small_and_complete():
    assert FIXTURE.stat().st_size < 1024 * 1024
    meta = json.loads(str(_fixture()["meta_json"]))
    assert meta["neural_tangents"] == "0.6.5" and meta["x64"] is True
    cases = _cases()
    kinds = {(c["kernel"], c["overrides"].get("activation", "erf" if c["kernel"] == "fnn" else "relu"))
             for c in cases}
    assert kinds == {("fnn", "erf"), ("fnn", "relu"), ("cnn", "erf"), ("cnn", "relu")}
    assert {c["inputs"] for c in cases} >= {"grey8", "rgb8", "mnist28", "cifar32"}


def _params():
    # The reference surrogates always run; the architecture variations (each
    # compiles its own graph, a few seconds apiece) are also marked slow so a
    # quick run can deselect them with -m "not slow".
    return [pytest.param(c, id=c["id"], marks=() if "_default_" in c["id"] else pytest.mark.slow)
            for c in _cases()]


@pytest.mark.parametrize("case", _params())
@pytest.mark.slow
def test_matches_neural_tangents(case):
    fx = _fixture()
    kernel_fn = kernels.make(case["kernel"], **_overrides(case))
    prefix = f"inputs__{case['inputs']}__"
    x1, x2, w, w_self = (jnp.asarray(fx[prefix + k]) for k in ("x1", "x2", "w", "w_self"))
    ours = _ours(kernel_fn, x1, x2, w, w_self)
    errors = {}
    for q in case["quantities"]:
        ref = fx[f"{case['id']}__{q}"]
        got = np.asarray(ours[q])
        assert got.shape == ref.shape and got.dtype == np.float64, q
        errors[q] = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
    bad = {q: e for q, e in errors.items() if not e < RTOL}
    assert not bad, f"relative errors above {RTOL}: {bad}"
