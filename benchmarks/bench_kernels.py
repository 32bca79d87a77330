"""Speed of ntga.kernels against neural-tangents' own kernel_fn on the same inputs.

Two runs fill one results table (benchmarks/results/kernels.md):

    # ours, in the project env (jax 0.10):
    /work/venv/bin/python benchmarks/bench_kernels.py
    # neural-tangents 0.6.5, in the oracle env (jax 0.4.35), same inputs:
    /work/nt-oracle/bin/python benchmarks/bench_kernels.py --oracle
    # or both, alternating case by case (fairer on a shared, loaded machine):
    /work/venv/bin/python benchmarks/bench_kernels.py --interleave /work/nt-oracle/bin/python

Each run replaces its own column and keeps the other (the raw numbers live in
a JSON comment at the end of the Markdown file). Inputs are drawn with numpy
from a fixed seed, so both runs see identical arrays. Each case is jitted,
called once to compile (reported as "first call"), then timed ``--repeats``
times; the table shows the median. float32 cases run with jax_enable_x64 off
(neural-tangents computes in float64 whenever x64 is on).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "kernels.md"
W_STD, B_STD = math.sqrt(1.76), math.sqrt(0.18)

# id: (kernel, n1, n2, image shape, dtype, what, chunk_size or None, ours only)
CASES = {
    "cnn-cifar-ntk-f64": ("cnn", 64, 256, (32, 32, 3), "float64", "ntk", None, False),
    "cnn-cifar-ntk-f32": ("cnn", 64, 256, (32, 32, 3), "float32", "ntk", None, False),
    "cnn-cifar-vjp-f64": ("cnn", 64, 256, (32, 32, 3), "float64", "vjp", None, False),
    "fnn-mnist-ntk-f64": ("fnn", 512, 10_000, (28, 28, 1), "float64", "ntk", None, False),
    "fnn-mnist-ntk-f32": ("fnn", 512, 10_000, (28, 28, 1), "float32", "ntk", None, False),
    "cnn-cifar-chunked-f64": ("cnn", 512, 1024, (32, 32, 3), "float64", "ntk", 256, False),
    "cnn-cifar-chunked-vjp-f64": ("cnn", 512, 1024, (32, 32, 3), "float64", "vjp", 256, True),
}
DESCRIPTIONS = {
    "ntk": "NTK [n1, n2]",
    "vjp": "NTK + gradient of sum(K * w) w.r.t. x1",
}


def inputs(case: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same (x1, x2, w) for a case in both environments (numpy only, fixed seed)."""
    _, n1, n2, shape, dtype, _, _, _ = CASES[case]
    rng = np.random.default_rng([n1, n2, *shape])
    x1 = rng.random((n1,) + shape).astype(dtype)
    x2 = rng.random((n2,) + shape).astype(dtype)
    w = rng.standard_normal((n1, n2)).astype(dtype)
    return x1, x2, w


def ntga_kernel_fn(kernel: str, chunk: int | None):
    from ntga import kernels

    kf = kernels.make(kernel)
    return lambda a, b: kf(a, b, "ntk", chunk_size=chunk)


def nt_kernel_fn(kernel: str, chunk: int | None):
    """neural-tangents' kernel_fn for the same surrogate (only run in the oracle env)."""
    from neural_tangents import stax

    if kernel == "fnn":
        layers = []
        for _ in range(5):
            layers += [stax.Dense(512, W_std=W_STD, b_std=B_STD), stax.Erf()]
        kf = stax.serial(*layers)[2]
        # neural-tangents' Dense acts on the last axis: flatten like the reference NTGA code.
        return lambda a, b: kf(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1), "ntk")
    layers = []
    for _ in range(2):
        layers += [stax.Conv(64, (5, 5), strides=(2, 2), padding="SAME", W_std=W_STD, b_std=B_STD), stax.Relu()]
    layers += [stax.Flatten(), stax.Dense(384, W_STD, B_STD), stax.Dense(192, W_STD, B_STD),
               stax.Dense(10, W_STD, B_STD)]
    kf = stax.serial(*layers)[2]
    if chunk is not None:
        # neural-tangents' own answer to big kernels: blocks of x1 and x2.
        import neural_tangents as nt

        kf = nt.batch(kf, batch_size=chunk, store_on_device=True)
    return lambda a, b: kf(a, b, "ntk")


def time_case(case: str, build, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    kernel, n1, n2, shape, dtype, what, chunk, _ = CASES[case]
    jax.config.update("jax_enable_x64", dtype == "float64")
    kf = build(kernel, chunk)
    if what == "ntk":
        fn = jax.jit(kf)
    else:
        fn = jax.jit(lambda a, b, w: jax.grad(lambda a: jnp.sum(kf(a, b) * w))(a))
    x1, x2, w = (jnp.asarray(v) for v in inputs(case))
    args = (x1, x2) if what == "ntk" else (x1, x2, w)
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "first_call_s": first,
            "repeats": repeats, "out_dtype": str(out.dtype), "checksum": float(np.asarray(out, np.float64).sum())}


def machine(impl: str) -> dict:
    import jax

    info = {"impl": impl, "date": dt.datetime.now().isoformat(timespec="seconds"), "jax": jax.__version__,
            "cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
            "devices": ", ".join(sorted({d.device_kind for d in jax.devices()})),
            "loadavg_start": [round(v, 2) for v in os.getloadavg()]}
    if impl == "neural-tangents":
        import neural_tangents as nt

        info["neural_tangents"] = nt.__version__
    return info


DATA_RE = re.compile(r"<!-- bench-data (.*?) -->", re.S)


def render(data: dict) -> str:
    impls = ("ntga", "neural-tangents")
    lines = [
        "# Kernel benchmark: ntga.kernels vs neural-tangents 0.6.5",
        "",
        "Median (and minimum) wall time of a jitted call after one compile call (CPU); the ratio",
        "uses medians. Same inputs in both environments (numpy, fixed seed). **The machine may",
        "have been loaded** by other jobs sharing its cores while these numbers were taken (see",
        "the load averages below; load only ever slows a run down, so the minimum is the less",
        "noisy figure); rerun on a quiet machine for publishable timings:",
        "",
        "```",
        "# both, alternating case by case so that both see the same machine load:",
        "/work/venv/bin/python benchmarks/bench_kernels.py --interleave /work/nt-oracle/bin/python",
        "# or separately:",
        "/work/venv/bin/python benchmarks/bench_kernels.py              # ours (project env)",
        "/work/nt-oracle/bin/python benchmarks/bench_kernels.py --oracle # neural-tangents (oracle env)",
        "```",
        "",
        "| case | kernel | n1 x n2 | image | dtype | what | ntga median (min), s | neural-tangents median (min), s "
        "| NT / ntga | ntga first call (s) | NT first call (s) | outputs agree |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, (kernel, n1, n2, shape, dtype, what, chunk, _) in CASES.items():
        res = [data.get(i, {}).get("results", {}).get(case) for i in impls]
        med = [f"{r['median_s']:.3f} ({r['min_s']:.3f})" if r else "-" for r in res]
        first = [f"{r['first_call_s']:.2f}" if r else "-" for r in res]
        ratio = f"{res[1]['median_s'] / res[0]['median_s']:.2f}x" if all(res) else "-"
        # Sum of every output entry: a cheap cross-check that both computed the same thing.
        agree = "-"
        if all(res):
            rel = abs(res[0]["checksum"] - res[1]["checksum"]) / abs(res[1]["checksum"])
            agree = f"yes (sum rel. diff {rel:.0e})" if rel < (1e-4 if dtype == "float32" else 1e-9) else f"NO ({rel:.1e})"
        desc = DESCRIPTIONS[what] + (f", chunk_size={chunk}" if chunk else "")
        lines.append(f"| {case} | {kernel} | {n1} x {n2:,} | {'x'.join(map(str, shape))} | {dtype} | {desc} "
                     f"| {med[0]} | {med[1]} | {ratio} | {first[0]} | {first[1]} | {agree} |")
    lines += ["", "Machines (one entry per run):", ""]
    for impl in impls:
        if impl in data:
            m = data[impl]["machine"]
            extra = f", neural-tangents {m['neural_tangents']}" if "neural_tangents" in m else ""
            lines.append(f"- **{impl}**: {m['date']}, jax {m['jax']}{extra}, python {m['python']}, "
                         f"{m['cpu_count']} CPUs ({m['affinity']} usable), {m['processor']}, {m['platform']}, "
                         f"devices: {m['devices']}; load average at start {m['loadavg_start']}, "
                         f"at end {m.get('loadavg_end')}")
    lines += ["", "Chunked cases: ours maps over blocks of x2 (`chunk_size`, each block rematerialised in",
              "the backward pass); neural-tangents uses `nt.batch(kernel_fn, batch_size=256)` (blocks",
              "of x1 and x2). They show the block-wise path that the 512 x 10,000 attack uses.",
              "`-`: not run (the chunked gradient is not timed for neural-tangents: `nt.batch` is",
              "not meant for differentiation).",
              "", f"<!-- bench-data {json.dumps(data, sort_keys=True)} -->", ""]
    return "\n".join(lines)


def load(path: Path) -> dict:
    found = DATA_RE.search(path.read_text()) if path.exists() else None
    return json.loads(found.group(1)) if found else {}


def save(path: Path, impl: str, machine_info: dict, results: dict) -> None:
    """Merges one implementation's results into the file (re-read first: another run may have written)."""
    data = load(path)
    old = data.get(impl, {}).get("results", {})
    data[impl] = {"machine": machine_info, "results": {**old, **results}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(data))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oracle", action="store_true",
                        help="time neural-tangents instead of ntga.kernels (run with the oracle env's python)")
    parser.add_argument("--interleave", metavar="ORACLE_PYTHON",
                        help="after each case, time neural-tangents on it too by running this script with "
                             "--oracle under ORACLE_PYTHON, so both see the same machine load")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case (default: %(default)s)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of: " + ", ".join(CASES))
    parser.add_argument("--out", type=Path, default=RESULTS, help="Markdown results file (default: %(default)s)")
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; accepted: {', '.join(CASES)}")

    impl = "neural-tangents" if args.oracle else "ntga"
    if args.oracle:
        try:
            import neural_tangents  # noqa: F401
        except ImportError:
            sys.exit("--oracle needs neural-tangents: run with /work/nt-oracle/bin/python")
        build = nt_kernel_fn
    else:
        sys.path.insert(0, str(ROOT))
        build = ntga_kernel_fn

    info, results = machine(impl), {}
    for case in cases:
        ours_only = CASES[case][7]
        if args.oracle and ours_only:
            continue
        repeats = args.repeats if CASES[case][6] is None else max(1, min(args.repeats, 3))
        results[case] = res = time_case(case, build, repeats)
        print(f"{impl:16s} {case:26s} median {res['median_s']:.3f} s  first call {res['first_call_s']:.2f} s",
              flush=True)
        info["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
        save(args.out, impl, info, results)
        if args.interleave and not ours_only:
            subprocess.run([args.interleave, __file__, "--oracle", "--cases", case, "--repeats", str(args.repeats),
                            "--out", str(args.out)], check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
