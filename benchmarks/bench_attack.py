"""Time per PGD step of NTGA on one block, ours vs the reference's loop structure.

Usage (from the repo root)::

    python benchmarks/bench_attack.py                    # every configuration -> benchmarks/results/attack.md
    python benchmarks/bench_attack.py --only fnn-f64     # one configuration, printed as JSON
    python benchmarks/bench_attack.py --quick            # tiny shapes: a smoke run of this script

Each configuration runs in its own subprocess so that its peak resident memory
(``ru_maxrss``) is its own. Times are medians (and minima) over ``--repeats``
calls after one warm-up call (which includes compilation; reported separately),
as wall time and as process CPU time (less sensitive to other processes).

Configurations (block of 512 against 10,000 targets unless noted):

* ``fnn-f64`` / ``fnn-f32``: our step (``ntga.attack.make_pgd_step``): kernel and
  eigh of the block once, one exact gradient over all targets in chunks of 1,000.
* ``fnn-f64-refloop``: the reference's loop structure: for every chunk of 30
  targets, recompute K(block, block), its eigh and a full gradient (334 chunks per
  step). A few chunks are timed and the per-chunk median is multiplied by 334.
* ``cnn-f32-direct``: the real step on all 10,000 targets, no extrapolation (about
  30 s per call on this CPU; not in the default set, run it with ``--only``).
* ``cnn-f64`` / ``cnn-f32`` (CIFAR-10 shapes 32x32x3, chunks of 100 targets):
  on a CPU the full 10,000 targets take minutes per step, so real steps are timed
  on 2 and 6 chunks of targets and extended linearly to 100 chunks (a step is a
  fixed part plus a cost per chunk). Until 2026-12 this row added up the parts
  taken apart -- (a) K(block, block) + eigh + the pull-back, (b) one chunk's
  K(targets, block) and its VJP -- as a + 100 b, which overstated the step about
  2x: inside the jitted step XLA hoists the work that depends only on the block
  out of the chunk loop. (a) and (b) are still measured, for the estimate of the
  reference's loop, which really does recompute everything per chunk.

Data: MNIST (first 512 training images as the block, the next 10,000 as
targets) when ../shared/data/mnist exists, else uniform random pixels; CIFAR
shapes always use uniform random pixels (timing does not depend on content).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_model  # benchmarks/machine.py (scripts run from this folder's path)

REPO = Path(__file__).resolve().parents[1]
MNIST = Path(os.environ.get("NTGA_SHARED_DATA", REPO.parent / "shared" / "data")) / "mnist"
RESULTS = REPO / "benchmarks" / "results" / "attack.md"
REFERENCE_CHUNK = 30

CONFIGS = {
    # name: (kernel, dtype, image shape, structure)
    "fnn-f64": ("fnn", "float64", (28, 28, 1), "ours"),
    "fnn-f32": ("fnn", "float32", (28, 28, 1), "ours"),
    "fnn-f64-refloop": ("fnn", "float64", (28, 28, 1), "refloop"),
    "cnn-f64": ("cnn", "float64", (32, 32, 3), "ours-extrapolated"),
    "cnn-f32": ("cnn", "float32", (32, 32, 3), "ours-extrapolated"),
    # The real step on all 10,000 targets (minutes per configuration; run with --only).
    "cnn-f32-direct": ("cnn", "float32", (32, 32, 3), "ours"),
}


def _read_idx(path: Path, offset: int):
    import numpy as np

    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def load_data(shape, n_block: int, n_target: int, dtype, seed: int = 0):
    """(x_block, y_block, x_target, y_target, source) as numpy arrays in [0, 1]."""
    import numpy as np

    from ntga.attack import one_hot

    need = n_block + n_target
    if shape == (28, 28, 1) and (MNIST / "train-images-idx3-ubyte.gz").is_file() and need <= 60000:
        x = _read_idx(MNIST / "train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28, 1)[:need]
        y = _read_idx(MNIST / "train-labels-idx1-ubyte.gz", 8)[:need].astype(np.int64)
        source = "MNIST train images 0..%d" % (need - 1)
    else:
        rng = np.random.default_rng(seed)
        x = rng.integers(0, 256, size=(need,) + tuple(shape), dtype=np.uint8)
        y = rng.integers(0, 10, size=need)
        source = "uniform random uint8 pixels"
    xf = x.astype(dtype) / dtype(255)
    yh = one_hot(y, 10, dtype)
    return xf[:n_block], yh[:n_block], xf[n_block:], yh[n_block:], source


def _timed(fn, repeats: int):
    """(warm-up wall seconds, [wall seconds per call], [process CPU seconds per call]), results blocked on.

    CPU seconds (all threads of this process) are less sensitive than wall time to
    other processes competing for the cores, so both are recorded.
    """
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn())
    warm = time.perf_counter() - start
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return warm, walls, cpus


def run_one(name: str, block: int, targets: int, repeats: int, quick: bool) -> dict:
    """Runs one configuration in this process and returns its measurements."""
    kernel_name, dtype_name, shape, structure = CONFIGS[name]
    import jax

    if dtype_name == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    from ntga import kernels
    from ntga.attack import AttackConfig, make_pgd_step, target_loss

    dtype = np.float64 if dtype_name == "float64" else np.float32
    kernel_fn = kernels.make(kernel_name)
    if kernel_name == "cnn":
        repeats = min(repeats, 3)  # each cnn call takes tens of seconds on a CPU
    chunk = 1000 if kernel_name == "fnn" else 100
    if quick:
        chunk = min(chunk, 16)
    t = 64.0 if kernel_name == "fnn" else 8.0
    eps = 0.3 if shape == (28, 28, 1) else 8 / 255
    config = AttackConfig(eps=eps, t=t, target_chunk=chunk)
    out = {"name": name, "kernel": kernel_name, "dtype": dtype_name, "image_shape": list(shape),
           "block": block, "targets": targets, "structure": structure, "repeats": repeats}

    if structure == "ours":
        xb, yb, xt, yt, source = load_data(shape, block, targets, dtype)
        step = make_pgd_step(kernel_fn, config)
        args = (jnp.asarray(xb), jnp.asarray(xb), jnp.asarray(yb), jnp.asarray(xt), jnp.asarray(yt),
                jnp.ones((targets,), dtype))
        warm, walls, cpus = _timed(lambda: step(*args), repeats)
        out.update(source=source, target_chunk=chunk, warmup_s=warm, step_s=statistics.median(walls),
                   step_s_min=min(walls), step_s_all=walls, step_cpu_s=statistics.median(cpus), step_cpu_s_all=cpus)
    elif structure == "refloop":
        xb, yb, xt, yt, source = load_data(shape, block, targets, dtype)
        # One reference gradient call: K(block, block) + eigh + gradient for 30 targets.
        grad_chunk = jax.jit(jax.grad(lambda x, xt, yt: target_loss(kernel_fn, config, x, jnp.asarray(yb), xt, yt)))
        n_chunks = -(-targets // REFERENCE_CHUNK)
        x = jnp.asarray(xb)
        full = max(1, targets // REFERENCE_CHUNK)  # only full chunks: one shape, one compile
        starts = [(i % full) * REFERENCE_CHUNK for i in range(repeats + 1)]
        chunks = [(jnp.asarray(xt[s:s + REFERENCE_CHUNK]), jnp.asarray(yt[s:s + REFERENCE_CHUNK])) for s in starts]
        it = iter(chunks)
        warm, walls, cpus = _timed(lambda: grad_chunk(x, *next(it)), repeats)
        out.update(source=source, reference_chunk=REFERENCE_CHUNK, chunks_per_step=n_chunks,
                   chunks_timed=repeats, warmup_s=warm, chunk_s=statistics.median(walls), chunk_s_all=walls,
                   chunk_cpu_s_all=cpus, step_s=statistics.median(walls) * n_chunks,
                   step_s_min=min(walls) * n_chunks, step_cpu_s=statistics.median(cpus) * n_chunks,
                   extrapolated=True)
    else:  # ours-extrapolated: real steps on 2 and 6 chunks of targets, extended linearly to `targets`
        from ntga.gp import gp_mean_coefficients

        xb, yb, xt, yt, source = load_data(shape, block, 6 * chunk, dtype)
        x, ybj = jnp.asarray(xb), jnp.asarray(yb)
        xt, yt = jnp.asarray(xt), jnp.asarray(yt)
        # Our step: the real jitted PGD step, whose cost is (fixed) + (per chunk) x chunks. XLA hoists
        # work that depends only on the block out of the chunk loop, so the two terms are measured on
        # real steps rather than on the parts taken apart (which double-counts that work).
        step = make_pgd_step(kernel_fn, config)
        real = {}
        for k in (2, 6):
            args = (x, x, ybj, xt[:k * chunk], yt[:k * chunk], jnp.ones((k * chunk,), dtype))
            real[k] = _timed(lambda: step(*args), repeats)
        n_chunks = -(-targets // chunk)

        def extend(t2: float, t6: float) -> tuple[float, float, float]:
            per_chunk = (t6 - t2) / 4
            fixed = t2 - 2 * per_chunk
            return fixed, per_chunk, fixed + n_chunks * per_chunk

        fixed, per_chunk, step_s = extend(statistics.median(real[2][1]), statistics.median(real[6][1]))
        step_s_min = extend(min(real[2][1]), min(real[6][1]))[2]
        step_cpu_s = extend(statistics.median(real[2][2]), statistics.median(real[6][2]))[2]
        # The parts taken apart, for the estimate of the reference's loop (which really recomputes
        # everything per chunk): (a) K(block, block), eigh and the pull-back through them; (b) one
        # chunk's K(targets, block) and its VJP w.r.t. alpha and the block.
        alpha_fn = lambda x: gp_mean_coefficients(kernel_fn(x, x), ybj, config.t, config.diag_reg)  # noqa: E731
        block_part = jax.jit(lambda x, g: jax.vjp(alpha_fn, x)[1](g)[0])
        warm_a, walls_a, _ = _timed(lambda: block_part(x, ybj), repeats)

        def chunk_loss(a, x, xt, yt):
            return -jnp.sum(yt * jax.nn.log_softmax(kernel_fn(xt, x) @ a, axis=-1))

        chunk_part = jax.jit(jax.value_and_grad(chunk_loss, argnums=(0, 1)))
        alpha = jax.jit(alpha_fn)(x)
        warm_b, walls_b, _ = _timed(lambda: chunk_part(alpha, x, xt[:chunk], yt[:chunk]), repeats)
        out.update(source=source, target_chunk=chunk, chunks_per_step=n_chunks,
                   step_2_chunks_s=statistics.median(real[2][1]), step_6_chunks_s=statistics.median(real[6][1]),
                   fixed_s=fixed, per_chunk_s=per_chunk, step_s=step_s, step_s_min=step_s_min, step_cpu_s=step_cpu_s,
                   warmup_s=max(real[2][0], real[6][0]), block_part_s=statistics.median(walls_a),
                   block_part_s_all=walls_a, chunk_part_s=statistics.median(walls_b), chunk_part_s_all=walls_b,
                   extrapolated=True)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["device"] = str(jax.devices()[0])
    return out


def machine_info() -> dict:
    import jax

    cpu = cpu_model("unknown")
    return {
        "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "jax": jax.__version__, "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
        "loadavg_at_start": os.getloadavg(),
    }


def write_markdown(results: list[dict], info: dict, command: str, path: Path) -> None:
    def fmt(s):
        return f"{s:.2f}" if s >= 0.1 else f"{s:.4f}"

    lines = [
        "# NTGA attack: time per PGD step for one block",
        "",
        f"Command: `{command}` (from the repo root; each configuration in its own subprocess).",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['platform']}, Python {info['python']}, "
        f"jax {info['jax']} ({info['backend']}: {', '.join(info['devices'])}).",
        f"Load average at start: {', '.join(f'{v:.1f}' for v in info['loadavg_at_start'])}. The 2 cores are "
        "shared with other helpers working in parallel, so absolute times are noisy and pessimistic; "
        "the ratios between rows are the meaningful part.",
        "",
        "| configuration | data | structure | wall s per PGD step: median | min | CPU s per step (median) "
        "| warm-up incl. compile (s) | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | - | - | failed: {r['error']} | - | - | - | - |")
            continue
        shape = "x".join(str(v) for v in r["image_shape"])
        data = f"{r['kernel']} {r['dtype']}, block {r['block']}, {r['targets']} targets, {shape} ({r['source']})"
        if r["structure"] == "ours":
            how = f"ours: K_tt + eigh once, one exact VJP over targets in chunks of {r['target_chunk']}"
            step = fmt(r["step_s"])
        elif r["structure"] == "refloop":
            how = (f"reference loop: K_tt + eigh + gradient per chunk of {r['reference_chunk']} targets "
                   f"({r['chunks_per_step']} chunks per step)")
            step = (f"{fmt(r['step_s'])} (extrapolated: {r['chunks_timed']} chunks timed, median "
                    f"{r['chunk_s']:.3f} s x {r['chunks_per_step']})")
        else:
            how = (f"ours, chunks of {r['target_chunk']}; real steps on 2 and 6 chunks, extended linearly to "
                   f"{r['chunks_per_step']} chunks")
            step = (f"{fmt(r['step_s'])} (extrapolated: {fmt(r['step_2_chunks_s'])} s on 2 chunks, "
                    f"{fmt(r['step_6_chunks_s'])} s on 6: {fmt(r['fixed_s'])} s + {fmt(r['per_chunk_s'])} s per chunk)")
        lines.append(f"| {r['name']} | {data} | {how} | {step} | {fmt(r['step_s_min'])} | {fmt(r['step_cpu_s'])} | "
                     f"{fmt(r['warmup_s'])} | {r['peak_rss_mib']:.0f} |")
    by_name = {r["name"]: r for r in results if "error" not in r}
    lines.append("")
    if "fnn-f64" in by_name:
        r = by_name["fnn-f64"]
        lines.append(f"Target: fnn float64 <= 2 s per step. Measured here: median {r['step_s']:.2f} s, fastest "
                     f"{r['step_s_min']:.2f} s, {r['step_cpu_s']:.2f} CPU s (2 threads) per step.")
        lines.append("")
    if "fnn-f64" in by_name and "fnn-f64-refloop" in by_name:
        ratio = by_name["fnn-f64-refloop"]["step_s"] / by_name["fnn-f64"]["step_s"]
        lines.append(f"Speed-up of our step over the reference's loop structure (fnn, float64): {ratio:.0f}x "
                     f"({by_name['fnn-f64-refloop']['step_s']:.1f} s -> {by_name['fnn-f64']['step_s']:.2f} s).")
        lines.append("")
    for name in ("cnn-f64", "cnn-f32"):
        if name in by_name:
            r = by_name[name]
            ref_chunks = -(-r["targets"] // REFERENCE_CHUNK)
            est = ref_chunks * (r["block_part_s"] + r["chunk_part_s"] * REFERENCE_CHUNK / r["target_chunk"])
            lines.append(f"{name}: the reference's loop structure would repeat the block part for each of "
                         f"{ref_chunks} chunks of {REFERENCE_CHUNK}: about {ref_chunks} x ({r['block_part_s']:.1f} + "
                         f"{r['chunk_part_s'] * REFERENCE_CHUNK / r['target_chunk']:.2f}) s = {est:.0f} s per step "
                         f"(estimate from the two measured parts, not run), {est / r['step_s']:.0f}x our step.")
            lines.append("")
    lines += [
        "Notes:",
        "",
        "- Wall times are the median and minimum of the repeated calls after a warm-up call; the warm-up "
        "column includes jit compilation (once per shape and configuration). CPU seconds are summed over "
        "the process's threads (2 threads here), so on an idle machine wall is about CPU / 2.",
        "- The reference-loop row uses our kernel and GP code inside the reference's structure (it calls "
        "neural-tangents; the oracle environment is too old to share a process with this one), so the ratio "
        "isolates the loop structure: recomputing K(block, block) and its eigh for every 30 targets.",
        "- Peak RSS is `ru_maxrss` of the configuration's own process (host memory; CPU backend).",
        "",
        "Raw measurements (JSON):",
        "",
        "```json",
        json.dumps({"machine": info, "results": results}, indent=1),
        "```",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=sorted(CONFIGS), help="run one configuration here and print JSON")
    parser.add_argument("--configs", default=",".join(c for c in CONFIGS if not c.endswith("-direct")),
                        help="comma-separated configurations for the full run (default: all but cnn-f32-direct)")
    parser.add_argument("--block", type=int, default=512)
    parser.add_argument("--targets", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny shapes (block 16, 64 targets): smoke test")
    parser.add_argument("--out", type=Path, default=RESULTS, help="Markdown file for the full run")
    parser.add_argument("--rerender", action="store_true",
                        help="rewrite --out from the raw JSON already in it (no measurements)")
    args = parser.parse_args(argv)
    if args.rerender:
        text = args.out.read_text()
        raw = json.loads(text.split("```json", 1)[1].split("```", 1)[0])
        command = text.split("Command: `", 1)[1].split("`", 1)[0]
        write_markdown(raw["results"], raw["machine"], command, args.out)
        print(f"rewrote {args.out}")
        return 0
    if args.quick:
        args.block, args.targets, args.repeats = 16, 64, 2

    if args.only:
        print(json.dumps(run_one(args.only, args.block, args.targets, args.repeats, args.quick)))
        return 0

    results = []
    for name in [c for c in args.configs.split(",") if c]:
        if name not in CONFIGS:
            parser.error(f"unknown configuration {name!r}; accepted: {', '.join(CONFIGS)}")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--only", name, "--block", str(args.block),
               "--targets", str(args.targets), "--repeats", str(args.repeats)] + (["--quick"] if args.quick else [])
        print(f"running {name} ...", flush=True)
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
            results.append({"name": name, "error": tail[0][:200]})
            print(f"  failed: {tail[0]}", flush=True)
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(result)
        print(f"  {result['step_s']:.3f} s per step, peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True)
    command = "python benchmarks/bench_attack.py" + (" --quick" if args.quick else "")
    if args.repeats != 5 and not args.quick:
        command += f" --repeats {args.repeats}"
    if args.configs != ",".join(CONFIGS):
        command += f" --configs {args.configs}"
    write_markdown(results, machine_info(), command, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
