"""Training throughput of every victim, and what makes Flax convolutions faster on CPU.

Part 1 measures images/s of one full training step (gather + augmentation +
standardisation + forward + backward + optax update, i.e. the jitted step of
``ntga.train``) at batch 128, after compilation, as the median of repeated
steps, for every registered victim on its natural input shape (fnn, fnn-relu
and cnn on 28x28x1 and 32x32x3; the others on 32x32x3).

Part 2 tries cheap ways of speeding up convolution training on XLA:CPU and
records what helped: bfloat16 compute, ``jax.default_matmul_precision``,
state donation, im2col + matmul instead of XLA's convolution, XLA:CPU flags
(Eigen threading, XNNPACK, oneDNN, YNNPACK), and NHWC vs NCHW layout for a
single 3x3 convolution layer.

Every measurement runs in a fresh subprocess, so XLA flags and memory never
leak between measurements. Results go to stdout and to
benchmarks/results/victims.md.

    python benchmarks/bench_victims.py [--models a,b] [--repeats N] [--no-experiments] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_model  # benchmarks/machine.py (scripts run from this folder's path)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

BATCH = 128
NATURAL_SHAPES = {
    "fnn": [(28, 28, 1), (32, 32, 3)],
    "fnn-relu": [(28, 28, 1), (32, 32, 3)],
    "cnn": [(28, 28, 1), (32, 32, 3)],
    "resnet18": [(32, 32, 3)],
    "densenet121": [(32, 32, 3)],
    "wrn": [(32, 32, 3)],
    "small-cnn": [(32, 32, 3)],
}
# Steps timed per measurement: the big victims take seconds per step on 2 cores.
REPEATS = {"fnn": 10, "fnn-relu": 10, "cnn": 5, "small-cnn": 5, "resnet18": 3, "wrn": 3, "densenet121": 2}

XLA_FLAG_TRIALS = [
    ("Eigen single-threaded", "--xla_cpu_multi_thread_eigen=false"),
    ("XNNPACK", "--xla_cpu_use_xnnpack=true"),
    ("XNNPACK fusion of convolutions", "--xla_cpu_experimental_xnn_fusion_type=individual_convolution"),
    ("YNNPACK fusion of convolutions", "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"),
    ("oneDNN custom calls", "--xla_cpu_experimental_onednn_custom_call=true"),
]


# ----------------------------------------------------------------------------- worker side


def _im2col_conv():
    """A drop-in for ``flax.linen.Conv`` (stride 1, SAME) computing the convolution as one matmul.

    The image is padded, the kh*kw shifted views are concatenated on the
    channel axis ([B, H, W, kh*kw*C]) and multiplied by the HWIO kernel
    reshaped to [kh*kw*C, features]; the backward pass is then slices, pads
    and two matmuls, all of which XLA:CPU handles well.
    """
    import flax.linen as nn
    import jax.numpy as jnp

    class Im2ColConv(nn.Module):
        features: int
        kernel_size: tuple
        padding: str = "SAME"
        use_bias: bool = False
        dtype: object = jnp.float32

        @nn.compact
        def __call__(self, x):
            kh, kw = self.kernel_size
            b, h, w, c = x.shape
            kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, c, self.features))
            x = x.astype(self.dtype)
            xp = jnp.pad(x, ((0, 0), (kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2), (0, 0)))
            cols = jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)], axis=-1)
            y = cols.reshape(b * h * w, kh * kw * c) @ kernel.reshape(kh * kw * c, self.features).astype(self.dtype)
            return y.reshape(b, h, w, self.features)

    return Im2ColConv


@contextlib.contextmanager
def _pointwise_as_conv(active: bool):
    """While active, the victims' matmul 1x1 convolutions are traced as ``nn.Conv`` (what the matmul replaced)."""
    if not active:
        yield
        return
    import flax.linen as nn
    import jax.numpy as jnp

    from ntga.models import densenet, layers, resnet

    class PointwiseAsConv(nn.Module):
        features: int
        stride: int = 1
        dtype: object = jnp.float32

        @nn.compact
        def __call__(self, x):
            return layers.Conv(self.features, (1, 1), strides=(self.stride, self.stride), dtype=self.dtype)(x)

    saved = densenet.PointwiseConv, resnet.PointwiseConv
    densenet.PointwiseConv = resnet.PointwiseConv = PointwiseAsConv
    try:
        yield
    finally:
        densenet.PointwiseConv, resnet.PointwiseConv = saved


def prepare_train_step(task: dict):
    """Builds the task's training step; returns ``run() -> seconds`` (the first call compiles)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ntga.train import inputs as aug
    from ntga.models import get_model
    from ntga.train import TrainConfig, make_optimizer, make_train_step

    name, shape = task["model"], tuple(task["shape"])
    spec = get_model(name)
    cfg = TrainConfig(batch_size=BATCH).resolved(spec)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in task.get("kwargs", {}).items()}
    if task.get("dtype") == "bfloat16":
        kwargs["dtype"] = jnp.bfloat16
    if task.get("im2col"):
        kwargs["conv"] = _im2col_conv()
    module = spec.build(10, **kwargs)
    rng = np.random.default_rng(0)
    n = BATCH * 4
    x_all = jnp.asarray(rng.integers(0, 256, (n, *shape), dtype=np.uint8))
    y_all = jnp.asarray(rng.integers(0, 10, n).astype(np.int32))
    mean, std = (jnp.asarray(a) for a in aug.channel_stats(np.asarray(x_all)))
    tx = make_optimizer(cfg, 1000)
    key = jax.random.key(0)
    init = jax.jit(lambda k: module.init({"params": k, "dropout": k}, jnp.zeros((1, *shape), jnp.float32)),
                   compiler_options={"xla_backend_optimization_level": 0})
    step = jax.jit(make_train_step(module, spec, cfg, tx, 10, mean, std),
                   donate_argnums=0 if task.get("donate", True) else ())
    precision = task.get("matmul_precision")
    box = {"i": 0}
    with _pointwise_as_conv(task.get("pointwise_as_conv", False)):
        variables = init(key)
    box["state"] = dict(params=variables["params"], batch_stats=variables.get("batch_stats", {}),
                        opt_state=tx.init(variables["params"]), step=jnp.zeros((), jnp.int32))

    def run() -> float:
        idx = jnp.arange(BATCH) + (box["i"] % 4) * BATCH
        ctx = jax.default_matmul_precision(precision) if precision else contextlib.nullcontext()
        with ctx, _pointwise_as_conv(task.get("pointwise_as_conv", False)):
            t0 = time.perf_counter()
            box["state"], box["metrics"] = step(box["state"], x_all, y_all, idx, key)
            jax.block_until_ready((box["state"], box["metrics"]))
        box["i"] += 1
        return time.perf_counter() - t0

    return run


def prepare_conv_layer(task: dict):
    """Forward + both gradients of one 3x3, 64 -> 64 convolution on [128, 32, 32, 64]; ``run() -> seconds``."""
    import jax
    import jax.numpy as jnp

    layout, dtype = task["layout"], jnp.dtype(task.get("dtype", "float32"))
    b, h, c = BATCH, 32, 64
    key = jax.random.key(0)
    if layout == "NHWC":
        x, w, dn = jax.random.normal(key, (b, h, h, c), dtype), jax.random.normal(key, (3, 3, c, c), dtype), (
            "NHWC", "HWIO", "NHWC")
    else:
        x, w, dn = jax.random.normal(key, (b, c, h, h), dtype), jax.random.normal(key, (c, c, 3, 3), dtype), (
            "NCHW", "OIHW", "NCHW")

    def loss(w, x):
        y = jax.lax.conv_general_dilated(x, w * 0.05, (1, 1), "SAME", dimension_numbers=dn)
        return jnp.sum(jax.nn.relu(y).astype(jnp.float32))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))

    def run() -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(grad(w, x))
        return time.perf_counter() - t0

    return run


CONV_LAYER_FLOPS = 3 * 2 * BATCH * 32 * 32 * 64 * 64 * 9  # forward + two backward convolutions


def measure(tasks: list) -> list:
    """Times the tasks in this process, interleaved: round r runs one step of every task in turn.

    Interleaving makes the tasks share the same background load, so the
    per-round ratios to task 0 are much steadier than separate runs.
    """
    runs = [prepare_conv_layer(t) if t["kind"] == "conv-layer" else prepare_train_step(t) for t in tasks]
    compile_s = [run() for run in runs]  # first call: trace + compile + one step
    repeats = max(t["repeats"] for t in tasks)
    times = [[run() for run in runs] for _ in range(repeats)]
    results = []
    for i, task in enumerate(tasks):
        mine = [r[i] for r in times]
        med = statistics.median(mine)
        out = dict(task, compile_s=compile_s[i] - med, step_s=med, steps_s=mine)
        if task["kind"] == "conv-layer":
            out["gflops"] = CONV_LAYER_FLOPS / med / 1e9
        else:
            out["images_per_s"] = BATCH / med
        if i > 0:
            ratios = [r[0] / r[i] for r in times]
            out["speedup"] = statistics.median(ratios)
            out["speedup_range"] = [min(ratios), max(ratios)]
            out["ref_step_s"] = statistics.median(r[0] for r in times)
        results.append(out)
    return results


# ----------------------------------------------------------------------------- driver side


def run_group(tasks: list, flags: str = "") -> list:
    """Runs ``measure(tasks)`` in a fresh interpreter with XLA_FLAGS=flags."""
    env = dict(os.environ, XLA_FLAGS=flags)
    env.pop("JAX_ENABLE_X64", None)
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(tasks)], env=env, cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
        return [dict(t, flags=flags, error=reason) for t in tasks]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for r in results:
        r["flags"] = flags
    return results


def run_task(task: dict, flags: str = "") -> dict:
    return run_group([task], flags)[0]


def _show(r: dict) -> None:
    print(json.dumps({k: v for k, v in r.items() if k != "steps_s"}), flush=True)


def interleaved(base: dict, trials: list) -> list:
    """Base and trials in one process, timed round-robin; speed-up = median per-round ratio to the base."""
    tasks = [dict(base, label=f"baseline ({base['model']})")] + [dict(base, **change, label=label)
                                                               for label, change in trials]
    rows = run_group(tasks)
    for r in rows:
        _show(r)
    return rows


def paired_flags(base: dict, trials: list) -> list:
    """XLA flags are per process: runs base, trial 1, base, trial 2, base, ... in fresh processes.

    Each trial is rated against the mean of the baseline runs just before and
    just after it, because the background load on a shared machine drifts
    within minutes.
    """
    label = f"baseline ({base['model']}, separate processes)"
    before = dict(run_task(base), label=label)
    rows = [before]
    _show(before)
    for name, flags in trials:
        trial = dict(run_task(base, flags), label=name)
        after = dict(run_task(base), label=label)
        refs = [b["step_s"] for b in (before, after) if "error" not in b]
        if refs and "error" not in trial:
            trial["ref_step_s"] = sum(refs) / len(refs)
            trial["speedup"] = trial["ref_step_s"] / trial["step_s"]
            trial["speedup_range"] = [min(refs) / trial["step_s"], max(refs) / trial["step_s"]]
        rows += [trial, after]
        _show(trial)
        _show(after)
        before = after
    return rows


def run_experiments(repeats: int | None) -> list:
    """Part 2: what makes convolution training faster on XLA:CPU."""
    small = dict(kind="train-step", model="small-cnn", shape=(32, 32, 3), repeats=repeats or 6)
    rows = interleaved(small, [
        ("bfloat16 compute (float32 params)", dict(dtype="bfloat16")),
        ("jax.default_matmul_precision('bfloat16')", dict(matmul_precision="bfloat16")),
        ("im2col + matmul for the 3x3 convolutions", dict(im2col=True)),
        ("no state donation", dict(donate=False)),
    ])
    rows += paired_flags(dict(small, repeats=repeats or 4), XLA_FLAG_TRIALS)
    # DenseNet-121's first dense block (32x32, 6 bottleneck layers): half of its convolutions are 1x1.
    dense = dict(kind="train-step", model="densenet121", shape=(32, 32, 3), repeats=repeats or 2,
                 kwargs=dict(stages=[6]))
    rows += interleaved(dense, [("1x1 convolutions as XLA convolutions instead of matmuls",
                                 dict(pointwise_as_conv=True))])
    resnet = dict(kind="train-step", model="resnet18", shape=(32, 32, 3), repeats=repeats or 2)
    rows += interleaved(resnet, [("bfloat16 compute (float32 params)", dict(dtype="bfloat16"))])
    layer = dict(kind="conv-layer", model="one 3x3 conv layer", layout="NHWC", dtype="float32",
                 repeats=repeats or 5)
    rows += interleaved(layer, [("NCHW layout", dict(layout="NCHW")), ("bfloat16", dict(dtype="bfloat16"))])
    return rows


def _fmt(r: dict, key: str, fmt: str) -> str:
    return "error: " + r["error"][:60] if "error" in r else format(r[key], fmt)


def _shape(s) -> str:
    return "x".join(map(str, s))


def machine_info() -> str:
    import jax
    import flax
    import optax

    cpu = cpu_model("unknown CPU")
    return (f"{cpu}, {os.cpu_count()} CPUs, {platform.platform()}; Python {platform.python_version()}, "
            f"jax {jax.__version__} ({jax.default_backend()}), flax {flax.__version__}, optax {optax.__version__}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(NATURAL_SHAPES), help="comma-separated victims")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per measurement (default per model)")
    parser.add_argument("--no-experiments", action="store_true", help="skip part 2 (CPU speed-up trials)")
    parser.add_argument("--no-victims", action="store_true", help="skip part 1 (victim throughput)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "victims.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return 0

    unknown = set(args.models.split(",")) - set(NATURAL_SHAPES)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; accepted: {', '.join(NATURAL_SHAPES)}")
    started, load_before = time.perf_counter(), os.getloadavg()
    reps = lambda m: args.repeats or REPEATS[m]  # noqa: E731
    victims = []
    for model in [] if args.no_victims else args.models.split(","):
        for shape in NATURAL_SHAPES[model]:
            r = run_task(dict(kind="train-step", model=model, shape=shape, repeats=reps(model)))
            victims.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "steps_s"}), flush=True)

    trials = []
    if not args.no_experiments:
        trials = run_experiments(args.repeats)

    write_report(args.out, victims, trials, load_before, os.getloadavg(), time.perf_counter() - started, argv)
    print(f"wrote {args.out}")
    return 0


def write_report(out: Path, victims, trials, load_before, load_after, seconds, argv) -> None:
    lines = ["# Victim training throughput (CPU)", "",
             f"Command: `python benchmarks/bench_victims.py{' ' + ' '.join(argv) if argv else ''}`  ",
             f"Date: {datetime.datetime.now().isoformat(timespec='seconds')}; total benchmark time {seconds / 60:.1f} min",
             "",
             f"One jitted training step of `ntga.train` (gather, default augmentation, standardisation, "
             f"forward, backward, optax update) at batch {BATCH} on random uint8 images, 10 classes, each "
             f"victim's default recipe; median over the timed steps after the compiling one, each "
             f"measurement in a fresh process.", "",
             "| victim | input | compile (s) | step (s) | images/s | 50k-image epoch (min) | timed steps |",
             "|---|---|---|---|---|---|---|"]
    for r in victims:
        epoch = _fmt(r, "images_per_s", "") if "error" in r else f"{50_000 / r['images_per_s'] / 60:,.1f}"
        lines.append(f"| {r['model']} | {_shape(r['shape'])} | {_fmt(r, 'compile_s', '.1f')} | "
                     f"{_fmt(r, 'step_s', '.3f')} | {_fmt(r, 'images_per_s', ',.0f')} | {epoch} | {r['repeats']} |")
    if trials:
        lines += ["", "## Making convolution training faster on XLA:CPU", "",
                  "Workloads: `small-cnn` training step (32x32x3, batch 128); DenseNet-121's first dense "
                  "block (`stages=(6,)`); a ResNet-18 training step; one 3x3 64->64 convolution layer "
                  "(forward + both gradients on [128, 32, 32, 64]). Trials without XLA flags run in one process "
                  "with their baseline, one step of each in turn per round, and the speed-up is the median "
                  "per-round ratio (baseline time / trial time; >1 = faster). XLA flags need their own "
                  "process: each flagged run sits between two baseline runs and is rated against their mean.",
                  "", "| workload | trial | XLA_FLAGS | step (s) | throughput | speed-up | range |",
                  "|---|---|---|---|---|---|---|"]
        for t in trials:
            if "error" in t:
                lines.append(f"| {t.get('model', '')} | {t['label']} | `{t['flags'] or '-'}` | "
                             f"{_fmt(t, '', '')} | | |")
                continue
            thr = f"{t['gflops']:.1f} GFLOP/s" if t["kind"] == "conv-layer" else f"{t['images_per_s']:,.0f} img/s"
            speed = f"**{t['speedup']:.2f}x**" if "speedup" in t else "(baseline)"
            spread = "{:.2f}-{:.2f}".format(*t["speedup_range"]) if "speedup_range" in t else ""
            lines.append(f"| {t.get('model', '')} | {t['label']} | `{t['flags'] or '-'}` | {t['step_s']:.3f} | "
                         f"{thr} | {speed} | {spread} |")
        rated = [t for t in trials if "speedup" in t]
        verdict = lambda lo, hi: ", ".join(f"{t['label']} ({t['model']}, {t['speedup']:.2f}x)"  # noqa: E731
                                           for t in rated if lo <= t["speedup"] < hi) or "none"
        lines += ["", f"- Helped (>= 1.15x): {verdict(1.15, float('inf'))}.",
                  f"- No clear effect (within 15%, i.e. inside this machine's noise): {verdict(0.87, 1.15)}.",
                  f"- Hurt (< 0.87x): {verdict(0.0, 0.87)}.", "",
                  "What the victims use as a result: 1x1 convolutions (DenseNet bottlenecks and transitions, "
                  "ResNet/WRN projection shortcuts) are `ntga.models.layers.PointwiseConv`, a matmul over "
                  "channels, because XLA:CPU's convolution emitter is much slower than its matmul for 1x1 "
                  "kernels; everything else stays float32 NHWC `nn.Conv` with default XLA flags and donated "
                  "train state. bfloat16 compute remains available per run (`model_kwargs={'dtype': "
                  "jnp.bfloat16}`) for machines where it pays off (e.g. GPUs)."]
    lines += ["", f"Machine: {machine_info()}.  ",
              f"Load average before/after (1, 5, 15 min): {', '.join(f'{v:.2f}' for v in load_before)} / "
              f"{', '.join(f'{v:.2f}' for v in load_after)}.", "",
              "Note: the 2 cores were shared with other jobs running at the same time (see the load "
              "averages), so absolute numbers are inflated and noisy (±30% between runs here); rerun on a "
              "quiet machine for reference numbers. Ratios measured back to back are more reliable than "
              "absolute images/s.", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
