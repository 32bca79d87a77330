"""Writes neural-tangents 0.6.5 reference kernels and input gradients for the parity tests.

This oracle script imports neural-tangents, so it runs only in the separate
oracle environment (jax 0.4.35 + neural-tangents 0.6.5, built by
../shared/tools/nt-oracle-env.sh), never in the test suite; the project code
and the tests never import neural-tangents:

    /work/nt-oracle/bin/python benchmarks/nt_reference.py            # -> tests/fixtures/nt_reference.npz

For a list of architectures (both surrogates and variations: erf/relu, depth
1-5, other W_std/b_std, conv strides 1/2, SAME/VALID, non-square filters,
readouts) and fixed random inputs (8x8 grey and RGB, 7x7x2, a 28x28x1
MNIST-like pair and a 32x32x3 CIFAR-sized pair), it stores float64:

    ntk, nngp                       k(x1, x2)                 [n1, n2]
    ntk_self, nngp_self             k(x1, None)               [n1, n1]
    grad_{g}_x1, grad_{g}_x2        d sum(k(x1, x2) * w) / dx1, dx2
    grad_{g}_self                   d sum(k(x1, None) * w_self) / dx1

The npz holds only numeric and string arrays (loadable with
allow_pickle=False): ``cases_json`` (a JSON list of cases: id, kernel name,
our ``ntga.kernels.make`` overrides, input set, stored quantities),
``meta_json`` (versions, seed), ``inputs__{set}__{x1,x2,w,w_self}`` and
``{case_id}__{quantity}``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from pathlib import Path

import numpy as np

SEED = 20240601
W_STD, B_STD = math.sqrt(1.76), math.sqrt(0.18)
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "nt_reference.npz"


def input_sets(rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    """Fixed random inputs in [0, 1]; n1 != n2 where cheap so transposes cannot hide."""

    def uniform(*shape):
        return rng.random(shape)

    def mnist_like(n):
        # Zero 4-pixel border and ~60% exact zeros inside, like handwritten digits:
        # exercises exactly-zero windows (perfectly correlated pairs) in the cnn.
        x = uniform(n, 28, 28, 1)
        x[x < 0.6] = 0.0
        x[:, :4], x[:, -4:], x[:, :, :4], x[:, :, -4:] = 0.0, 0.0, 0.0, 0.0
        return x

    shapes = {
        "grey8": ((3, 8, 8, 1), (4, 8, 8, 1)),
        "rgb8": ((2, 8, 8, 3), (3, 8, 8, 3)),
        "odd7": ((3, 7, 7, 2), (2, 7, 7, 2)),
    }
    sets = {}
    for name, (s1, s2) in shapes.items():
        sets[name] = {"x1": uniform(*s1), "x2": uniform(*s2)}
    sets["mnist28"] = {"x1": mnist_like(2), "x2": mnist_like(2)}
    sets["cifar32"] = {"x1": uniform(2, 32, 32, 3), "x2": uniform(2, 32, 32, 3)}
    for s in sets.values():
        n1, n2 = s["x1"].shape[0], s["x2"].shape[0]
        s["w"] = rng.standard_normal((n1, n2))
        s["w_self"] = rng.standard_normal((n1, n1))
    return sets


def cases() -> list[dict]:
    """(kernel, overrides in ntga.kernels.make terms, input set, with nngp gradients?)."""
    out = []

    def add(case_id, kernel, inputs, nngp_grads=True, **overrides):
        out.append({"id": case_id, "kernel": kernel, "overrides": overrides, "inputs": inputs,
                    "nngp_grads": nngp_grads})

    # The reference surrogates, on every input set they are used with.
    add("fnn_default_grey8", "fnn", "grey8")
    add("fnn_default_rgb8", "fnn", "rgb8")
    add("fnn_default_mnist28", "fnn", "mnist28", nngp_grads=False)
    add("cnn_default_grey8", "cnn", "grey8")
    add("cnn_default_rgb8", "cnn", "rgb8")
    add("cnn_default_odd7", "cnn", "odd7")
    add("cnn_default_mnist28", "cnn", "mnist28", nngp_grads=False)
    add("cnn_default_cifar32", "cnn", "cifar32", nngp_grads=False)
    # FNN: depth, activation, std, readout.
    for depth in (1, 2, 3, 4):
        add(f"fnn_erf_d{depth}", "fnn", "grey8", depth=depth)
    for depth in (1, 3, 5):
        add(f"fnn_relu_d{depth}", "fnn", "grey8", depth=depth, activation="relu")
    add("fnn_relu_d4_rgb8", "fnn", "rgb8", depth=4, activation="relu")
    add("fnn_erf_std", "fnn", "odd7", depth=3, W_std=1.3, b_std=0.05)
    add("fnn_relu_nobias", "fnn", "grey8", depth=2, activation="relu", W_std=2.0, b_std=0.0)
    add("fnn_erf_readout", "fnn", "grey8", depth=4, readout=True)
    # CNN: depth, stride, padding, filter, activation, std, dense head.
    add("cnn_d1", "cnn", "grey8", depth=1)
    add("cnn_d3", "cnn", "grey8", depth=3)
    add("cnn_s1_same", "cnn", "grey8", stride=1)
    add("cnn_s1_valid_f3", "cnn", "grey8", stride=1, padding="VALID", filter_size=3)
    add("cnn_s2_valid_f3_odd7", "cnn", "odd7", stride=2, padding="VALID", filter_size=3)
    add("cnn_s1_same_f3_d3_rgb8", "cnn", "rgb8", stride=1, filter_size=3, depth=3)
    add("cnn_f3x5_s1x2_odd7", "cnn", "odd7", filter_size=[3, 5], stride=[1, 2])
    add("cnn_erf_rgb8", "cnn", "rgb8", activation="erf")
    add("cnn_erf_d3_s1", "cnn", "grey8", activation="erf", depth=3, stride=1, filter_size=3)
    add("cnn_std", "cnn", "grey8", W_std=1.1, b_std=0.3)
    add("cnn_nobias", "cnn", "odd7", b_std=0.0, W_std=1.5)
    add("cnn_dense0", "cnn", "grey8", dense_layers=0)
    add("cnn_dense1_d4_s1", "cnn", "grey8", dense_layers=1, depth=4, stride=1, filter_size=3)
    add("cnn_relu_d5_s1_f3", "cnn", "grey8", depth=5, stride=1, filter_size=3)
    return out


def build_nt(case: dict):
    """The neural-tangents network for one case (mirrors ntga.kernels' architectures)."""
    from neural_tangents import stax

    o = dict(case["overrides"])
    act = {"erf": stax.Erf, "relu": stax.Relu}
    w, b = o.get("W_std", W_STD), o.get("b_std", B_STD)
    if case["kernel"] == "fnn":
        layers = []
        for _ in range(o.get("depth", 5)):
            layers += [stax.Dense(512, W_std=w, b_std=b), act[o.get("activation", "erf")]()]
        if o.get("readout", False):
            layers.append(stax.Dense(10, W_std=w, b_std=b))
    else:
        def pair(v):
            return tuple(v) if isinstance(v, (list, tuple)) else (v, v)

        layers = []
        for _ in range(o.get("depth", 2)):
            layers += [stax.Conv(64, pair(o.get("filter_size", 5)), strides=pair(o.get("stride", 2)),
                                 padding=o.get("padding", "SAME"), W_std=w, b_std=b),
                       act[o.get("activation", "relu")]()]
        layers.append(stax.Flatten())
        widths = (384, 192, 10, 10, 10)
        for i in range(o.get("dense_layers", 3)):
            layers.append(stax.Dense(widths[i], W_std=w, b_std=b))
    return stax.serial(*layers)[2]


def compute(kernel_fn, data: dict[str, np.ndarray], nngp_grads: bool, flatten: bool) -> dict[str, np.ndarray]:
    import jax
    import jax.numpy as jnp

    x1, x2, w, w_self = (jnp.asarray(data[k]) for k in ("x1", "x2", "w", "w_self"))
    if flatten:
        # neural-tangents' Dense acts on the last axis; the reference NTGA code
        # flattens images before its FNN, which is what our fnn kernel does
        # internally. Gradients w.r.t. the flat inputs reshape back to images.
        nt_fn = kernel_fn

        def kernel_fn(a, b, g):
            return nt_fn(a.reshape(a.shape[0], -1), None if b is None else b.reshape(b.shape[0], -1), g)

    out = {}
    for g in ("ntk", "nngp"):
        out[g] = kernel_fn(x1, x2, g)
        out[f"{g}_self"] = kernel_fn(x1, None, g)
        if g == "ntk" or nngp_grads:
            gx1, gx2 = jax.grad(lambda a, b: jnp.sum(kernel_fn(a, b, g) * w), argnums=(0, 1))(x1, x2)
            out[f"grad_{g}_x1"], out[f"grad_{g}_x2"] = gx1, gx2
            out[f"grad_{g}_self"] = jax.grad(lambda a: jnp.sum(kernel_fn(a, None, g) * w_self))(x1)
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="npz to write (default: %(default)s)")
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    try:
        import neural_tangents as nt
    except ImportError:
        sys.exit("neural-tangents is not importable: run this with the oracle env, e.g. "
                 "/work/nt-oracle/bin/python benchmarks/nt_reference.py")

    rng = np.random.default_rng(SEED)
    sets = input_sets(rng)
    arrays: dict[str, np.ndarray] = {}
    for name, data in sets.items():
        for k, v in data.items():
            arrays[f"inputs__{name}__{k}"] = v
    all_cases = cases()
    for case in all_cases:
        values = compute(build_nt(case), sets[case["inputs"]], case["nngp_grads"], case["kernel"] == "fnn")
        for k, v in values.items():
            if not np.all(np.isfinite(v)):
                raise RuntimeError(f"{case['id']}: neural-tangents returned non-finite {k}")
            arrays[f"{case['id']}__{k}"] = v
        case["quantities"] = sorted(values)
        print(f"{case['id']:28s} ntk[0,0]={values['ntk'][0, 0]:.6f}", flush=True)
    meta = {"neural_tangents": nt.__version__, "jax": jax.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "seed": SEED, "x64": True}
    arrays["cases_json"] = np.array(json.dumps(all_cases))
    arrays["meta_json"] = np.array(json.dumps(meta))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {len(all_cases)} cases to {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
