"""Writes tests/fixtures/nt_gp_reference.npz: NTK-GP means from neural-tangents 0.6.5 (the oracle).

Run in the pinned oracle environment (jax 0.4.35 + neural-tangents 0.6.5, see
tools/nt-oracle-env.sh), never from project code or tests:

    /work/nt-oracle/bin/python benchmarks/nt_gp_reference.py

For each case it stores the kernels the prediction was made from (``ktt`` [n, n],
``kvt`` [m, n]), ``y`` [n, k], ``t``, ``diag_reg`` and neural-tangents'
``gradient_descent_mse_ensemble(...)(t, x_test, "ntk")`` mean (``mean`` [m, k]),
all float64. tests/test_gp.py checks ``ntga.gp.gp_mean`` against them. Cases:
random SPD kernels over a range of t and diag_reg, a rank-deficient kernel with
duplicated rows (repeated eigenvalues), and the reference FNN surrogate's NTK
(5 x [Dense 512 -> Erf], W_std^2 = 1.76, b_std^2 = 0.18, no readout) on tiny
random images.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import numpy as np
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import neural_tangents as nt  # noqa: E402
from neural_tangents import stax  # noqa: E402

Kernels = collections.namedtuple("Kernels", ["ntk"])
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "nt_gp_reference.npz"


def lookup_kernel_fn(gram: np.ndarray):
    """A kernel_fn over index 'inputs' [n, 1] that reads a fixed Gram matrix."""
    gram = jnp.asarray(gram)

    def kernel_fn(x1, x2=None, get="ntk", **kw):
        i1 = jnp.asarray(x1[:, 0], jnp.int32)
        i2 = i1 if x2 is None else jnp.asarray(x2[:, 0], jnp.int32)
        k = gram[i1][:, i2]
        # neural-tangents asks for a string get (-> array) or a tuple (-> namedtuple).
        if isinstance(get, str):
            return k
        return Kernels(**{g: k for g in get})

    return kernel_fn


def nt_mean(kernel_fn, x_train, y, x_test, t, diag_reg):
    predict = nt.predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y, diag_reg=diag_reg)
    return np.asarray(predict(t=t, x_test=x_test, get="ntk", compute_cov=False))


def main() -> int:
    rng = np.random.default_rng(20210701)
    cases = []

    # Random SPD kernels: train (n) and test (m) rows of one PSD Gram matrix.
    for n, m, k, t, reg in [(10, 5, 3, 0.5, 1e-4), (10, 5, 3, 64.0, 1e-4), (12, 4, 4, 4096.0, 1e-4),
                            (8, 6, 2, 1e4, 0.1), (16, 5, 10, 64.0, 0.0)]:
        a = rng.normal(size=(n + m, n + m + 3))
        gram = a @ a.T / a.shape[1]
        y = np.eye(k)[rng.integers(0, k, n)]
        idx = np.arange(n + m, dtype=np.float64)[:, None]
        mean = nt_mean(lookup_kernel_fn(gram), idx[:n], y, idx[n:], t, reg)
        cases.append(dict(ktt=gram[:n, :n], kvt=gram[n:, :n], y=y, t=t, diag_reg=reg, mean=mean))

    # Rank-deficient with duplicated rows: exactly repeated eigenvalues of K~.
    n, m, k = 12, 4, 3
    base = rng.normal(size=(6, 4))
    feats = np.concatenate([base, base, rng.normal(size=(m, 4))])
    gram = feats @ feats.T / 4
    y = np.eye(k)[rng.integers(0, k, n)]
    idx = np.arange(n + m, dtype=np.float64)[:, None]
    mean = nt_mean(lookup_kernel_fn(gram), idx[:n], y, idx[n:], 64.0, 1e-4)
    cases.append(dict(ktt=gram[:n, :n], kvt=gram[n:, :n], y=y, t=64.0, diag_reg=1e-4, mean=mean))

    # The reference FNN surrogate on tiny random "images" (6x6x1 flattened).
    layers = []
    for _ in range(5):
        layers += [stax.Dense(512, W_std=np.sqrt(1.76), b_std=np.sqrt(0.18)), stax.Erf()]
    _, _, fnn_kernel = stax.serial(*layers)
    x_train = rng.uniform(size=(8, 36))
    x_test = rng.uniform(size=(5, 36))
    y = np.eye(3)[rng.integers(0, 3, 8)]
    ktt = np.asarray(fnn_kernel(x_train, None, "ntk"))
    kvt = np.asarray(fnn_kernel(x_test, x_train, "ntk"))
    for t in (64.0, 4096.0):
        mean = nt_mean(fnn_kernel, x_train, y, x_test, t, 1e-4)
        cases.append(dict(ktt=ktt, kvt=kvt, y=y, t=t, diag_reg=1e-4, mean=mean))

    arrays = {}
    for i, case in enumerate(cases):
        for name, value in case.items():
            arrays[f"case{i}_{name}"] = np.asarray(value, dtype=np.float64)
    arrays["num_cases"] = np.asarray(len(cases))
    arrays["nt_version"] = np.asarray(nt.__version__)
    arrays["jax_version"] = np.asarray(jax.__version__)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({len(cases)} cases, neural-tangents {nt.__version__}, jax {jax.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
